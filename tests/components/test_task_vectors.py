"""Task vectors per tensor and per merge unit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from saved_models import read_saved

from modmerge.components import decompose, task_vector, unit_task_vectors
from modmerge.errors import CompatibilityError


class _CountingSource:
    """A ``.get(key)`` source over a dict that counts reads."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.reads: list[str] = []

    def get(self, key: str) -> torch.Tensor:
        self.reads.append(key)
        return self.tensors[key]


def _load(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def test_task_vector_is_float32_delta():
    base = {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16), "b": torch.zeros(3)}
    tuned = {"w": torch.tensor([1.5, 1.0], dtype=torch.bfloat16), "b": torch.ones(3)}
    tv = task_vector(base, tuned)
    assert list(tv) == ["w", "b"]
    assert tv["w"].dtype == torch.float32
    assert torch.equal(tv["w"], torch.tensor([0.5, -1.0]))
    assert torch.equal(tv["b"], torch.ones(3))
    assert list(task_vector(base, tuned, keys=["b"])) == ["b"]


def test_task_vector_errors_name_the_tensor():
    with pytest.raises(CompatibilityError, match=r"'w'.*missing from the base"):
        task_vector({}, {"w": torch.zeros(1)})
    with pytest.raises(CompatibilityError, match=r"'v'.*missing from the fine-tuned"):
        task_vector({"v": torch.zeros(1)}, {"w": torch.zeros(1)}, keys=["v"])
    with pytest.raises(CompatibilityError, match=r"'w': shape \(2,\)"):
        task_vector({"w": torch.zeros(3)}, {"w": torch.zeros(2)})


def test_unit_task_vectors_on_a_tiny_zoo(tiny_zoo_factory):
    base_dir, task_dirs = tiny_zoo_factory("bert", 3)
    _config, keys = read_saved(base_dir)
    unit_keys = decompose(keys, "bert").units("layer")["layer1"]
    base = _CountingSource(_load(base_dir))
    tuned = [_CountingSource(_load(d)) for d in task_dirs]
    matrix = unit_task_vectors(base, tuned, unit_keys)
    d = sum(base.tensors[k].numel() for k in unit_keys)
    assert matrix.shape == (3, d)
    assert matrix.dtype == torch.float32
    assert base.reads == unit_keys  # each base tensor read once
    for t, source in enumerate(tuned):
        expected = torch.cat(
            [(source.tensors[k].float() - base.tensors[k].float()).reshape(-1) for k in unit_keys]
        )
        assert torch.equal(matrix[t], expected)
    # The stand-in fine-tunes are distinct perturbations, so rows differ.
    assert not torch.equal(matrix[0], matrix[1])


def test_unit_task_vectors_edge_cases():
    base = {"a": torch.zeros(2, 2)}
    assert unit_task_vectors(base, [base, base], []).shape == (2, 0)
    assert unit_task_vectors(base, [], ["a"]).shape == (0, 4)
    with pytest.raises(CompatibilityError, match="'b' is missing from fine-tuned model 0"):
        unit_task_vectors({"b": torch.zeros(1)}, [base], ["b"])
