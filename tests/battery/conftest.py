"""Fixtures the battery's cases share: a tiny search run and the library built from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from modmerge.library import build_library
from modmerge.search.driver import run_search_recipe
from modmerge.search.recipe import SearchRecipe
from modmerge.zoo.store import ZooStore


@pytest.fixture(scope="session")
def sound_run(tiny_zoo, tmp_path_factory) -> Path:
    """RUN_DIR of a tiny search on the ``tiny`` zoo (budget 4, population 2). Cases copy what they damage."""
    recipe = SearchRecipe(zoo="tiny", budget=4, population=2, validation_limit=16, test_limit=8, surrogate=False,
                          init="random")
    out = tmp_path_factory.mktemp("battery_run") / "run"
    run_search_recipe(recipe, out, source=ZooStore(tiny_zoo.root.parent.parent).load("tiny"))
    return out


@pytest.fixture(scope="session")
def sound_library(sound_run, tiny_zoo, tmp_path_factory) -> Path:
    """LIB_DIR of a small library (no router) built from :func:`sound_run`. Cases damage copies."""
    lib = tmp_path_factory.mktemp("battery_lib") / "lib"
    return build_library(sound_run, lib, source=ZooStore(tiny_zoo.root.parent.parent).load("tiny")).root
