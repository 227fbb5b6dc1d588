"""The README runs as written: every command of its bash blocks (scripts/check_readme.py; training commands with a
step cap, GPU-only scripts through their CPU smoke mode). Slow (minutes), so the default run leaves it out
(pyproject's `-m 'not readme'`); CI runs it after the suite: `python3 -m pytest tests/test_readme.py -m readme`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from check_readme import as_checked, commands  # noqa: E402


def test_the_check_parses_blocks_joins_lines_and_caps_training():
    text = "x\n```bash\n# a comment\nrecspec train d --out r \\\n    --epochs 3   # note\nbash scripts/test.sh\n```\n" \
           "```python\nignored()\n```\n```bash\npython3 bench/gpu_bench.py --data d\n```\n"
    cmds = commands(text)
    assert cmds == ["recspec train d --out r --epochs 3   # note", "bash scripts/test.sh", "python3 bench/gpu_bench.py --data d"]
    assert [as_checked(c) for c in cmds] == ["recspec train d --out r --epochs 3 --max-steps 20", None,
                                             "python3 bench/gpu_bench.py --data d --cpu-smoke"]


@pytest.mark.readme
def test_every_readme_command_runs():
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_readme.py")], cwd=ROOT, capture_output=True,
                         text=True, timeout=3600)
    assert res.returncode == 0 and res.stdout.strip().endswith(" 0 failed"), res.stdout[-6000:] + res.stderr[-2000:]
