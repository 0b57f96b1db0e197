"""evaluate_library (oracle and routed) and input parsing / image loading."""

from __future__ import annotations

import base64
import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from fake_library import fake_library
from PIL import Image

from modmerge.experts.grouping import GroupingMatrix
from modmerge.reuse.assembly import chain_state
from modmerge.reuse.evaluate import evaluate_library
from modmerge.reuse.inputs import InputError, encode_images, load_image, parse_input, read_jsonl
from modmerge.reuse.router import router_body
from modmerge.tasks.taskpool import TaskPool


@dataclass(frozen=True)
class _Config:
    tasks: list
    pooling: str = "cls"
    feature_layers: int | None = None

    @classmethod
    def from_dict(cls, data):
        return cls(**data)


class _Router(torch.nn.Module):
    """Sends everything to task ``state['target']``: enough to check the routed plumbing."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    @classmethod
    def from_state(cls, state, config):
        return cls(int(state["target"]))

    def route(self, features):
        return torch.full((len(features),), self.target, dtype=torch.int64)


@pytest.fixture
def fake_router(monkeypatch):
    module = types.ModuleType("modmerge.reuse.router")
    module.Router, module.RouterConfig = _Router, _Config
    module.router_features = lambda body, batch, pooling: body(**batch).last_hidden_state[:, 0]
    module.router_body = router_body
    monkeypatch.setitem(sys.modules, "modmerge.reuse.router", module)


@pytest.fixture(scope="module")
def lib(tiny_zoo, tmp_path_factory):
    units = len(tiny_zoo.component_map().units("component", exclude_kinds=("head",)))
    return fake_library(tiny_zoo, [GroupingMatrix.individual(4, units)], tmp_path_factory.mktemp("fake_lib_eval"))


def test_oracle_metrics_equal_the_task_pool(lib, tiny_zoo):
    report = evaluate_library(lib, "c0", tiny_zoo, limit=40, use_router=False)
    pool = TaskPool(tiny_zoo, split="test", limit=40)
    for task in tiny_zoo.tasks:
        assert report["tasks"][task]["oracle"] == pool.evaluate(task, chain_state(lib, lib.chain("c0", task)))
        assert report["tasks"][task]["routed"] is None
    assert report["routing_accuracy"] is None and report["storage_cost"] == 1.0


def test_routed_metrics_and_routing_accuracy(lib, tiny_zoo, fake_router, monkeypatch):
    monkeypatch.setattr(lib, "router", ({"target": torch.tensor(1)}, {"tasks": list(tiny_zoo.tasks)}))
    store = __import__("modmerge.zoo.store", fromlist=["ZooStore"]).ZooStore(tiny_zoo.root.parent.parent)
    from modmerge.reuse.engine import ReuseEngine

    engine = ReuseEngine(lib, config_id="c0", source=store.load("tiny"))  # pretrained weights come from the zoo
    report = evaluate_library(lib, "c0", tiny_zoo, limit=40, engine=engine)
    rows = report["tasks"]
    assert rows["has_color"]["routing_accuracy"] == 1.0 and rows["has_color"]["routed"] == rows["has_color"]["oracle"]
    assert all(rows[t]["routing_accuracy"] == 0.0 for t in tiny_zoo.tasks if t != "has_color")
    assert report["routing_accuracy"] == 0.25
    # an input's own task still wins over the router
    out = engine.predict([{"text": "red fox"}, {"text": "red fox", "task": "first_group"}])
    assert [o["task"] for o in out] == ["has_color", "first_group"]


def test_png_of_a_zoo_image_gives_the_zoo_pixels(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(28, 28), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(tmp_path / "x.png")
    zoo_tensor = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32) / 255.0)  # as fashion.py stores it
    assert torch.equal(load_image(tmp_path / "x.png", (28, 28), where="x"), zoo_tensor)
    assert torch.equal(load_image(pixels, (28, 28), where="x"), zoo_tensor)
    assert torch.equal(load_image(zoo_tensor.numpy(), (28, 28), where="x"), zoo_tensor)
    Image.fromarray(np.stack([pixels] * 3, -1), mode="RGB").resize((56, 56)).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png", (28, 28), where="x").shape == (28, 28)
    raw = parse_input({"image": str(tmp_path / "x.png")}, where="input 0")
    assert encode_images([raw], (28, 28)).shape == (1, 1, 28, 28)
    # an uploaded PNG (base64) gives the same pixels as the file
    uploaded = parse_input({"image_b64": base64.b64encode((tmp_path / "x.png").read_bytes()).decode()}, where="in 1")
    assert uploaded.kind == "image" and torch.equal(load_image(uploaded.value, (28, 28), where="x"), zoo_tensor)
    with pytest.raises(InputError, match="in 0: image_b64 holds no readable image"):
        encode_images([parse_input({"image_b64": base64.b64encode(b"not a png").decode()}, where="in 2")], (28, 28),
                      where="in")


@pytest.mark.parametrize(
    ("item", "needle"),
    [([1], "expected an object"), ({"text": "a", "image": "b"}, "exactly one of"), ({}, "exactly one of"),
     ({"image": 3}, "file path or an array"), ({"text": "a", "task": 1}, "'task' must be a string"),
     ({"image_b64": "%%%"}, "input 7: 'image_b64' is not valid base64"), ({"image_b64": 5}, "base64 string")],
)
def test_parse_input_errors(item, needle):
    with pytest.raises(InputError, match=needle):
        parse_input(item, where="input 7")


def test_read_jsonl_paths_and_errors(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"image": "imgs/a.png"}\n\n{"text": "hi", "id": "x"}\n')
    raws = read_jsonl(tmp_path / "in.jsonl")
    assert raws[0].value == str(tmp_path / "imgs" / "a.png") and raws[1].id == "x"
    with pytest.raises(InputError, match=r"image file .* not found"):
        load_image(raws[0].value, (28, 28), where="in.jsonl line 1")
    (tmp_path / "bad.jsonl").write_text('{"text": "hi"}\n[1, 2]\n')
    with pytest.raises(InputError, match=r"bad\.jsonl line 2: expected an object"):
        read_jsonl(tmp_path / "bad.jsonl")


def test_real_router_accuracy_through_the_engine_matches_its_own_report(lib, tiny_zoo, monkeypatch):
    from modmerge.reuse.router import RouterConfig, fit_router
    from modmerge.zoo.store import ZooStore

    config = RouterConfig.for_source(tiny_zoo, epochs=3, per_task=64)
    router, fitted = fit_router(tiny_zoo, config, test_limit=48)
    monkeypatch.setattr(lib, "router", (router.to_state(), config.to_dict()))
    from modmerge.reuse.engine import ReuseEngine

    engine = ReuseEngine(lib, config_id="c0", source=ZooStore(tiny_zoo.root.parent.parent).load("tiny"))
    report = evaluate_library(lib, "c0", tiny_zoo, limit=48, engine=engine)
    for task in tiny_zoo.tasks:  # same features up to batching noise: at most one example may flip
        assert abs(report["tasks"][task]["routing_accuracy"] - fitted["per_task"][task]) <= 1 / 48
