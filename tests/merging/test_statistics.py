"""Statistics API: Fisher and Gram against independent formulas, on tiny models; files and cache."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from modmerge.errors import CheckpointError, MergeMethodError
from modmerge.merging import get_method
from modmerge.merging.fisher_statistics import compute_fisher
from modmerge.merging.statistics import (
    Statistics,
    StatisticsCache,
    compute_gram,
    load_statistics,
    save_statistics,
    strip_prefix,
)


@pytest.fixture(scope="module")
def tiny_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, num_labels=3,
    )
    return transformers.BertForSequenceClassification(config)


def bert_batches():
    gen = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    return [
        {
            "input_ids": torch.randint(0, 64, (2, 6), generator=gen),
            "attention_mask": mask,
            "labels": torch.tensor([0, 2]) + i % 2 * torch.tensor([1, -1]),
        }
        for i in range(2)
    ]


class Logits(torch.nn.Module):
    """A softmax regression whose output has ``.logits``, like a transformers model."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2, bias=False)

    def forward(self, x: torch.Tensor) -> transformers.modeling_outputs.SequenceClassifierOutput:
        return transformers.modeling_outputs.SequenceClassifierOutput(logits=self.linear(x))


def test_empirical_fisher_matches_the_closed_form_of_softmax_regression():
    torch.manual_seed(1)
    model = Logits()
    x = torch.randn(5, 3)
    y = torch.tensor([0, 1, 1, 0, 1])
    fisher = compute_fisher(model, [{"x": x[:3], "labels": y[:3]}, {"x": x[3:], "labels": y[3:]}],
                            estimator="empirical")
    # d log softmax(Wx)_y / dW = (onehot(y) - p) x^T; Fisher = mean over examples of its square
    with torch.no_grad():
        p = torch.softmax(x @ model.linear.weight.T, dim=-1)
    scores = (torch.nn.functional.one_hot(y, 2).float() - p)[:, :, None] * x[:, None, :]
    torch.testing.assert_close(fisher["linear.weight"], (scores**2).mean(0))
    assert fisher.metadata["n_examples"] == "5"
    # a mean of per-example squares, not the square of the batch-mean gradient
    assert not torch.allclose(fisher["linear.weight"], scores.mean(0) ** 2)


def test_fisher_respects_n_batches_and_custom_loss():
    model = Logits()
    batches = [{"x": torch.ones(2, 3)}, {"x": torch.ones(4, 3)}]
    calls = []

    def loss_fn(m, example):
        calls.append(example["x"].shape[0])
        return m(example["x"]).logits.sum()

    fisher = compute_fisher(model, batches, loss_fn=loss_fn, n_batches=1)
    assert calls == [1, 1]
    # d/dW sum(W x) = ones x^T = ones: squared -> ones
    torch.testing.assert_close(fisher["linear.weight"], torch.ones(2, 3))


def test_fisher_on_tiny_bert(tiny_bert):
    tiny_bert.train()
    fisher = compute_fisher(tiny_bert, bert_batches())
    trainable = {n for n, p in tiny_bert.named_parameters() if p.requires_grad}
    assert set(fisher) == trainable
    assert all(bool((v >= 0).all()) for v in fisher.values())
    assert fisher["classifier.weight"].abs().sum() > 0
    assert fisher["bert.encoder.layer.0.attention.self.query.weight"].abs().sum() > 0
    assert fisher.metadata["n_examples"] == "4"
    assert tiny_bert.training  # mode restored
    assert fisher.metadata["estimator"] == "expected"
    sampled = compute_fisher(tiny_bert, bert_batches(), estimator="sampled", generator=torch.Generator().manual_seed(0))
    assert set(sampled) == trainable and sampled.metadata["estimator"] == "sampled"


def test_empirical_fisher_needs_labels():
    with pytest.raises(MergeMethodError, match="labels"):
        compute_fisher(Logits(), [{"x": torch.ones(2, 3)}], estimator="empirical")


def test_gram_equals_manual_xtx_for_a_sequential():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    xs = [torch.randn(5, 3), torch.randn(2, 3)]
    grams = compute_gram(model, [{"input": x} for x in xs])
    assert set(grams) == {"0.weight", "2.weight"}
    x = torch.cat(xs)
    with torch.no_grad():
        h = torch.relu(x @ model[0].weight.T + model[0].bias)
    torch.testing.assert_close(grams["0.weight"], x.T @ x)
    torch.testing.assert_close(grams["2.weight"], h.T @ h)
    assert json.loads(grams.metadata["counts"]) == {"0.weight": 7, "2.weight": 7}
    averaged = compute_gram(model, [{"input": x} for x in xs], average=True, modules=lambda name, _: name == "0")
    assert set(averaged) == {"0.weight"}
    torch.testing.assert_close(averaged["0.weight"], x.T @ x / 7)


class Masked(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 2)
        self.head = torch.nn.Linear(2, 1)

    def forward(self, input: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.proj(input)[:, 0])  # head sees (batch, 2): the mask does not apply


