"""Router features from a truncated pretrained body (``RouterConfig.feature_layers``): the body
equals the full one's hidden states after k layers (+ its final norm), the config validates and
round-trips, and a library built with it routes through the engine exactly as computed by hand."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from click.testing import CliRunner
from tiny_models import tiny_config

from modmerge.checkpoints import open_checkpoint
from modmerge.cli import main
from modmerge.errors import ModmergeError
from modmerge.reuse import (
    ReuseEngine,
    Router,
    RouterConfig,
    RouterError,
    fit_router,
    router_body,
    router_features,
)
from modmerge.search.driver import run_search_recipe
from modmerge.search.recipe import SearchRecipe
from modmerge.tasks.models import load_body
from modmerge.zoo.store import ZooStore

LAYERS = 3


def _state(model_dir):
    with open_checkpoint(model_dir) as ckpt:
        return {k: ckpt.get(k).clone() for k in ckpt.keys()}


@pytest.fixture(scope="module", params=["bert", "vit"])
def backbone(request, tmp_path_factory):
    """A tiny 3-layer backbone: BERT with its pooler, ViT without one (as the vision zoo saves it)."""
    arch = request.param
    config = tiny_config(arch)
    config.num_hidden_layers = LAYERS
    torch.manual_seed(0)
    if arch == "bert":
        model = transformers.BertModel(config)
        batch = {"input_ids": torch.randint(0, 64, (3, 7)),
                 "attention_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])}
    else:
        model = transformers.ViTModel(config, add_pooling_layer=False)
        batch = {"pixel_values": torch.randn(3, 1, 8, 8)}
    out = tmp_path_factory.mktemp(f"shallow_{arch}")
    model.save_pretrained(out)
    return arch, out, batch


@pytest.mark.parametrize("k", [0, 1, 2, LAYERS])
def test_truncated_features_are_the_full_models_hidden_states_after_k_layers(backbone, k):
    arch, model_dir, batch = backbone
    full = load_body(model_dir)
    with torch.inference_mode():
        hidden = full(**batch, output_hidden_states=True).hidden_states[k]  # [0] is the embeddings
        expected = full.layernorm(hidden) if arch == "vit" else hidden  # BERT (post-LN) has no final norm
    shallow = router_body(model_dir, _state(model_dir), k)
    assert shallow.config.num_hidden_layers == k
    assert (shallow.pooler is None) == (arch == "vit")  # the full model's pooling parts are kept as saved
    with torch.inference_mode():
        torch.testing.assert_close(shallow(**batch).last_hidden_state, expected, atol=1e-6, rtol=1e-6)
    pooling = "mean" if arch == "bert" or k == 0 else "cls"
    feats = router_features(shallow, batch, pooling)
    if pooling == "mean" and arch == "vit":
        by_hand = expected.mean(1)
    elif arch == "bert":
        mask = batch["attention_mask"].unsqueeze(-1).float()
        by_hand = (expected * mask).sum(1) / mask.sum(1)
    else:
        by_hand = expected[:, 0]
    torch.testing.assert_close(feats, by_hand, atol=1e-5, rtol=1e-5)


def test_all_layers_is_the_full_body(backbone):
    _, model_dir, batch = backbone
    state = _state(model_dir)
    full, everything = router_body(model_dir, state, None), router_body(model_dir, state, LAYERS)
    with torch.inference_mode():
        assert torch.equal(full(**batch).last_hidden_state, everything(**batch).last_hidden_state)


def test_truncated_body_needs_the_weights_it_keeps(backbone):
    _, model_dir, _ = backbone
    state = _state(model_dir)
    with pytest.raises(RouterError, match=r"field 'feature_layers': at most the backbone's 3 encoder layers, got 4"):
        router_body(model_dir, state, LAYERS + 1)
    without_layer0 = {k: v for k, v in state.items() if not k.startswith("encoder.layer.0.")}
    with pytest.raises(ModmergeError, match="missing"):
        router_body(model_dir, without_layer0, 1)
    router_body(model_dir, {k: v for k, v in state.items() if not k.startswith("encoder.layer.2.")}, 2)


@pytest.mark.parametrize("value", [-1, True, 1.5, "2"])
def test_feature_layers_validation_names_the_field(value):
    with pytest.raises(RouterError, match="router config field 'feature_layers'") as info:
        RouterConfig(tasks=("a", "b"), in_dim=4, feature_layers=value)
    assert "\n" not in str(info.value)


def test_embeddings_only_router_needs_mean_pooling():
    with pytest.raises(RouterError, match=r"feature_layers 0 reads the embeddings.*use pooling 'mean'"):
        RouterConfig(tasks=("a", "b"), in_dim=4, feature_layers=0, pooling="cls")
    assert RouterConfig(tasks=("a", "b"), in_dim=4, feature_layers=0, pooling="mean").feature_layers == 0


def test_feature_layers_round_trips_and_older_configs_mean_all_layers():
    config = RouterConfig(tasks=("a", "b"), in_dim=4, feature_layers=2)
    assert RouterConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    older = {k: v for k, v in RouterConfig(tasks=("a", "b"), in_dim=4).to_dict().items() if k != "feature_layers"}
    assert RouterConfig.from_dict(older).feature_layers is None
    assert RouterConfig(tasks=("a",), in_dim=4).to_dict()["feature_layers"] is None


def test_fit_router_rejects_more_layers_than_the_backbone_has(tiny_zoo):
    config = RouterConfig.for_source(tiny_zoo, epochs=1, per_task=4, feature_layers=3)  # the tiny BERT has 2
    with pytest.raises(RouterError, match=r"field 'feature_layers': at most the backbone's 2 encoder layers, got 3"):
        fit_router(tiny_zoo, config, test_limit=4)


@pytest.fixture(scope="module")
def shallow_lib(tiny_zoo, tmp_path_factory):
    """A library built by the CLI from a tiny search run, with a router on the first layer only."""
    store = ZooStore(tiny_zoo.root.parent.parent)
    root = tmp_path_factory.mktemp("shallow_lib")
    recipe = SearchRecipe(zoo="tiny", budget=2, population=2, runs=1, validation_limit=8, test_limit=8,
                          surrogate=False, init="random")
    run_search_recipe(recipe, root / "run", source=store.load(recipe.source.zoo))
    result = CliRunner().invoke(main, ["library", "build", str(root / "run"), str(root / "lib"), "--cache",
                                       str(store.root), "--router-feature-layers", "1", "--router-per-task", "32",
                                       "--router-epochs", "3", "--router-test-limit", "8"])
    assert result.exit_code == 0, result.output
    return root / "lib"


def test_engine_routes_a_shallow_library_as_computed_by_hand(shallow_lib, tiny_zoo):
    engine = ReuseEngine(shallow_lib)
    state, stored = engine.library.router_state()
    config = RouterConfig.from_dict(stored)
    assert config.feature_layers == 1 and engine._pretrained_body.config.num_hidden_layers == 1
    # the library keeps only the body the router reads: no weights of layers >= 1
    assert not any(k.startswith("encoder.layer.1.") for k in engine.library.router_backbone_state())
    router = Router.from_state(state, config)
    full = load_body(tiny_zoo.root / tiny_zoo.manifest.backbone.path)  # all layers; read the first by hand
    texts = [s for t in tiny_zoo.tasks for s in tiny_zoo.task_data(t)["test"]["inputs"][:6]]
    max_length = max(t.max_length for t in engine.tasks.values())
    by_hand = []
    with torch.inference_mode():
        for text in texts:
            ids = engine.tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")["input_ids"]
            hidden = full(input_ids=ids, output_hidden_states=True).hidden_states[1]
            by_hand.append(config.tasks[int(router.route(hidden.mean(1)))])
    assert len(set(by_hand)) > 1  # the check means something only if the router does not send all one way
    assert [r["task"] for r in engine.predict([{"text": s} for s in texts])] == by_hand


def test_embeddings_only_router_library_routes_through_the_engine(shallow_lib, tiny_zoo):
    store = ZooStore(tiny_zoo.root.parent.parent)
    out = shallow_lib.parent / "lib0"
    args = ["library", "build", str(shallow_lib.parent / "run"), str(out), "--cache", str(store.root),
            "--router-feature-layers", "0", "--router-per-task", "32", "--router-epochs", "3", "--router-test-limit", "8"]
    refused = CliRunner().invoke(main, [*args, "--router-pooling", "cls"])
    assert refused.exit_code != 0 and "use pooling 'mean'" in refused.output and not out.exists()
    result = CliRunner().invoke(main, [*args, "--router-pooling", "mean"])
    assert result.exit_code == 0, result.output
    engine = ReuseEngine(out)
    assert engine._pretrained_body.config.num_hidden_layers == 0
    assert not any(k.startswith("encoder.") for k in engine.library.router_backbone_state())
    texts = [s for t in tiny_zoo.tasks for s in tiny_zoo.task_data(t)["test"]["inputs"][:3]]
    assert len(engine.predict([{"text": s} for s in texts])) == len(texts)


def test_fit_router_reads_only_the_backbone_layers_the_router_uses(tiny_zoo, monkeypatch):
    from modmerge.zoo.store import Zoo

    read, opened = [], Zoo.backbone

    def recording(self):
        ckpt = opened(self)
        get = ckpt.get
        ckpt.get = lambda key: (read.append(key), get(key))[1]
        return ckpt

    monkeypatch.setattr(Zoo, "backbone", recording)
    config = RouterConfig.for_source(tiny_zoo, epochs=1, per_task=4, feature_layers=1)
    _router, report = fit_router(tiny_zoo, config, test_limit=4)
    assert any(k.startswith("encoder.layer.0.") for k in read) and "embeddings.word_embeddings.weight" in read
    assert not any(k.startswith("encoder.layer.1.") for k in read)  # neither the router nor the task pools
    assert report["train_examples"] == 4 * len(tiny_zoo.tasks) and 0.0 <= report["test_accuracy"] <= 1.0
