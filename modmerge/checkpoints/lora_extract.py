"""LoRA extraction's pure pieces: the truncated SVD of a weight update, the rank it keeps, and
the names and config fields a PEFT LoRA adapter uses.

A fine-tune's update ``delta = W_tuned - W_base`` of a linear weight ``(out, in)`` is
approximated by ``B @ A`` with ``B = U_k sqrt(S_k)`` ``(out, k)`` and ``A = sqrt(S_k) V_k^T``
``(k, in)``: the best rank-``k`` approximation in Frobenius norm (Eckart-Young), whose error is
exactly the discarded singular values, ``||delta - B A||_F^2 = sum_{i > k} s_i^2``. Splitting
``sqrt(S)`` between the two factors keeps their magnitudes alike, which matters when they are
stored in 16-bit floats.

PEFT stores some updates transposed: GPT-2 ``Conv1D`` weights are ``(in, out)`` (its delta is
``(B @ A).T`` under ``fan_in_fan_out``) and an embedding table ``(num_embeddings, dim)`` takes
``(lora_embedding_B @ lora_embedding_A).T``; :func:`update_matrix` turns each into the
``(out, in)`` matrix that is factorised.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from modmerge.errors import ModmergeError

PEFT_PREFIX = "base_model.model."
# Module kinds, as far as LoRA cares: what PEFT can wrap, and everything else.
LINEAR, CONV1D, EMBEDDING, OTHER = "linear", "conv1d", "embedding", "other"
_TRANSPOSED = (CONV1D, EMBEDDING)
# PEFT task types by the ending of a transformers class name; a bare model gets none.
_TASK_TYPES = (
    ("ForCausalLM", "CAUSAL_LM"),
    ("LMHeadModel", "CAUSAL_LM"),
    ("ForConditionalGeneration", "SEQ_2_SEQ_LM"),
    ("ForSeq2SeqLM", "SEQ_2_SEQ_LM"),
    ("ForSequenceClassification", "SEQ_CLS"),
    ("ForTokenClassification", "TOKEN_CLS"),
    ("ForQuestionAnswering", "QUESTION_ANS"),
)


@dataclass(frozen=True)
class LoraFactors:
    """``b @ a`` approximates one update: ``a`` is ``lora_A`` ``(rank, in)``, ``b`` is ``lora_B``
    ``(out, rank)``. ``singular_values`` holds the whole spectrum (float32, descending)."""

    a: torch.Tensor
    b: torch.Tensor
    singular_values: torch.Tensor

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    @property
    def tail_error(self) -> float:
        """``||delta - b @ a||_F`` in exact arithmetic: the norm of the discarded singular values."""
        return float(self.singular_values[self.rank :].double().square().sum().sqrt())

    @property
    def delta_norm(self) -> float:
        return float(self.singular_values.double().square().sum().sqrt())


def choose_rank(singular_values: torch.Tensor, max_rank: int, energy: float | None = None) -> int:
    """The rank to keep: ``max_rank`` (at most the number of singular values), or with
    ``energy`` the smallest rank whose singular values hold that fraction of ``||delta||_F^2``,
    if it is smaller. Never below 1, so a zero update still has a shape.

    >>> s = torch.tensor([3.0, 2.0, 1.0, 0.0])
    >>> choose_rank(s, 8), choose_rank(s, 2), choose_rank(s, 8, energy=0.9)
    (4, 2, 2)
    >>> choose_rank(torch.zeros(3), 8, energy=0.5)
    1
    """
    cap = max(1, min(max_rank, singular_values.numel()))
    if energy is None:
        return cap
    squares = singular_values.double().square()
    total = float(squares.sum())
    if total == 0.0:
        return 1
    kept = squares.cumsum(0) / total
    # float rounding may leave the last cumulative share a hair under 1.0
    needed = int(torch.searchsorted(kept, torch.tensor(energy - 1e-12, dtype=kept.dtype))) + 1
    return max(1, min(cap, needed))


def truncated_svd(delta: torch.Tensor, max_rank: int, *, energy: float | None = None) -> LoraFactors:
    """Factor a 2-D update ``(out, in)`` into LoRA's ``a`` ``(k, in)`` and ``b`` ``(out, k)``, the
    best rank-``k`` approximation, ``k`` from :func:`choose_rank`. Computed in float32 on
    ``delta``'s device.

    >>> delta = torch.outer(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0, 4.0]))
    >>> f = truncated_svd(delta, 4)
    >>> f.a.shape, f.b.shape
    (torch.Size([2, 3]), torch.Size([2, 2]))
    >>> torch.allclose(f.b @ f.a, delta, atol=1e-5), round(f.delta_norm, 4)
    (True, 11.1803)
    >>> round(truncated_svd(delta, 1).tail_error, 6)
    0.0
    """
    if delta.dim() != 2:
        raise ModmergeError(f"a LoRA update is a matrix; got shape {tuple(delta.shape)}")
    u, s, vh = torch.linalg.svd(delta.to(torch.float32), full_matrices=False)
    k = choose_rank(s, max_rank, energy)
    root = s[:k].sqrt()
    return LoraFactors(a=root[:, None] * vh[:k], b=u[:, :k] * root[None, :], singular_values=s)


def update_matrix(delta: torch.Tensor, kind: str) -> torch.Tensor:
    """The ``(out, in)`` matrix LoRA factorises for a stored delta of a module of ``kind``:
    transposed for ``conv1d`` ``(in, out)`` and ``embedding`` ``(num_embeddings, dim)``.

    >>> update_matrix(torch.zeros(3, 5), "conv1d").shape
    torch.Size([5, 3])
    """
    return delta.T if kind in _TRANSPOSED else delta


def lora_keys(module: str, kind: str) -> tuple[str, str]:
    """The adapter file's names for ``module``'s A and B factors, as PEFT saves them.

    >>> lora_keys("model.layers.0.self_attn.q_proj", "linear")[0]
    'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'
    >>> lora_keys("model.embed_tokens", "embedding")[1]
    'base_model.model.model.embed_tokens.lora_embedding_B'
    """
    if kind == EMBEDDING:
        return f"{PEFT_PREFIX}{module}.lora_embedding_A", f"{PEFT_PREFIX}{module}.lora_embedding_B"
    return f"{PEFT_PREFIX}{module}.lora_A.weight", f"{PEFT_PREFIX}{module}.lora_B.weight"


def lora_bias_key(module: str) -> str:
    """The name of ``module``'s bias update (PEFT's ``lora_bias=True``)."""
    return f"{PEFT_PREFIX}{module}.lora_B.bias"


def saved_key(parameter: str) -> str:
    """The adapter file's name of a ``modules_to_save`` tensor: PEFT drops the
    ``modules_to_save.<adapter>.`` part when it saves.

    >>> saved_key("transformer.wte.weight")
    'base_model.model.transformer.wte.weight'
    """
    return PEFT_PREFIX + parameter


def module_of(key: str) -> str:
    """The module a tensor belongs to: its name without the last part (``""`` at the top).

    >>> module_of("encoder.layer.0.attention.self.query.weight"), module_of("logit_scale")
    ('encoder.layer.0.attention.self.query', '')
    """
    return key.rpartition(".")[0]


def module_kind_pattern(module: str) -> str:
    """``module`` with its layer indices replaced by ``*``: the report's row for modules alike.

    >>> module_kind_pattern("model.layers.11.self_attn.q_proj")
    'model.layers.*.self_attn.q_proj'
    """
    return re.sub(r"(?<=\.)\d+(?=\.|$)", "*", module)


def is_within(module: str, ancestors: Iterable[str]) -> bool:
    """True when ``module`` is one of ``ancestors`` or lies inside one.

    >>> is_within("h.0.attn.c_attn", ["h.0.attn"]), is_within("h.10", ["h.1"])
    (True, False)
    """
    return any(module == a or module.startswith(a + ".") for a in ancestors)


def compact_targets(targets: Iterable[str], all_modules: Iterable[str]) -> list[str]:
    """``target_modules`` for PEFT, short where that is exact: a module's last name stands for
    all of them when every module of the model PEFT would match by it is a target; otherwise
    full names. PEFT matches a name ``t`` against modules equal to ``t`` or ending in ``.t``
    (containers too: the parents of ``all_modules`` count).

    >>> compact_targets(["a.0.q", "a.1.q", "a.0.k"], ["a.0.q", "a.1.q", "a.0.k", "a.1.k"])
    ['a.0.k', 'q']
    """
    targets = set(targets)
    modules = {".".join(parts[:i]) for m in set(all_modules) | targets
               for parts in [m.split(".")] for i in range(1, len(parts) + 1)}
    names: set[str] = set()
    for target in targets:
        leaf = target.rpartition(".")[2]
        matched = {m for m in modules if m == leaf or m.endswith("." + leaf)}
        names.add(leaf if matched <= targets else target)
    return sorted(names)


# Heads PEFT's task wrappers put in ``modules_to_save`` themselves, by last name; an adapter of
# that task type must hold their tensors, or loading it fails.
_AUTO_SAVED = {"SEQ_CLS": ("classifier", "score"), "TOKEN_CLS": ("classifier", "score"), "QUESTION_ANS": ("qa_outputs",)}


def auto_saved_modules(model_class: str | None, modules: Iterable[str]) -> set[str]:
    """The ``modules`` PEFT saves whole on its own for ``model_class``'s task type.

    >>> sorted(auto_saved_modules("BertForSequenceClassification", ["bert.pooler", "classifier", "x.score"]))
    ['classifier', 'x.score']
    >>> auto_saved_modules("LlamaForCausalLM", ["lm_head"])
    set()
    """
    names = _AUTO_SAVED.get(task_type_for(model_class) or "", ())
    return {m for m in modules if m.rpartition(".")[2] in names}


def task_type_for(model_class: str | None) -> str | None:
    """PEFT's ``task_type`` for a transformers class name, None for a bare model.

    >>> task_type_for("LlamaForCausalLM"), task_type_for("GPT2LMHeadModel"), task_type_for("BertModel")
    ('CAUSAL_LM', 'CAUSAL_LM', None)
    """
    for ending, task_type in _TASK_TYPES:
        if model_class and model_class.endswith(ending):
            return task_type
    return None


def rank_settings(ranks: Mapping[str, int]) -> tuple[int, dict[str, int]]:
    """``r`` (the most common rank, the larger on a tie) and ``rank_pattern`` for the modules
    that differ; a pattern is the module's full name, escaped, as PEFT reads patterns as
    regular expressions matched at the end of a module's name.

    >>> rank_settings({"a.q": 4, "a.k": 4, "b.q": 2})
    (4, {'b\\\\.q': 2})
    """
    if not ranks:
        return 1, {}
    counts = Counter(ranks.values())
    r = max(counts, key=lambda rank: (counts[rank], rank))
    return r, {re.escape(m): k for m, k in sorted(ranks.items()) if k != r}


def adapter_config(
    *,
    ranks: Mapping[str, int],
    all_modules: Iterable[str],
    modules_to_save: Iterable[str],
    base_model: str | None,
    model_class: str | None,
    fan_in_fan_out: bool,
    lora_bias: bool,
) -> dict[str, Any]:
    """The ``adapter_config.json`` of an extracted adapter: ``lora_alpha`` equals each module's
    rank (``alpha_pattern`` mirrors ``rank_pattern``), so every update is applied at scale 1.

    >>> cfg = adapter_config(ranks={"h.0.q": 2}, all_modules=["h.0.q"], modules_to_save=[],
    ...                      base_model="base", model_class=None, fan_in_fan_out=False, lora_bias=False)
    >>> cfg["r"], cfg["lora_alpha"], cfg["target_modules"], cfg["modules_to_save"]
    (2, 2, ['q'], None)
    """
    r, rank_pattern = rank_settings(ranks)
    saved = sorted(modules_to_save)
    return {
        "peft_type": "LORA",
        "task_type": task_type_for(model_class),
        "base_model_name_or_path": base_model,
        "revision": None,
        "r": r,
        "lora_alpha": r,
        "rank_pattern": rank_pattern,
        "alpha_pattern": dict(rank_pattern),
        "target_modules": compact_targets(ranks, all_modules),
        "modules_to_save": saved or None,
        "fan_in_fan_out": fan_in_fan_out,
        "lora_bias": lora_bias,
        "bias": "none",
        "lora_dropout": 0.0,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "auto_mapping": {"base_model_class": model_class} if model_class else None,
    }
