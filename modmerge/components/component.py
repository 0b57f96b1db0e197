"""What a component is: a (stack, layer, kind) triple with a stable string id and model order.

MERGE (section III-B) writes a model as components ``{theta^l}_{l=1..L}``; here a component is
one functional part of one layer (attention, MLP, normalisation) or a layer-free part
(embeddings, final norm, head). ``stack`` keeps towers apart (T5 ``encoder`` / ``decoder``);
it is empty for single-stack models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from modmerge.errors import ComponentError

Kind = Literal["embed", "attn", "mlp", "norm", "head", "other"]
KINDS: tuple[str, ...] = get_args(Kind)

# Order of kinds inside one layer and among layer-free parts of a stack (attn < mlp < norm).
_KIND_RANK = {kind: i for i, kind in enumerate(KINDS)}
_STACK_RANK = {"": 0, "encoder": 1, "decoder": 2}
_STACK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LAYER_PART = re.compile(r"layer(\d+)")


def check_stack(stack: str, where: str) -> None:
    """Raise ComponentError unless ``stack`` is empty or a plain name that cannot be misparsed."""
    if stack == "":
        return
    if not _STACK_NAME.fullmatch(stack) or stack in KINDS or _LAYER_PART.fullmatch(stack):
        raise ComponentError(
            f"{where}: bad stack name {stack!r} (use a plain identifier that is not a kind "
            f"or 'layerN')"
        )


def check_kind(kind: str, where: str) -> None:
    """Raise ComponentError unless ``kind`` is one of :data:`KINDS`."""
    if kind not in KINDS:
        raise ComponentError(f"{where}: unknown kind {kind!r} (expected one of {', '.join(KINDS)})")


def _sort_key(stack: str, layer: int | None, kind: str) -> tuple[int, int, str, int, int, int]:
    # Layer-free embeddings of the unnamed stack come first and its layer-free heads/others last,
    # so a T5 reads: shared embedding, encoder, decoder, lm_head.
    tail = stack == "" and layer is None and kind in ("head", "other")
    phase = 2 if tail else (0 if stack == "" else 1)
    stack_rank = _STACK_RANK.get(stack, len(_STACK_RANK))
    section = 1 if layer is not None else (0 if kind == "embed" else 2)
    return (phase, stack_rank, stack, section, -1 if layer is None else layer, _KIND_RANK[kind])


@dataclass(frozen=True, order=True)
class Component:
    """One functional component: ``Component("encoder", 3, "mlp")`` has id ``"encoder.layer3.mlp"``.

    Instances sort in model order: embeddings, layers ascending (attn < mlp < norm inside a
    layer), final norm, head; encoder before decoder. ``layer`` is None for layer-free parts.

    >>> sorted([Component("", None, "head"), Component("", 1, "attn"), Component("", None, "embed")])
    [Component(stack='', layer=None, kind='embed'), Component(stack='', layer=1, kind='attn'), Component(stack='', layer=None, kind='head')]
    >>> Component.parse("decoder.layer0.attn")
    Component(stack='decoder', layer=0, kind='attn')
    """

    # Compared first, so ordering never compares None with int; derived from the other fields.
    _rank: tuple[int, int, str, int, int, int] = field(init=False, repr=False)
    stack: str
    layer: int | None
    kind: str

    def __post_init__(self) -> None:
        where = f"component ({self.stack!r}, {self.layer!r}, {self.kind!r})"
        check_stack(self.stack, where)
        check_kind(self.kind, where)
        if self.layer is not None and (
            isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0
        ):
            raise ComponentError(f"{where}: layer must be None or a non-negative integer")
        object.__setattr__(self, "_rank", _sort_key(self.stack, self.layer, self.kind))

    @property
    def id(self) -> str:
        """Stable string id: ``[stack.][layerN.]kind``, e.g. ``"layer0.attn"``, ``"head"``."""
        parts = [self.stack] if self.stack else []
        if self.layer is not None:
            parts.append(f"layer{self.layer}")
        parts.append(self.kind)
        return ".".join(parts)

    @property
    def layer_unit(self) -> str:
        """Id of this component's unit at ``layer`` granularity (``"encoder.layer3"``, ``"head"``)."""
        if self.layer is None:
            return self.id
        return f"{self.stack}.layer{self.layer}" if self.stack else f"layer{self.layer}"

    @classmethod
    def parse(cls, text: str) -> Component:
        """Inverse of :attr:`id`: ``Component.parse("layer2.mlp") == Component("", 2, "mlp")``."""
        parts = text.split(".")
        if not 1 <= len(parts) <= 3 or parts[-1] not in KINDS:
            raise ComponentError(f"component id {text!r} is not of the form [stack.][layerN.]kind")
        kind, rest = parts[-1], parts[:-1]
        layer: int | None = None
        if rest and (m := _LAYER_PART.fullmatch(rest[-1])):
            layer = int(m.group(1))
            rest = rest[:-1]
        if len(rest) > 1 or (rest and rest[0] == ""):
            raise ComponentError(f"component id {text!r} is not of the form [stack.][layerN.]kind")
        return cls(rest[0] if rest else "", layer, kind)

    def __str__(self) -> str:
        return self.id
