"""Ordinary task checkpoints, as users have them: a body under a prefix plus a task head.

A model saved by ``AutoModelForSequenceClassification`` / ``...ForImageClassification`` stores its
body under a prefix (``bert.embeddings...``, ``vit.encoder...``) and its head beside it
(``classifier.weight``, ``classifier.bias``), while the pretrained model is often the bare body
(``embeddings...``). :func:`split_task_model` finds the prefix that maps the task checkpoint onto
the body's names and returns a lazy body view with the bare names plus the head's tensors, so
the task model merges, evaluates and is stored like any other body + head.

Example::

    >>> base = open_checkpoint("bert-base")                       # doctest: +SKIP
    >>> parts = split_task_model(open_checkpoint("bert-sst2"), base.keys())  # doctest: +SKIP
    >>> parts.prefix, sorted(parts.head)                          # doctest: +SKIP
    ('bert.', ['classifier.bias', 'classifier.weight'])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from modmerge.checkpoints.source import Checkpoint, TensorInfo
from modmerge.errors import CompatibilityError

# What a linear classification head is stored as; other head shapes (RoBERTa's dense + out_proj,
# DistilBERT's pre_classifier) are refused by name rather than guessed at.
LINEAR_HEAD = ("classifier.weight", "classifier.bias")
# Module names transformers gives task heads (AutoModelFor... classes): tensors beside an
# unprefixed body count as a head only under one of these, so a stray extra tensor is refused.
HEAD_MODULES = ("classifier.", "pre_classifier.", "score.", "qa_outputs.", "cls.", "lm_head.", "head.", "logits_proj.")


class PrefixedView:
    """``inner``'s tensors ``prefix + name`` exposed under ``name``, for the names in ``keys``."""

    def __init__(self, inner: Checkpoint, prefix: str, keys: Sequence[str]) -> None:
        self.label, self._inner, self._prefix, self._keys = inner.label, inner, prefix, list(keys)

    def keys(self) -> list[str]:
        return list(self._keys)

    def info(self, key: str) -> TensorInfo:
        return self._inner.info(self._prefix + key)

    def get(self, key: str) -> torch.Tensor:
        return self._inner.get(self._prefix + key)

    def release(self, key: str) -> None:
        self._inner.release(self._prefix + key)

    def close(self) -> None:
        self._inner.close()


class WithBase:
    """An adapter's dense view that also closes the base it was opened over (the adapter reader
    leaves an explicitly given base open)."""

    def __init__(self, dense: Checkpoint, base: Checkpoint) -> None:
        self.label, self._dense, self._base = dense.label, dense, base

    def keys(self) -> list[str]:
        return self._dense.keys()

    def info(self, key: str) -> TensorInfo:
        return self._dense.info(key)

    def get(self, key: str) -> torch.Tensor:
        return self._dense.get(key)

    def release(self, key: str) -> None:
        self._dense.release(key)

    def close(self) -> None:
        self._dense.close()
        self._base.close()


@dataclass
class TaskModelParts:
    """A task checkpoint split into its body (bare names, lazy) and what lies outside it."""

    body: Checkpoint
    prefix: str
    head: dict[str, torch.Tensor]


def body_prefix(keys: Sequence[str], body_keys: Sequence[str]) -> str:
    """The prefix ``p`` such that ``p + k`` is in ``keys`` for the most body names ``k`` (``""``
    when the checkpoint is itself a bare body).

    >>> body_prefix(["bert.embeddings.x", "bert.pooler.w", "classifier.weight"], ["embeddings.x", "pooler.w"])
    'bert.'
    """
    have = set(keys)
    candidates = {""}
    for key in keys:
        for name in body_keys:
            if key.endswith(name) and (len(key) == len(name) or key[-len(name) - 1] == "."):
                candidates.add(key[: len(key) - len(name)])
                break
        if len(candidates) > 1:
            break
    return max(sorted(candidates), key=lambda p: sum(p + k in have for k in body_keys))


def split_task_model(ckpt: Checkpoint, body_keys: Sequence[str], *, optional: Sequence[str] = ()) -> TaskModelParts:
    """Split ``ckpt`` into a body view over ``body_keys`` and its remaining tensors (the head).

    ``optional`` names body keys the task model may lack (a ViT classifier has no pooler); they
    are left out of the view. Any other missing body key is a one-line error naming it.
    """
    keys = ckpt.keys()
    prefix = body_prefix(keys, body_keys)
    have = set(keys)
    skipped = set(optional)
    missing = [k for k in body_keys if prefix + k not in have and k not in skipped]
    if missing:
        raise CompatibilityError(f"{ckpt.label}: task model lacks body tensor '{missing[0]}' of the pretrained "
                                 f"model (looked under prefix '{prefix}'; {len(missing)} missing)")
    view_keys = [k for k in body_keys if prefix + k in have]
    inside = {prefix + k for k in view_keys}
    head = {k: ckpt.get(k) for k in keys if k not in inside and not k.endswith("position_ids")}
    body = Checkpoint(source=PrefixedView(ckpt, prefix, view_keys), label=ckpt.label, config=ckpt.config,
                      directory=ckpt.directory, files=ckpt.files)
    return TaskModelParts(body=body, prefix=prefix, head=head)


def linear_head(parts: TaskModelParts, label: str) -> dict[str, torch.Tensor]:
    """The task's linear classifier (``classifier.weight`` C x H, ``classifier.bias`` C); a
    one-line error naming the head's tensors when it is another shape."""
    if all(k in parts.head for k in LINEAR_HEAD):
        weight, bias = parts.head[LINEAR_HEAD[0]], parts.head[LINEAR_HEAD[1]]
        if weight.dim() == 2 and bias.dim() == 1 and bias.shape[0] == weight.shape[0]:
            return {LINEAR_HEAD[0]: weight, LINEAR_HEAD[1]: bias}
    names = ", ".join(sorted(parts.head)[:4]) or "none"
    raise CompatibilityError(f"{label}: head is not one linear classifier (found {names}); supported: "
                             "classifier.weight + classifier.bias (BERT-, MiniLM-, ViT-style heads)")
