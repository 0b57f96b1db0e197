"""The component table behind ``modmerge inspect``."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from saved_models import read_saved

from modmerge.checkpoints.source import Checkpoint, TensorInfo
from modmerge.components import component_table, decompose, rows_to_json
from modmerge.errors import ComponentError


class _InfoSource:
    """A TensorSource that only describes tensors (the table must never read data)."""

    label = "memory"

    def __init__(self, infos: dict[str, TensorInfo]) -> None:
        self.infos = infos

    def keys(self) -> list[str]:
        return list(self.infos)

    def info(self, key: str) -> TensorInfo:
        return self.infos[key]

    def get(self, key: str) -> torch.Tensor:
        raise AssertionError(f"the table read tensor data for {key}")

    def close(self) -> None:
        pass


def _shapes(directory) -> dict[str, tuple[tuple[int, ...], str]]:
    out = {}
    with safe_open(str(directory / "model.safetensors"), framework="pt") as handle:
        for key in handle.keys():
            sliced = handle.get_slice(key)
            out[key] = (tuple(sliced.get_shape()), sliced.get_dtype())
    return out


def test_table_from_shapes_and_from_checkpoint(tiny_zoo_factory):
    base_dir, _tasks = tiny_zoo_factory("t5", 3)
    _config, keys = read_saved(base_dir)
    shapes = _shapes(base_dir)
    cmap = decompose(keys, "t5")
    rows = component_table(shapes, cmap)

    assert [r.component for r in rows] == [c.id for c in cmap.components()]
    assert sum(r.parameters for r in rows) == sum(
        torch.Size(shape).numel() for shape, _ in shapes.values()
    )
    assert sum(r.tensors for r in rows) == len(keys)
    by_id = {r.component: r for r in rows}
    embed = by_id["embed"]
    assert (embed.kind, embed.layer, embed.stack, embed.tensors) == ("embed", "-", "", 1)
    assert embed.parameters == 64 * 16
    mlp = by_id["encoder.layer1.mlp"]
    assert (mlp.layer, mlp.stack, mlp.parameters) == ("1", "encoder", 2 * 16 * 32)
    assert set(mlp.tensor_names) == {
        "encoder.block.1.layer.1.DenseReluDense.wi.weight",
        "encoder.block.1.layer.1.DenseReluDense.wo.weight",
    }

    infos = {k: TensorInfo(shape, torch.float32) for k, (shape, _dtype) in shapes.items()}
    checkpoint = Checkpoint(source=_InfoSource(infos), label="memory")
    assert component_table(checkpoint, cmap) == rows


def test_rows_to_json_round_trips(tiny_zoo_factory):
    base_dir, _tasks = tiny_zoo_factory("bert", 3)
    _config, keys = read_saved(base_dir)
    rows = component_table(_shapes(base_dir), decompose(keys, "bert"))
    data = json.loads(json.dumps(rows_to_json(rows)))
    assert [d["component"] for d in data] == [r.component for r in rows]
    assert data[0] == {
        "component": "embed",
        "kind": "embed",
        "layer": "-",
        "stack": "",
        "parameters": rows[0].parameters,
        "tensors": 5,
        "tensor_names": list(rows[0].tensor_names),
    }
    assert data[1]["layer"] == "0"


def test_names_must_agree_with_the_map():
    shapes = {"model.norm.weight": ((4,), "F32"), "lm_head.weight": ((8, 4), "F32")}
    with pytest.raises(ComponentError, match=r"'lm_head\.weight' is in the model but not"):
        component_table(shapes, decompose(["model.norm.weight"], "llama"))
    with pytest.raises(
        ComponentError, match=r"'model\.embed_tokens\.weight' is in the component map"
    ):
        component_table(shapes, decompose([*shapes, "model.embed_tokens.weight"], "llama"))
