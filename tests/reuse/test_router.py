"""The router: config validation, the 3-layer MLP, save/load, seeded training, zoo plumbing."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from modmerge.errors import ModmergeError
from modmerge.reuse import (
    Router,
    RouterConfig,
    RouterError,
    fit_router,
    router_features,
    train_router,
)
from modmerge.tasks.models import load_body


def blobs(n_tasks: int = 3, per_task: int = 60, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable Gaussian clusters, one per task, offset along a random direction and scaled
    (mean 5, std 3) so standardisation matters."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_tasks, dim, generator=gen) * 3
    x = torch.cat([centres[t] + 0.7 * torch.randn(per_task, dim, generator=gen) for t in range(n_tasks)])
    y = torch.arange(n_tasks).repeat_interleave(per_task)
    return x * 3 + 5, y


def config_for(n_tasks: int = 3, dim: int = 8, **kw) -> RouterConfig:
    return RouterConfig(tasks=tuple(f"t{i}" for i in range(n_tasks)), in_dim=dim, **{"hidden": 16, "epochs": 15, **kw})


def test_defaults_are_the_papers_settings():
    config = RouterConfig(tasks=("a", "b"), in_dim=4)
    assert (config.epochs, config.lr, config.per_task, config.hidden) == (30, 5e-4, 1000, 256)


def test_router_is_three_linear_layers_with_standardisation():
    router = Router(config_for(4, 8))
    linears = [m for m in router.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 16), (16, 4)]
    assert sum(isinstance(m, nn.ReLU) for m in router.modules()) == 2
    assert router(torch.zeros(5, 8)).shape == (5, 4)
    routes = router.route(torch.zeros(5, 8))
    assert routes.dtype == torch.int64 and routes.shape == (5,)
    assert {"feature_mean", "feature_std"} <= set(router.to_state())


def test_trains_well_above_chance_on_separable_features():
    x, y = blobs()
    router = train_router(x, y, config_for())
    test_x, test_y = blobs(seed=0)  # same centres (same seed), fresh draw below
    gen = torch.Generator().manual_seed(1)
    test_x = test_x + 0.3 * torch.randn(test_x.shape, generator=gen)
    accuracy = float((router.route(test_x) == test_y).float().mean())
    assert accuracy > 0.9  # chance is 1/3
    # standardisation was fitted on the training features
    assert torch.allclose(router.feature_mean, x.mean(0), atol=1e-5)


def test_save_load_round_trip_gives_identical_routes(tmp_path):
    from safetensors.torch import load_file, save_file

    x, y = blobs()
    config = config_for()
    router = train_router(x, y, config)
    save_file(router.to_state(), tmp_path / "router.safetensors")
    (tmp_path / "router.json").write_text(json.dumps(config.to_dict()))
    loaded = Router.from_state(load_file(tmp_path / "router.safetensors"),
                               RouterConfig.from_dict(json.loads((tmp_path / "router.json").read_text())))
    probe = torch.randn(200, 8) * 5 + 5
    assert torch.equal(loaded.route(probe), router.route(probe))
    assert torch.equal(loaded(probe), router(probe))


def test_training_is_seeded_and_leaves_the_callers_rng_alone():
    x, y = blobs()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = train_router(x, y, config_for(seed=7)).to_state()
    assert torch.equal(torch.rand(1), before)
    b = train_router(x, y, config_for(seed=7)).to_state()
    c = train_router(x, y, config_for(seed=8)).to_state()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_config_round_trips_and_is_frozen():
    config = config_for(pooling="mean", weight_decay=0)
    again = RouterConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.tasks == ("t0", "t1", "t2") and isinstance(again.weight_decay, float)
    with pytest.raises(AttributeError):
        config.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tasks": ()}, "at least one task"),
        ({"tasks": "ab"}, "field 'tasks'"),
        ({"tasks": ("a", "a")}, "task 'a' is listed twice"),
        ({"tasks": ("a", "")}, "non-empty strings"),
        ({"in_dim": 0}, "field 'in_dim'"),
        ({"hidden": 2.5}, "field 'hidden'"),
        ({"epochs": True}, "field 'epochs'"),
        ({"per_task": -1}, "field 'per_task'"),
        ({"batch_size": 0}, "field 'batch_size'"),
        ({"lr": 0}, "field 'lr'"),
        ({"lr": float("nan")}, "field 'lr'"),
        ({"weight_decay": -0.1}, "field 'weight_decay'"),
        ({"seed": -1}, "field 'seed'"),
        ({"pooling": "pooler"}, "field 'pooling'"),
    ],
)
def test_config_validation_names_the_field(fields, message):
    base = {"tasks": ("a", "b"), "in_dim": 4}
    with pytest.raises(RouterError, match=message) as info:
        RouterConfig(**{**base, **fields})
    assert isinstance(info.value, ModmergeError) and "\n" not in str(info.value)


def test_from_dict_rejects_unknown_and_missing_fields():
    with pytest.raises(RouterError, match="field 'hiden' is unknown"):
        RouterConfig.from_dict({"tasks": ["a"], "in_dim": 4, "hiden": 8})
    with pytest.raises(RouterError, match="field 'in_dim' is missing"):
        RouterConfig.from_dict({"tasks": ["a"]})


def test_bad_states_and_training_inputs_are_named():
    config = config_for()
    state = Router(config).to_state()
    with pytest.raises(RouterError, match="misses 'feature_std'"):
        Router.from_state({k: v for k, v in state.items() if k != "feature_std"}, config)
    with pytest.raises(RouterError, match=r"'layers\.4\.weight' has shape"):
        Router.from_state(state, config_for(n_tasks=4))
    x, y = blobs()
    with pytest.raises(RouterError, match="N x 8"):
        train_router(x[:, :5], y, config)
    with pytest.raises(RouterError, match=r"in \[0, 3\)"):
        train_router(x, y + 1, config)
    with pytest.raises(RouterError, match="NaN or Inf"):
        train_router(torch.full_like(x, float("nan")), y, config)
    with pytest.raises(RouterError, match="N x 8"):
        Router(config).route(torch.zeros(2, 3))


def test_router_features_pooling(tiny_zoo):
    body = load_body(tiny_zoo.root / tiny_zoo.manifest.backbone.path)
    ids = torch.tensor([[2, 10, 11, 3], [2, 12, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
    cls = router_features(body, {"input_ids": ids, "attention_mask": mask}, "cls")
    mean = router_features(body, {"input_ids": ids, "attention_mask": mask}, "mean")
    assert torch.allclose(cls, hidden[:, 0], atol=1e-6)
    assert torch.allclose(mean[0], hidden[0].mean(0), atol=1e-5)
    assert torch.allclose(mean[1], hidden[1, :3].mean(0), atol=1e-5)  # the pad token is left out
    with pytest.raises(RouterError, match="pooling"):
        router_features(body, {"input_ids": ids}, "max")  # type: ignore[arg-type]


def test_fit_router_plumbing(tiny_zoo):
    # The tiny zoo's tasks share one input distribution, so routing by input is at chance there:
    # this checks the plumbing only (accuracy is learnt on separable features above).
    config = RouterConfig.for_source(tiny_zoo, hidden=16, epochs=2, per_task=40)
    assert config.pooling == "mean" and config.in_dim == 32 and config.tasks == tuple(tiny_zoo.tasks)
    router, report = fit_router(tiny_zoo, config, test_limit=24)
    n_tasks = len(tiny_zoo.tasks)
    assert report["train_examples"] == 40 * n_tasks  # per_task honoured (each train split holds 480)
    assert report["test_examples"] == 24 * n_tasks
    assert set(report["per_task"]) == set(tiny_zoo.tasks)
    assert 0.0 <= report["test_accuracy"] <= 1.0 and all(0.0 <= a <= 1.0 for a in report["per_task"].values())
    mean_of_tasks = sum(report["per_task"].values()) / n_tasks  # equal test counts: micro = macro
    assert report["test_accuracy"] == pytest.approx(mean_of_tasks)
    assert all(sum(row.values()) == 24 for row in report["confusion"].values())
    assert report["seconds"] >= report["train_seconds"] > 0
    assert RouterConfig.from_dict(report["config"]) == config
    assert router.route(torch.zeros(3, 32)).shape == (3,)


def test_fit_router_rejects_unknown_tasks_and_wrong_in_dim(tiny_zoo):
    with pytest.raises(RouterError, match="router task 'nope' is not in 'tiny'"):
        fit_router(tiny_zoo, RouterConfig(tasks=("nope",), in_dim=32))
    with pytest.raises(RouterError, match="in_dim 7 does not match"):
        fit_router(tiny_zoo, RouterConfig.for_source(tiny_zoo, in_dim=7, epochs=1, per_task=4), test_limit=4)
