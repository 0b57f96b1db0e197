"""The staged forward (embeddings -> layers -> pooling) is the model's own forward, bit for bit."""

from __future__ import annotations

import pytest
import torch
import transformers

from modmerge.errors import ModmergeError
from modmerge.tasks.batching import eval_batches
from modmerge.tasks.staged import load_partial_state, staged_body
from modmerge.tasks.taskpool import TaskPool


@pytest.fixture(scope="module")
def pool(tiny_zoo):
    return TaskPool(tiny_zoo, split="validation", limit=48, batch_size=16)


def run_staged(staged, batch, pooling, start=0, hidden=None):
    if hidden is None:
        h, mask = staged.embed(batch)
    else:
        h, mask = hidden, staged.mask(hidden, batch)
    outs = []
    for i in range(start, staged.n_layers):
        h = staged.layer(i, h, mask)
        outs.append(h)
    return staged.features(h, pooling), outs


def test_bert_stages_equal_the_full_forward_on_padded_batches(pool, tiny_zoo):
    task = tiny_zoo.tasks[0]
    model = pool.task_model(task)
    staged = staged_body(model.body)
    assert staged is not None and staged.n_layers == 2
    inputs = pool.inputs(task, "validation")
    padded = 0
    with torch.inference_mode():
        for _, batch in eval_batches(inputs, 16):
            padded += int((batch["attention_mask"] == 0).any())
            full = model.features(**batch)
            feats, outs = run_staged(staged, batch, model.pooling)
            assert torch.equal(feats, full)
            resumed, _ = run_staged(staged, batch, model.pooling, start=1, hidden=outs[0])
            assert torch.equal(resumed, full)
    assert padded  # the attention mask mattered


def test_evaluate_from_reproduces_evaluate_and_resumes(pool, tiny_zoo):
    state = pool.pretrained_state()
    for task in tiny_zoo.tasks:
        first = pool.evaluate_from(task, state, keep_layers=[0])
        assert first.metric == pool.evaluate(task, state)
        assert first.layers_run == 2 and len(first.hidden[0]) == 3  # 48 examples in batches of 16
        later = {k: v for k, v in state.items() if not k.startswith(("embeddings.", "encoder.layer.0."))}
        resumed = pool.evaluate_from(task, later, start_layer=1, hidden=first.hidden[0])
        assert resumed.metric == first.metric and resumed.layers_run == 1


def test_evaluate_from_names_missing_weights(pool, tiny_zoo):
    state = {k: v for k, v in pool.pretrained_state().items() if not k.startswith("encoder.layer.1.")}
    with pytest.raises(ModmergeError, match=r"misses .*encoder\.layer\.1"):
        pool.evaluate_from(tiny_zoo.tasks[0], state)


@pytest.mark.parametrize("pooling", ["cls", "pooler"])
def test_vit_stages_equal_the_full_forward(pooling):
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
                                    image_size=8, patch_size=4, num_channels=1)
    torch.manual_seed(0)
    body = transformers.ViTModel(config).eval()
    staged = staged_body(body)
    assert staged is not None and staged.n_layers == 3
    assert staged.stage_of("encoder.layer.2.output.dense.weight") == 3
    assert staged.stage_of("layernorm.weight") == staged.stage_of("pooler.dense.weight") == 4
    pixels = torch.randn(5, 1, 8, 8)
    with torch.inference_mode():
        out = body(pixel_values=pixels)
        full = out.pooler_output if pooling == "pooler" else out.last_hidden_state[:, 0]
        feats, outs = run_staged(staged, {"pixel_values": pixels}, pooling)
        assert torch.equal(feats, full)
        assert torch.equal(run_staged(staged, {"pixel_values": pixels}, pooling, 2, outs[1])[0], full)


def test_unknown_bodies_fall_back_and_partial_loads_check_names():
    assert staged_body(torch.nn.Linear(2, 2)) is None
    config = transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                                     vocab_size=30)
    body = transformers.BertModel(config).eval()
    load_partial_state(body, {"pooler.dense.bias": torch.ones(16)})
    assert torch.equal(body.pooler.dense.bias, torch.ones(16))
    with pytest.raises(ModmergeError, match="unexpected"):
        load_partial_state(body, {"pooler.nope": torch.ones(16)})
    with pytest.raises(ModmergeError, match=r"pooler\.dense\.bias"):
        load_partial_state(body, {"pooler.dense.bias": torch.ones(3)})


def test_lower_precision_runs_under_autocast_and_stays_staged_exact(tiny_zoo):
    full = TaskPool(tiny_zoo, split="validation", limit=48, batch_size=16)
    low = TaskPool(tiny_zoo, split="validation", limit=48, batch_size=16, precision="bfloat16")
    state = full.pretrained_state()
    task = tiny_zoo.tasks[0]
    exact, approx = full.evaluate_from(task, state, keep_layers=[0]), low.evaluate_from(task, state, keep_layers=[0])
    h32, h16 = exact.hidden[0][0].float(), approx.hidden[0][0].float()
    assert not torch.equal(h32, h16)  # the matmuls really ran in bfloat16
    assert torch.allclose(h32, h16, atol=0.1, rtol=0.05)
    for t in tiny_zoo.tasks:  # within one precision, staged and resumed forwards still match the plain one
        first = low.evaluate_from(t, state, keep_layers=[0])
        assert first.metric == low.evaluate(t, state)
        later = {k: v for k, v in state.items() if not k.startswith(("embeddings.", "encoder.layer.0."))}
        assert low.evaluate_from(t, later, start_layer=1, hidden=first.hidden[0]).metric == first.metric


def test_unknown_precision_is_refused_up_front(tiny_zoo):
    with pytest.raises(ModmergeError, match="precision must be one of float32, bfloat16, float16, got 'int4'"):
        TaskPool(tiny_zoo, split="validation", precision="int4")
