"""The layering rule: the core never imports the benchmark zoo (only the CLI and the zoo do)."""

from __future__ import annotations

import subprocess
import sys

CORE = ("checkpoints", "components", "merging", "quantization", "experts", "tasks", "objectives", "search",
        "library", "reuse", "serve", "reports", "recipes")


def test_core_packages_do_not_import_the_zoo():
    modules = []
    for package in CORE:
        modules.append(f"modmerge.{package}")
    code = (
        "import importlib, pkgutil, sys\n"
        f"for name in {modules!r}:\n"
        "    pkg = importlib.import_module(name)\n"
        "    for info in pkgutil.walk_packages(pkg.__path__, name + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "bad = sorted(m for m in sys.modules if m == 'modmerge.zoo' or m.startswith('modmerge.zoo.'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"core modules loaded {result.stdout.strip()}"
