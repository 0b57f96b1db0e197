"""Checks that run before any output is written: do the checkpoints fit together, and are
the values finite.

``validate_checkpoints`` reads only headers and configs; ``check_finite`` is called on each
tensor as the merge streams it, so bad values are caught without a second pass over the data.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch

from modmerge.checkpoints.source import Checkpoint
from modmerge.errors import CheckpointError, CompatibilityError

# Config fields that pin the architecture's size; a fine-tune never changes them.
_SIZE_FIELDS = (
    "hidden_size",
    "n_embd",
    "d_model",
    "num_hidden_layers",
    "n_layer",
    "num_layers",
    "num_attention_heads",
    "n_head",
)


def validate_checkpoints(
    base: Checkpoint,
    models: Sequence[Checkpoint],
    *,
    keys: Collection[str] | None = None,
    same_dtype: bool = True,
) -> None:
    """Raise CompatibilityError unless every model matches ``base`` in architecture, key set,
    shapes and (unless ``same_dtype=False``) dtypes. With ``keys``, only those tensors must exist
    and match.

    No tensor data is read; values are checked by :func:`check_finite` while merging.

    Example::

        >>> validate_checkpoints(open_checkpoint("base"), [open_checkpoint("ft")])  # doctest: +SKIP
    """
    base_keys = base.keys()
    wanted = base_keys if keys is None else [k for k in base_keys if k in set(keys)]
    for model in models:
        _check_architecture(base, model)
        _check_keys(base, model, keys)
        for key in wanted:
            b, m = base.info(key), model.info(key)
            if b.shape != m.shape:
                raise CompatibilityError(
                    f"{model.label}: tensor '{key}' has shape {tuple(m.shape)}, base {base.label} has {tuple(b.shape)}"
                )
            if same_dtype and b.dtype != m.dtype:
                raise CompatibilityError(
                    f"{model.label}: tensor '{key}' has dtype {m.dtype}, base {base.label} has {b.dtype}"
                )


def is_finite(tensor: torch.Tensor) -> bool:
    """True when no entry of ``tensor`` is NaN or Inf (integer tensors always are).

    >>> is_finite(torch.tensor([1.0, float("inf")]))
    False
    """
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return True
    if tensor.dtype.itemsize == 1:  # float8 kinds lack isfinite kernels on some builds
        tensor = tensor.to(torch.float16)
    # A sum is one fast pass and is finite whenever every entry is (barring overflow of huge
    # values, which falls through to the exact check): torch.isfinite is ~40x slower on CPU.
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def check_finite(tensor: torch.Tensor, *, label: str, key: str) -> None:
    """Raise CheckpointError if a floating tensor holds NaN or Inf.

    Example::

        >>> check_finite(torch.ones(3), label="ft/model.safetensors", key="w")
        >>> check_finite(torch.tensor([float("nan")]), label="ft", key="w")
        Traceback (most recent call last):
        ...
        modmerge.errors.CheckpointError: ft: tensor 'w' has NaN/Inf values (1 NaN, 0 Inf)
    """
    if is_finite(tensor):
        return
    n_nan, n_inf = count_nonfinite(tensor)
    raise CheckpointError(f"{label}: tensor '{key}' has NaN/Inf values ({n_nan} NaN, {n_inf} Inf)")


def count_nonfinite(tensor: torch.Tensor) -> tuple[int, int]:
    """How many entries of a floating ``tensor`` are NaN, and how many are +-Inf.

    >>> count_nonfinite(torch.tensor([float("nan"), float("-inf"), 1.0]))
    (1, 1)
    """
    if tensor.dtype.itemsize == 1:
        tensor = tensor.to(torch.float16)
    return int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())


def _config_label(model: Checkpoint) -> str:
    return str(model.directory / "config.json") if model.directory is not None else model.label


def _check_architecture(base: Checkpoint, model: Checkpoint) -> None:
    if base.config is None or model.config is None:
        return
    where = _config_label(model)
    fields: list[tuple[str, Any, Any]] = [
        ("model_type", model.config.get("model_type"), base.config.get("model_type")),
        ("architectures", model.config.get("architectures"), base.config.get("architectures")),
    ]
    fields += [(f, model.config.get(f), base.config.get(f)) for f in _SIZE_FIELDS]
    for name, mine, theirs in fields:
        if mine is not None and theirs is not None and mine != theirs:
            raise CompatibilityError(f"{where}: {name} {mine!r} differs from base {theirs!r}")


def _check_keys(base: Checkpoint, model: Checkpoint, keys: Collection[str] | None) -> None:
    mine, theirs = set(model.keys()), set(base.keys())
    if keys is not None:
        wanted = set(keys)
        missing = sorted(wanted - mine)
        unknown = sorted(wanted - theirs)
        if unknown:
            raise CompatibilityError(f"{base.label}: base lacks requested tensors {_few(unknown)}")
        extra: list[str] = []
    else:
        missing = sorted(theirs - mine)
        extra = sorted(mine - theirs)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s) the base has: {_few(missing)}")
    if extra:
        problems.append(f"{len(extra)} tensor(s) the base lacks: {_few(extra)}")
    if problems:
        raise CompatibilityError(f"{model.label}: " + "; ".join(problems) + f" (base {base.label})")


def _few(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")
