"""Reading a saved HF model directory back: its config and tensor names in file order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open


def read_saved(directory: Path) -> tuple[dict[str, Any], list[str]]:
    """(config.json as a dict, tensor names in file order) of a saved HF model directory."""
    config = json.loads((directory / "config.json").read_text())
    keys: list[str] = []
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            keys.extend(handle.keys())
    return config, keys
