"""Fixtures for zoo tests: a store of tiny fake assets (no network) and small split sizes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from zoo_fakes import write_all

from modmerge.zoo.assets import AssetStore
from modmerge.zoo.datasets import SplitSizes


@pytest.fixture(scope="session")
def fake_store(tmp_path_factory) -> AssetStore:
    """An AssetStore whose every dataset asset is a tiny fake in the real format."""
    root = tmp_path_factory.mktemp("fake_assets")
    write_all(root)
    return AssetStore(root)


@pytest.fixture
def small_text_sizes() -> SplitSizes:
    return SplitSizes(train=24, validation=9, test=24, min_test=12)


@pytest.fixture
def small_image_sizes() -> SplitSizes:
    return SplitSizes(train=50, validation=10, test=100, min_test=20)
