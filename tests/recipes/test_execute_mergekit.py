"""mergekit's methods through `modmerge merge` recipes: mergekit's parameter names, weights, seeds."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from modmerge.merging import get_method
from modmerge.recipes import parse_recipe, run_recipe

KEY = "encoder.layer.0.attention.self.query.weight"


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _merge(base: Path, models: list[Path], out: Path, weights=None, **fields) -> dict[str, torch.Tensor]:
    entries = [{"model": str(m), **({"weight": w} if weights else {})} for m, w in zip(models, weights or models, strict=True)]
    run_recipe(parse_recipe({"base_model": str(base), "models": entries, **fields}), out)
    return _weights(out)


def test_della_recipe_takes_lambda_and_is_seeded(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    params = {"density": 0.5, "epsilon": 0.1, "lambda": 0.8}
    a = _merge(base, tasks, tmp_path / "a", method="della", parameters=params, seed=3)
    b = _merge(base, tasks, tmp_path / "b", method="della", parameters=params, seed=3)
    c = _merge(base, tasks, tmp_path / "c", method="della", parameters=params, seed=4)
    assert torch.equal(a[KEY], b[KEY]) and not torch.equal(a[KEY], c[KEY])


def test_nuslerp_recipe_reads_t_from_the_model_weights(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    merged = _merge(base, tasks[:2], tmp_path / "out", weights=[1.0, 3.0], method="nuslerp")
    b, ts = _weights(base), [_weights(t) for t in tasks[:2]]
    expected = get_method("nuslerp")(b[KEY], [t[KEY] for t in ts], weights=[1.0, 3.0])
    torch.testing.assert_close(merged[KEY], expected.to(merged[KEY].dtype))


def test_slerp_recipe_between_the_base_and_one_model(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    merged = _merge(base, tasks[:1], tmp_path / "out", method="slerp", parameters={"t": 0.0})
    assert torch.equal(merged[KEY], _weights(base)[KEY])
