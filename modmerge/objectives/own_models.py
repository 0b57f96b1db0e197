"""Reading the user's own checkpoints for the merge problem: a pretrained model and T fine-tuned
ones, checked against each other, read once.

Sources are anything :func:`~modmerge.checkpoints.open_checkpoint` opens (HF directory,
``.safetensors`` file, hub id, PEFT adapter directory), a :class:`~modmerge.checkpoints.Checkpoint`
or an in-memory state dict.

>>> import torch
>>> models = read_models({"w": torch.zeros(2)}, {"a": {"w": torch.ones(2)}, "b": {"w": -torch.ones(2)}},
...                      architecture="generic", granularity="model")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch

from modmerge.checkpoints import Checkpoint, in_memory, open_checkpoint, validate_checkpoints
from modmerge.components import ComponentMap, decompose, detect_architecture, load_architecture
from modmerge.components.decompose import Granularity, Rule
from modmerge.errors import RecipeError

State = dict[str, torch.Tensor]
ModelSource = str | os.PathLike[str] | Checkpoint | Mapping[str, torch.Tensor]

__all__ = ["ModelSource", "OwnModels", "component_map", "open_model", "read_models"]


def open_model(spec: ModelSource, *, label: str, base: Checkpoint | None = None, allow_pickle: bool = False) -> Checkpoint:
    """A lazy :class:`Checkpoint` for a user's model spec (path, hub id, checkpoint or state dict).

    >>> open_model({"w": torch.ones(2)}, label="a").keys()
    ['w']
    """
    if isinstance(spec, Checkpoint):
        return spec
    if isinstance(spec, Mapping):
        return in_memory(spec, label=label)
    return open_checkpoint(spec, allow_pickle=allow_pickle, base=base)


def component_map(base: Checkpoint, architecture: str | None = None, rules: Sequence[Rule | tuple[str, ...]] = ()) -> ComponentMap:
    """The base's parameter names decomposed with ``architecture`` (else detected) and user rules."""
    keys = base.keys()
    arch = load_architecture(architecture) if architecture else detect_architecture(base.config, keys)
    return decompose(keys, arch, extra_rules=rules)


@dataclass
class OwnModels:
    """What the merge problem keeps of the user's checkpoints: the mergeable units (floating
    tensors outside the heads), the base's tensors of those units, every task's whole state, and
    the base's label, config and key order."""

    label: str
    config: dict[str, Any] | None
    units: dict[str, list[str]]
    keys: list[str]
    pretrained: State
    states: list[State]

    @property
    def kept_keys(self) -> list[str]:
        """Keys never merged (heads, poolers, integer buffers): each task keeps its own."""
        merged = {k for keys in self.units.values() for k in keys}
        return [k for k in self.keys if k not in merged]


def read_models(
    pretrained: ModelSource, models: Mapping[str, ModelSource], *, granularity: Granularity = "component",
    architecture: str | None = None, rules: Sequence[Rule | tuple[str, ...]] = (), allow_pickle: bool = False,
) -> OwnModels:
    """Open, check (architecture, keys, shapes, dtypes, finite values) and read the checkpoints once."""
    with ExitStack() as stack:
        base = stack.enter_context(open_model(pretrained, label="pretrained", allow_pickle=allow_pickle))
        tuned = [stack.enter_context(open_model(models[t], label=t, base=base, allow_pickle=allow_pickle))
                 for t in models]
        validate_checkpoints(base, tuned)
        units = _floating_units(component_map(base, architecture, rules).units(granularity, exclude_kinds=("head",)), base)
        keys = base.keys()
        merged = {k for unit_keys in units.values() for k in unit_keys}
        # Read once: the base's mergeable tensors and each task's whole model (its body feeds
        # singletons and merges, its kept tensors every evaluation of that task).
        return OwnModels(label=base.label, config=base.config, units=units, keys=keys,
                         pretrained=_read(base, [k for k in keys if k in merged]),
                         states=[_read(m, keys) for m in tuned])


def _floating_units(units: Mapping[str, list[str]], base: Checkpoint) -> dict[str, list[str]]:
    # Integer buffers (position ids, ...) are not weights: never merged or quantised, so they stay
    # with each task's kept tensors.
    out = {u: [k for k in keys if base.info(k).dtype.is_floating_point] for u, keys in units.items()}
    out = {u: keys for u, keys in out.items() if keys}
    if not out:
        raise RecipeError(f"{base.label}: no mergeable floating tensors outside the heads")
    return out


def _read(ckpt: Checkpoint, keys: Sequence[str]) -> State:
    out = {}
    for k in keys:
        # A clone owns its memory, so the readers (mmaps, adapter views) can be closed.
        out[k] = ckpt.get(k).clone()
        ckpt.release(k)
    return out
