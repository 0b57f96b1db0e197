"""A body's forward pass cut into stages: embeddings -> encoder layer 0..N-1 -> final norm/pooling.

The MERGE evaluator runs many bodies that agree on their first layers (expert chains that share a
prefix); running the body stage by stage lets it keep the hidden states after layer k and start
a later forward from there. Each stage calls the model's own sub-modules with the same arguments,
and the attention mask is built by the same transformers helper the model's ``forward`` uses, so
a staged run gives the full forward's outputs bit for bit.

What is architecture-specific lives in :data:`STAGE_SPECS`, one entry per body class; a body
that has no entry (or whose structure does not fit it) gets ``None`` from :func:`staged_body`,
and callers fall back to the plain forward.

>>> staged = staged_body(body)  # doctest: +SKIP
>>> hidden, mask = staged.embed({"input_ids": ids, "attention_mask": am})  # doctest: +SKIP
>>> for i in range(staged.n_layers):  # doctest: +SKIP
...     hidden = staged.layer(i, hidden, mask)
>>> staged.features(hidden, pooling="pooler")  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modmerge.errors import ModmergeError
from modmerge.tasks.models import checkpoint_key_map

Inputs = Mapping[str, torch.Tensor]


def _bert_embed(body: Any, inputs: Inputs) -> torch.Tensor:
    return body.embeddings(
        input_ids=inputs.get("input_ids"), token_type_ids=inputs.get("token_type_ids"),
        position_ids=inputs.get("position_ids"),
    )


def _vit_embed(body: Any, inputs: Inputs) -> torch.Tensor:
    pixels = inputs["pixel_values"]
    expected = body.embeddings.patch_embeddings.projection.weight.dtype
    return body.embeddings(pixels.to(expected) if pixels.dtype != expected else pixels)


def _no_final_norm(body: Any, hidden: torch.Tensor) -> torch.Tensor:
    return hidden


def _vit_final_norm(body: Any, hidden: torch.Tensor) -> torch.Tensor:
    return body.layernorm(hidden)


@dataclass(frozen=True)
class StageSpec:
    """Where one body class keeps its stages (module attribute paths) and how its checkpoint
    names map to stages (``layer_key``'s group 1 is the layer index)."""

    layers: str  # attribute path of the encoder's layer list
    embed: Callable[[Any, Inputs], torch.Tensor]
    final_norm: Callable[[Any, torch.Tensor], torch.Tensor]
    embed_prefix: str = "embeddings."
    layer_key: str = r"^encoder\.layer\.(\d+)\."


# Checkpoint names are the classic ones for both (see ``checkpoint_key_map``), even though
# transformers 5 keeps ViT's layers at ``body.layers``.
STAGE_SPECS: dict[str, StageSpec] = {
    "BertModel": StageSpec(layers="encoder.layer", embed=_bert_embed, final_norm=_no_final_norm),
    "ViTModel": StageSpec(layers="layers", embed=_vit_embed, final_norm=_vit_final_norm),
}


class StagedBody:
    """One body run stage by stage. Stage numbers: 0 embeddings, ``i + 1`` encoder layer ``i``,
    ``n_layers + 1`` everything after the last layer (final norm, pooler)."""

    def __init__(self, body: nn.Module, spec: StageSpec, layers: nn.ModuleList) -> None:
        self.body, self.spec, self.layers = body, spec, layers
        self._layer_key = re.compile(spec.layer_key)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def stage_of(self, key: str) -> int:
        """The stage a checkpoint name's weight is used in.

        >>> staged.stage_of("encoder.layer.1.attention.self.query.weight")  # doctest: +SKIP
        2
        """
        if key.startswith(self.spec.embed_prefix):
            return 0
        match = self._layer_key.match(key)
        if match:
            return int(match.group(1)) + 1
        return self.n_layers + 1

    def mask(self, hidden: torch.Tensor, inputs: Inputs) -> Any:
        """The attention mask the model's forward would pass its layers (None, or a 4-D mask);
        it depends only on the inputs and the hidden states' shape and dtype."""
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(
            config=self.body.config, inputs_embeds=hidden, attention_mask=inputs.get("attention_mask")
        )

    def embed(self, inputs: Inputs) -> tuple[torch.Tensor, Any]:
        """Stage 0: the embedding output and the layers' attention mask."""
        hidden = self.spec.embed(self.body, inputs)
        return hidden, self.mask(hidden, inputs)

    def layer(self, i: int, hidden: torch.Tensor, mask: Any) -> torch.Tensor:
        """Encoder layer ``i`` (stage ``i + 1``)."""
        return self.layers[i](hidden, mask)

    def features(self, hidden: torch.Tensor, pooling: str) -> torch.Tensor:
        """The last stage: what :meth:`TaskClassifier.features` returns for the last layer's output."""
        sequence = self.spec.final_norm(self.body, hidden)
        if pooling == "pooler":
            pooler = getattr(self.body, "pooler", None)
            if pooler is None:
                raise ModmergeError(f"{type(self.body).__name__}: pooling 'pooler' but the body has no pooler")
            return pooler(sequence)
        return sequence[:, 0]


def staged_body(body: nn.Module) -> StagedBody | None:
    """The staged view of ``body``, or None when its class has no :data:`STAGE_SPECS` entry or its
    structure does not fit the entry (callers then run the plain forward).

    >>> staged_body(transformers.BertModel(config)).n_layers  # doctest: +SKIP
    2
    """
    spec = STAGE_SPECS.get(type(body).__name__)
    if spec is None:
        return None
    layers: Any = body
    for name in spec.layers.split("."):
        layers = getattr(layers, name, None)
    config = getattr(body, "config", None)
    if (
        not isinstance(layers, nn.ModuleList) or config is None or getattr(config, "is_decoder", False)
        or len(layers) != getattr(config, "num_hidden_layers", -1)
    ):
        return None
    return StagedBody(body, spec, layers)


def load_partial_state(body: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` (checkpoint names, a subset of the body's) into ``body`` in place, leaving
    the other weights as they are: a forward resumed after layer k needs only the later weights.

    >>> load_partial_state(body, {"pooler.dense.bias": torch.zeros(8)})  # doctest: +SKIP
    """
    key_map = checkpoint_key_map(body)
    by_checkpoint = {checkpoint: module for module, checkpoint in key_map.items()}
    unexpected = [k for k in state if k not in by_checkpoint]
    if unexpected:
        raise ModmergeError(f"body state does not fit the model: unexpected {unexpected[:3]}")
    params = dict(body.state_dict(keep_vars=True))
    with torch.no_grad():
        for checkpoint, value in state.items():
            target = params[by_checkpoint[checkpoint]]
            if target.shape != value.shape:
                raise ModmergeError(f"body state '{checkpoint}': shape {tuple(value.shape)}, model has {tuple(target.shape)}")
            target.copy_(value)
