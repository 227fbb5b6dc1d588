"""A tiny item-text corpus written by tests (no shared data needed): used by the text and text-decoding tests.

A plain module, not a conftest: tests import it by name (`from item_corpus import write_item_json`); tests/
is on the import path for every test, and a name no other folder uses cannot resolve to another file."""

from __future__ import annotations

import json
from pathlib import Path


def write_item_json(folder: Path, texts: dict | None = None) -> Path:
    """`<folder>/Tiny.item.json` in the LC-Rec item format: `texts` ({id: {field: value}}), else 40 made-up office
    items from a few words (every 4th with an empty description), so BPE finds merges in a few hundred words."""
    if texts is None:
        colours, things, brands = ("black", "blue", "red", "green"), ("pen", "stapler", "folder", "marker", "tape"), \
            ("Acme", "Paperline", "OfficeCo")
        texts = {str(i): {"title": f"{colours[i % 4]} {things[i % 5]} {i % 3 + 1}-pack",
                          "brand": brands[i % 3], "categories": f"Office Products, {things[i % 5].title()}s",
                          "description": "" if i % 4 == 0 else
                          f"A {colours[(i + 1) % 4]} {things[i % 5]} for the office &amp; home. Refill {i}."}
                 for i in range(40)}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "Tiny.item.json"
    path.write_text(json.dumps(texts))
    return path