def test_gram_skips_padded_positions():
    torch.manual_seed(3)
    model = Masked()
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    grams = compute_gram(model, [{"input": x, "attention_mask": mask}])
    kept = x[mask.bool()]
    torch.testing.assert_close(grams["proj.weight"], kept.T @ kept)
    with torch.no_grad():
        first = model.proj(x)[:, 0]
    torch.testing.assert_close(grams["head.weight"], first.T @ first)
    assert json.loads(grams.metadata["counts"]) == {"head.weight": 2, "proj.weight": 5}


def test_gram_on_tiny_bert_keys_and_token_count(tiny_bert):
    grams = compute_gram(tiny_bert, [{k: v for k, v in b.items() if k != "labels"} for b in bert_batches()])
    query = grams["bert.encoder.layer.0.attention.self.query.weight"]
    assert query.shape == (16, 16)
    torch.testing.assert_close(query, query.T)
    assert torch.linalg.eigvalsh(query.double()).min() > -1e-4
    counts = json.loads(grams.metadata["counts"])
    assert counts["bert.encoder.layer.0.attention.self.query.weight"] == 2 * (6 + 3)
    assert counts["classifier.weight"] == 4  # one pooled row per example
    linear_weights = {f"{n}.weight" for n, m in tiny_bert.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(grams) == linear_weights


def test_gram_on_gpt2_conv1d_feeds_regmean():
    torch.manual_seed(4)
    config = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    models = [transformers.GPT2LMHeadModel(config) for _ in range(2)]
    batch = {"input_ids": torch.randint(0, 64, (2, 5))}
    grams = [compute_gram(m, [batch]) for m in models]
    key = "transformer.h.0.mlp.c_fc.weight"  # Conv1D: in x out = 16 x 64
    assert grams[0][key].shape == (16, 16)
    assert key in json.loads(grams[0].metadata["conv1d"])
    weights = [dict(m.named_parameters())[key].detach() for m in models]
    merged = get_method("regmean")(weights[0], weights, stats=[g[key] for g in grams], alpha=1.0)
    # Conv1D computes x @ W: the merged layer satisfies sum_t G_t (W - W_t) = 0
    residual = sum(g[key].double() @ (merged.double() - w.double()) for g, w in zip(grams, weights, strict=True))
    assert merged.shape == (16, 64)
    assert residual.abs().max() < 1e-3 * max(g[key].abs().max() for g in grams)


def test_save_load_round_trip(tmp_path):
    stats = Statistics({"a.weight": torch.rand(2, 3), "b": torch.rand(4)}, {"kind": "fisher", "n_examples": "9"})
    path = save_statistics(tmp_path / "sub" / "stats.safetensors", stats)
    loaded, metadata = load_statistics(path)
    assert metadata == {"kind": "fisher", "n_examples": "9"} == loaded.metadata
    assert set(loaded) == set(stats)
    for key in stats:
        torch.testing.assert_close(loaded[key], stats[key])
    assert sorted(p.name for p in path.parent.iterdir()) == ["stats.safetensors"]


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), (b"not a safetensors file", "cannot be read")],
)
def test_load_bad_file_names_it(tmp_path, content, message):
    path = tmp_path / "bad.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        load_statistics(path)
    assert str(path) in str(info.value)


def test_load_rejects_nan(tmp_path):
    path = save_statistics(tmp_path / "nan.safetensors", {"w": torch.tensor([1.0, float("nan")])}, {})
    with pytest.raises(CheckpointError, match="'w'"):
        load_statistics(path)


def test_cache_computes_once(tmp_path):
    cache = StatisticsCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return Statistics({"w": torch.arange(3.0)}, {"kind": "gram", "n_examples": "3"})

    first = cache.get_or_compute("gram", "model-a", "data-x", compute)
    second = cache.get_or_compute("gram", "model-a", "data-x", compute)
    assert calls == [1]
    torch.testing.assert_close(second["w"], first["w"])
    path = cache.path_for("gram", "model-a", "data-x")
    assert path.parent == tmp_path and path.name.startswith("gram-") and len(path.stem) == len("gram-") + 16
    assert second.metadata == {"kind": "gram", "model_id": "model-a", "data_id": "data-x", "n_examples": "3"}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left
    cache.get_or_compute("gram", "model-a", "data-y", compute)
    assert len(calls) == 2


def test_cache_rejects_mismatched_kind(tmp_path):
    cache = StatisticsCache(tmp_path)
    with pytest.raises(MergeMethodError, match="unknown kind"):
        cache.path_for("hessian", "m", "d")
    with pytest.raises(MergeMethodError, match="returned 'gram'"):
        cache.get_or_compute("fisher", "m", "d", lambda: Statistics({}, {"kind": "gram"}))


def test_strip_prefix():
    stats = Statistics({"bert.pooler.dense.weight": torch.ones(1), "classifier.weight": torch.zeros(1)}, {"kind": "gram"})
    out = strip_prefix(stats, "bert.")
    assert set(out) == {"pooler.dense.weight", "classifier.weight"}
    assert out.metadata == {"kind": "gram"}
    with pytest.raises(MergeMethodError, match="collide"):
        strip_prefix({"bert.a": torch.ones(1), "a": torch.ones(1)}, "bert.")
