"""Shared fixtures: tiny models of every built-in architecture, built once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_finetuned, make_tiny_model

# Tests use tiny models, which gain nothing from a second thread, and two-thread torch runs many
# times slower whenever another process shares the cores.
torch.set_num_threads(1)

ARCHS = ("bert", "roberta", "gpt2", "vit", "clip_vision", "t5", "llama", "mistral", "qwen2")


@pytest.fixture(scope="session")
def tiny_zoo_factory(tmp_path_factory):
    """``factory(arch, n_tasks)`` -> (base_dir, [finetuned_dirs]), cached per (arch, n_tasks)."""
    cache: dict[tuple[str, int], tuple[Path, list[Path]]] = {}

    def factory(arch: str = "bert", n_tasks: int = 3) -> tuple[Path, list[Path]]:
        key = (arch, n_tasks)
        if key not in cache:
            root = tmp_path_factory.mktemp(f"{arch}_{n_tasks}")
            base = make_tiny_model(arch, root / "base")
            tasks = [make_finetuned(base, root / f"task{i}", seed=100 + i) for i in range(n_tasks)]
            cache[key] = (base, tasks)
        return cache[key]

    return factory


@pytest.fixture
def bert_zoo(tiny_zoo_factory):
    """A tiny BERT base and three perturbed copies."""
    return tiny_zoo_factory("bert", 3)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """The synthetic ``tiny`` zoo (4 text tasks on a 2-layer BERT), built once per session (~6 s)."""
    from modmerge.zoo.store import ZooStore
    from modmerge.zoo.tiny import build_tiny

    return build_tiny(ZooStore(tmp_path_factory.mktemp("zoo_store")), seed=0)


@pytest.fixture(scope="session")
def own_suite(tmp_path_factory):
    """A user's own suite: bare pretrained BERT, BertForSequenceClassification task models, JSONL."""
    import importlib.util

    path = Path(__file__).parents[1] / "examples" / "own-models" / "build_models.py"
    spec = importlib.util.spec_from_file_location("own_models_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_own_models(tmp_path_factory.mktemp("own"))
