"""A task model = a (possibly merged) body + the task's own head.

Heads are task-specific and never merged, as in the paper's language-model settings. The head
file holds ``classifier.weight`` (C x H) and ``classifier.bias`` (C); ``pooling`` says which body
output feeds it: ``"pooler"`` (BERT's pooler output; the pooler is a ``head`` component, so it
is taken from the task's own body) or ``"cls"`` (the first token of the last hidden state, ViT).

>>> body = load_body(zoo.root / "backbone")  # doctest: +SKIP
>>> model = TaskClassifier(body, head_from_state(zoo.task_head("mnist")), pooling="cls")  # doctest: +SKIP
>>> logits = model(pixel_values=images)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import transformers
from torch import nn

from modmerge.errors import ModmergeError
from modmerge.zoo.manifest import Pooling

HEAD_KEYS = ("classifier.weight", "classifier.bias")


def load_body(model_dir: Path, state: Mapping[str, torch.Tensor] | None = None) -> transformers.PreTrainedModel:
    """Build the body from ``model_dir``'s config; load ``state`` (default: the directory's weights)."""
    if state is None:
        body = transformers.AutoModel.from_pretrained(model_dir)
    else:
        config = transformers.AutoConfig.from_pretrained(model_dir)
        body = transformers.AutoModel.from_config(config)
        load_body_state(body, state)
    return body.eval()


def load_body_state(body: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``body`` in place; every body parameter must be given, nothing extra."""
    missing, unexpected = body.load_state_dict(dict(state), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModmergeError(f"body state does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def head_from_state(state: Mapping[str, torch.Tensor]) -> nn.Linear:
    """The classifier layer stored in a task's head file."""
    weight, bias = state[HEAD_KEYS[0]], state[HEAD_KEYS[1]]
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return head.eval()


def head_state(head: nn.Linear) -> dict[str, torch.Tensor]:
    return {HEAD_KEYS[0]: head.weight.detach().clone(), HEAD_KEYS[1]: head.bias.detach().clone()}


class TaskClassifier(nn.Module):
    """Body + head. ``features`` gives the pooled representation, ``forward`` the logits."""

    def __init__(self, body: nn.Module, head: nn.Linear, pooling: Pooling, dropout: float = 0.1) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)

    def features(self, **inputs: torch.Tensor) -> torch.Tensor:
        out = self.body(**inputs)
        if self.pooling == "pooler":
            return out.pooler_output
        return out.last_hidden_state[:, 0]

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(**inputs)))
