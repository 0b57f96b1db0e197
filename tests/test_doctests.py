"""Every docstring example in the package runs as part of the suite (``+SKIP`` marks the ones
that need files or models a docstring cannot build)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import modmerge

MODULES = sorted(m.name for m in pkgutil.walk_packages(modmerge.__path__, "modmerge.") if not m.name.endswith("__main__"))


def test_the_package_has_doctests_to_run():
    finder = doctest.DocTestFinder()
    examples = sum(len(t.examples) for name in MODULES for t in finder.find(importlib.import_module(name)))
    assert len(MODULES) > 100 and examples > 300


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed in {name}"
