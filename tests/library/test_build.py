"""`build_library`: manifest, content-addressed dedup, round trip, budget rule, atomicity."""

from __future__ import annotations

import json

import pytest
import torch
from library_configs import individual_and_mixed

import modmerge.library.build as build_mod
from modmerge.experts.grouping import GroupingMatrix
from modmerge.library import Library, LibraryError, build_library, chain_id
from modmerge.library.blobs import blob_path
from modmerge.objectives.performance import chain


def siblings(path):
    """Hidden temp / aside directories a build may leave next to LIB_DIR."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def test_search_run_becomes_a_library_of_every_pareto_configuration(search_run, search_lib, tiny_zoo):
    payload = json.loads((search_run / "pareto.json").read_text())
    distinct = {GroupingMatrix.from_array(s["grouping"]) for r in payload["runs"] for s in r["solutions"]}
    lib = search_lib
    assert len(lib.configurations) == len(distinct) >= 2
    assert {GroupingMatrix.from_array(c.grouping) for c in lib.configurations} == distinct
    costs = [c.storage_cost for c in lib.configurations]
    assert costs == sorted(costs) and [c.id for c in lib.configurations] == [f"c{i}" for i in range(len(costs))]
    recorded = {GroupingMatrix.from_array(s["grouping"]): s for r in payload["runs"] for s in r["solutions"]}
    for c in lib.configurations:
        sol = recorded[GroupingMatrix.from_array(c.grouping)]
        assert c.storage_cost == sol["storage_cost"] and c.validation == sol["validation"] and c.test == sol["test"]
        assert set(c.chains) == set(tiny_zoo.tasks)
        assert c.modules == sorted({h for cid in c.chains.values() for h in lib.chain_modules(cid)})
    m = lib.manifest
    assert m.zoo == "tiny" and m.units == payload["units"] and m.method["name"] == "task_arithmetic"
    assert m.backbone.architecture == "bert" and m.router is None and lib.router_state() is None
    assert [t.name for t in lib.tasks] == tiny_zoo.tasks
    first_group = m.task("first_group")
    assert (first_group.num_labels, first_group.max_length, first_group.labels) == (4, 16, ["color", "animal", "food", "tool"])
    files = sorted(p.name for p in lib.backbone_dir.iterdir())
    assert "config.json" in files and "tokenizer.json" in files and not any(f.endswith(".safetensors") for f in files)
    assert lib.verify() == []


def test_shared_modules_are_stored_once(chosen_lib, problem):
    lib = chosen_lib
    ind, mixed = individual_and_mixed(problem)
    assert len(lib.configurations) == 2  # mixed appears twice (two runs, relabelled): one configuration
    t, units = problem.n_tasks, problem.n_units
    by_grouping = {GroupingMatrix.from_array(c.grouping): c for c in lib.configurations}
    shared = set(by_grouping[ind].modules) & set(by_grouping[mixed].modules)
    assert len(shared) == t * (units - 1)  # every singleton module outside unit 0
    assert len(lib.manifest.modules) == t * units + 1
    blobs = sorted(lib.blobs_dir.glob("*.safetensors"))
    assert len(blobs) == len(lib.manifest.modules) + t == lib.blob_count
    assert len(set(by_grouping[ind].chains.values())) == t  # individual: a chain per task
    # mixed: chains differ (singletons), but all start with the one merged unit-0 module
    heads = {lib.chain_modules(cid)[0] for cid in by_grouping[mixed].chains.values()}
    assert len(heads) == 1 and lib.manifest.modules[heads.pop()].members == [list(range(t))]


def test_module_state_round_trips_the_expert_builder(chosen_lib, problem):
    lib = chosen_lib
    _, mixed = individual_and_mixed(problem)
    config = next(c for c in lib.configurations if GroupingMatrix.from_array(c.grouping) == mixed)
    for ti, task in enumerate(problem.task_names):
        hashes = lib.chain_modules(lib.chain(config.id, task))
        assert lib.chain(config.id, task) == chain_id(hashes)
        for key, digest in zip(chain(mixed, ti, problem.unit_ids), hashes, strict=True):
            got, want = lib.module_state(digest), problem.builder.dense(key)
            assert sorted(got) == sorted(want)
            for name in want:
                assert got[name].dtype == torch.float32 and torch.equal(got[name], want[name]), name
    # quantised units are stored as integer codes, with scale and zero point
    entry = lib.manifest.modules[lib.chain_modules(lib.chain(config.id, problem.task_names[0]))[0]]
    assert entry.quantised_units > 0 and "uint8" in set(entry.dtypes.values())
    with blob_path(lib.blobs_dir, lib.chain_modules(lib.chain(config.id, problem.task_names[0]))[0]).open("rb") as f:
        assert b"codes" in f.read(4096)  # the safetensors header names the integer codes


def test_head_blob_holds_classifier_and_own_pooler(chosen_lib, tiny_zoo):
    head = chosen_lib.head_state("has_color")
    own = tiny_zoo.task_head("has_color")
    assert torch.equal(head["classifier.weight"], own["classifier.weight"])
    with tiny_zoo.task_body("has_color") as body:
        assert torch.equal(head["pooler.dense.weight"], body.get("pooler.dense.weight"))


def test_select_picks_the_best_configuration_that_fits(chosen_lib, search_lib):
    lib = chosen_lib
    cheap, dear = lib.configurations  # mixed (0.8) is cheaper than individual (0.9)
    assert lib.select(dear.storage_cost).id == dear.id
    assert lib.select(dear.storage_cost - 1e-9).id == cheap.id
    with pytest.raises(LibraryError, match=f"smallest storage cost available is {cheap.storage_cost:.6g} "
                                           f"\\(configuration {cheap.id}\\)"):
        lib.select(cheap.storage_cost / 2)
    for budget in (0.5, 0.9, 2.0):
        fits = [c for c in search_lib.configurations if c.storage_cost <= budget]
        if fits:
            assert search_lib.select(budget).validation["mean"] == max(c.validation["mean"] for c in fits)


def test_rebuild_gives_identical_blobs_and_replaces_atomically(chosen_run, chosen_lib, zoo_store, tmp_path):
    target = tmp_path / "lib"
    first = build_library(chosen_run, target, source=zoo_store.load("tiny"))
    names = {p.name: p.read_bytes() for p in first.blobs_dir.iterdir()}
    assert names == {p.name: p.read_bytes() for p in chosen_lib.blobs_dir.iterdir()}
    (target / "stale.txt").write_text("from the old library")
    again = build_library(chosen_run, target, source=zoo_store.load("tiny"))
    assert {p.name: p.read_bytes() for p in again.blobs_dir.iterdir()} == names
    assert not (target / "stale.txt").exists() and siblings(target) == []


def test_failed_build_leaves_the_previous_library_intact(chosen_run, zoo_store, tmp_path, monkeypatch):
    target = tmp_path / "lib"
    build_library(chosen_run, target, source=zoo_store.load("tiny"))
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    calls = []

    def failing(blobs, state):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full (simulated)")
        return real(blobs, state)

    real = build_mod.write_blob
    monkeypatch.setattr(build_mod, "write_blob", failing)
    with pytest.raises(OSError, match="simulated"):
        build_library(chosen_run, target, source=zoo_store.load("tiny"))
    assert {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert siblings(target) == [] and Library.open(target, verify=True).verify() == []
    # and a first build that fails leaves no library at all
    with pytest.raises(OSError, match="simulated"):
        calls.clear()
        build_library(chosen_run, tmp_path / "new", source=zoo_store.load("tiny"))
    assert not (tmp_path / "new").exists() and siblings(tmp_path / "new") == []


def test_changed_storage_cost_means_the_zoo_changed(chosen_run, zoo_store, tmp_path):
    payload = json.loads((chosen_run / "pareto.json").read_text())
    payload["runs"][0]["solutions"][1]["storage_cost"] *= 1 + 1e-7
    run = tmp_path / "run"
    run.mkdir()
    (run / "pareto.json").write_text(json.dumps(payload))
    with pytest.raises(LibraryError, match=r"pareto.json: configuration .* rebuilds with storage cost .*'tiny' changed"):
        build_library(run, tmp_path / "lib", source=zoo_store.load("tiny"))
    assert not (tmp_path / "lib").exists() and siblings(tmp_path / "lib") == []


def test_router_weights_are_stored_as_a_blob(chosen_run, zoo_store, tiny_zoo, tmp_path):
    from modmerge.reuse.router import Router, RouterConfig

    torch.manual_seed(0)
    config = RouterConfig(tasks=tuple(tiny_zoo.tasks), in_dim=32, hidden=8)
    router = Router(config)
    state = router.to_state()
    lib = build_library(chosen_run, tmp_path / "lib", source=zoo_store.load("tiny"),
                        router=(state, {**config.to_dict(), "test_accuracy": 0.75}))
    got, stored = lib.router_state()
    assert sorted(got) == sorted(state) and all(torch.equal(got[k], v) for k, v in state.items())
    assert stored == config.to_dict() and lib.manifest.router.test_accuracy == 0.75
    again = Router.from_state(got, RouterConfig.from_dict(stored))
    features = torch.randn(5, 32)
    assert torch.equal(again.route(features), router.route(features))
    # router weights, and the pretrained body its features come from (routing needs no zoo)
    assert len(list(lib.blobs_dir.iterdir())) == lib.blob_count == len(lib.manifest.modules) + len(lib.tasks) + 2
    backbone = lib.router_backbone_state()
    with tiny_zoo.backbone() as ckpt:
        assert sorted(backbone) == sorted(ckpt.keys()) and all(torch.equal(backbone[k], ckpt.get(k)) for k in backbone)
    assert lib.verify() == []


@pytest.mark.parametrize(
    ("edit", "needle"),
    [(lambda p: p.pop("runs"), "runs: Field required"),
     (lambda p: p["runs"][0]["solutions"][0].update(storage_cost="cheap"), r"runs\.0\.solutions\.0\.storage_cost"), (lambda p: p.update(zoo=None, source=None), "has no task suite or zoo"),
     (lambda p: p.update(runs=[]), "no Pareto solutions"),
     (lambda p: p["runs"][0]["solutions"][0].update(grouping=[[0, -1]]), r"runs\[0\].solutions\[0\] is malformed"),
     (lambda p: p.update(units=["embed"]), "units differ")],
)
def test_bad_run_directories(chosen_run, zoo_store, tmp_path, edit, needle):
    payload = json.loads((chosen_run / "pareto.json").read_text())
    edit(payload)
    (tmp_path / "pareto.json").write_text(json.dumps(payload))
    with pytest.raises(LibraryError, match=needle):
        build_library(tmp_path, tmp_path / "lib", source=zoo_store.load("tiny"))
    with pytest.raises(LibraryError, match="not found"):
        build_library(tmp_path / "nope", tmp_path / "lib", source=zoo_store.load("tiny"))
