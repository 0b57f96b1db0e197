"""Which module owns each tensor of a checkpoint, and what kind of module it is to PEFT.

LoRA extraction must know a tensor's module type, not guess it from its shape: a GPT-2 ``Conv1D``
stores ``(in, out)``, and a square one looks just like a ``Linear``; an embedding is saved or
factorised differently; and PEFT can wrap only some module types. With a ``config.json`` naming
a transformers class, the model is built on the ``meta`` device (no memory, no weights) and its
modules are read off; weights tied to one another (GPT-2's ``lm_head`` and ``wte``) are found by
identity. Without one, kinds are guessed from names and :attr:`ModuleMap.note` says so.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from modmerge.checkpoints.lora_extract import CONV1D, EMBEDDING, LINEAR, OTHER, module_of

logger = logging.getLogger(__name__)

_EMBEDDING_NAME = re.compile(r"(^|\.)(wte|wpe|shared|embed_tokens|tok_embeddings|\w*embeddings?)$")


@dataclass(frozen=True)
class ModuleMap:
    """``kinds``: module name -> ``linear`` | ``conv1d`` | ``embedding`` | ``other``, for every
    module that holds tensors; ``tensors``: every tensor name the model has (state-dict names);
    ``tied``: tensor -> all the tensors sharing its storage, itself included (only tied ones);
    ``modules``: every module name; ``model_class``: the transformers class, None when guessed."""

    kinds: Mapping[str, str]
    tensors: frozenset[str]
    modules: frozenset[str]
    tied: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    model_class: str | None = None
    note: str | None = None

    def kind(self, key: str) -> str | None:
        """The kind of the module owning tensor ``key``; None for a tensor the model lacks.

        >>> ModuleMap.from_names({"h.0.q.weight": (4, 4), "wte.weight": (9, 4)}).kind("wte.weight")
        'embedding'
        """
        return self.kinds.get(module_of(key)) if key in self.tensors else None

    @classmethod
    def from_names(cls, shapes: Mapping[str, tuple[int, ...]], note: str | None = None) -> ModuleMap:
        """Kinds guessed from tensor names and shapes: a module with a 2-D ``weight`` (and at most a
        ``bias`` beside it) is an embedding when named like one (``wte``, ``embed_tokens``,
        ``*_embeddings``), else linear; every other module is other. GPT-2's ``Conv1D`` cannot
        be told from a linear this way.

        >>> ModuleMap.from_names({"h.0.ln.weight": (4,), "h.0.q.weight": (4, 4)}).kinds
        {'h.0.ln': 'other', 'h.0.q': 'linear'}
        """
        leaves: dict[str, dict[str, int]] = {}
        for key, shape in shapes.items():
            module, _, leaf = key.rpartition(".")
            leaves.setdefault(module, {})[leaf] = len(shape)
        kinds: dict[str, str] = {}
        for module, dims in leaves.items():
            if dims.get("weight") == 2 and set(dims) <= {"weight", "bias"} and dims.get("bias", 1) == 1:
                kinds[module] = EMBEDDING if _EMBEDDING_NAME.search(module) else LINEAR
            else:
                kinds[module] = OTHER
        return cls(kinds=kinds, tensors=frozenset(shapes), modules=frozenset(leaves), note=note)

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> ModuleMap:
        """Kinds, tensors and ties read off a built model (any device, ``meta`` included)."""
        from transformers.pytorch_utils import Conv1D

        kinds: dict[str, str] = {}
        for name, module in model.named_modules():
            if next(module.parameters(recurse=False), None) is None and not list(module.buffers(recurse=False)):
                continue
            if isinstance(module, torch.nn.Embedding):
                kinds[name] = EMBEDDING
            elif isinstance(module, Conv1D):
                kinds[name] = CONV1D
            elif isinstance(module, torch.nn.Linear):
                kinds[name] = LINEAR
            else:
                kinds[name] = OTHER
        state = model.state_dict(keep_vars=True)
        groups: dict[int, list[str]] = {}
        for key, value in state.items():
            groups.setdefault(id(value), []).append(key)
        tied = {key: tuple(group) for group in groups.values() if len(group) > 1 for key in group}
        return cls(
            kinds=kinds,
            tensors=frozenset(state),
            modules=frozenset(name for name, _ in model.named_modules()),
            tied=tied,
            model_class=type(model).__name__,
        )


def module_map_for(config: Mapping[str, Any] | None, shapes: Mapping[str, tuple[int, ...]]) -> ModuleMap:
    """The :class:`ModuleMap` of a checkpoint with ``config`` (its parsed ``config.json``) and
    tensors ``shapes`` (name -> shape): from the transformers class its ``architectures`` names,
    built on the meta device, or guessed from the names when there is no config, the class
    cannot be built, or its tensor names are not the checkpoint's.

    >>> module_map_for(None, {"q.weight": (2, 2)}).note
    'no config.json: module kinds guessed from tensor names'
    """
    if not config:
        return ModuleMap.from_names(shapes, "no config.json: module kinds guessed from tensor names")
    architectures = config.get("architectures") or []
    name = architectures[0] if architectures and isinstance(architectures[0], str) else None
    try:
        model = _meta_model(config, name)
    # Building an unknown or remote-code model can fail in many ways; the names still serve.
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        logger.warning("cannot build %s to read its modules (%s); guessing from names", name or "the model", reason)
        return ModuleMap.from_names(shapes, f"cannot build {name or 'the model'} ({reason}): module kinds guessed from tensor names")
    found = ModuleMap.from_model(model)
    if not found.tensors & set(shapes):
        return ModuleMap.from_names(shapes, f"no tensor name matches {found.model_class}'s: module kinds guessed from tensor names")
    return found


def _meta_model(config: Mapping[str, Any], name: str | None) -> torch.nn.Module:
    import transformers

    model_class = getattr(transformers, name, None) if name else None
    if model_class is None:
        hf_config = transformers.AutoConfig.for_model(**dict(config))
        with torch.device("meta"):
            return transformers.AutoModel.from_config(hf_config)
    hf_config = model_class.config_class.from_dict(dict(config))
    with torch.device("meta"):
        return model_class(hf_config)
