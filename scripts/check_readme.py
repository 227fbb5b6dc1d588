#!/usr/bin/env python3
"""Run every command of the README's bash blocks, in order, from the repository root; fail if any fails.

The commands run as written, with two documented exceptions that keep the check within minutes:
- training commands (`recspec train`, `recspec distill train`, `recspec distill experiment`) get
  `--max-steps 20` appended (a step cap; the last value of a flag wins);
- GPU-only scripts (`bench/gpu_*.py`) get `--cpu-smoke` appended: the same script on the CPU with tiny models.
`bash scripts/test.sh` is skipped: it is the test suite that runs this check.

    python3 scripts/check_readme.py [README.md]
Prints one line per command and a closing 'readme: N passed, M failed'.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP_CAP = "--max-steps 20"
TRAINING = re.compile(r"\brecspec (train|distill train|distill experiment)\b")
GPU_SCRIPT = re.compile(r"\bbench/gpu_\w+\.py\b")
SKIP = re.compile(r"^bash scripts/test\.sh\b")


def commands(readme: str) -> list[str]:
    """Every command of the ```bash blocks: continuation lines joined, comment-only lines dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        for cmd in re.sub(r"\s*\\\n\s*", " ", block).splitlines():
            cmd = cmd.strip()
            if cmd and not cmd.startswith("#"):
                out.append(cmd)
    return out


def as_checked(cmd: str) -> str | None:
    """The command the check runs for a README command (None: skipped)."""
    if SKIP.search(cmd):
        return None
    code, hash_, comment = cmd.partition(" #")  # a trailing comment stays out of the way of appended flags
    code = code.rstrip()
    if TRAINING.search(code):
        code += " " + STEP_CAP
    if GPU_SCRIPT.search(code):
        code += " --cpu-smoke"
    return code


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "README.md"
    passed = failed = 0
    for cmd in commands(path.read_text()):
        run = as_checked(cmd)
        if run is None:
            print(f"skip  {cmd}", flush=True)
            continue
        t0 = time.perf_counter()
        res = subprocess.run(["bash", "-c", "set -euo pipefail; " + run], cwd=ROOT, capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=900)
        ok = res.returncode == 0
        passed, failed = passed + ok, failed + (not ok)
        print(f"{'ok' if ok else 'FAIL':5s} {time.perf_counter() - t0:6.1f} s  {run}", flush=True)
        if not ok:
            print(res.stdout[-2000:] + res.stderr[-3000:], flush=True)
    print(f"readme: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
