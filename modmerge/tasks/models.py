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

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from modmerge.checkpoints import open_checkpoint
from modmerge.components import decompose, detect_architecture
from modmerge.errors import ModmergeError
from modmerge.tasks.spec import Pooling

HEAD_KEYS = ("classifier.weight", "classifier.bias")


def body_from_config(
    model_dir: Path, keys: Collection[str] | None = None, *, layers: int | None = None
) -> transformers.PreTrainedModel:
    """An (unfilled) body built from ``model_dir``'s config, in eval mode.

    ``AutoModel`` always adds a pooler to BERT and ViT; when ``keys`` (the checkpoint's names) hold
    no ``pooler.*`` the body was saved without one (ViT with ``add_pooling_layer=False``), so it is
    dropped. Random initialisation runs in a forked RNG, leaving the caller's RNG untouched. The
    body is float32 whatever the config's ``dtype`` says: a bfloat16 checkpoint's values load into
    it exactly and meet the (float32) task heads; lower-precision forwards are the task pool's
    ``precision`` setting.

    ``layers`` (0 .. the config's ``num_hidden_layers``) builds the body truncated to its first
    encoder layers: embeddings, layers ``0 .. layers - 1``, then whatever the full model applies
    after its last layer (ViT's final layernorm, the pooler), as ``num_hidden_layers=layers``
    (0: the embeddings alone).

    >>> body_from_config(zoo.root / "backbone", layers=2).config.num_hidden_layers  # doctest: +SKIP
    2
    """
    config = transformers.AutoConfig.from_pretrained(model_dir)
    if layers is not None:
        total = int(config.num_hidden_layers)
        if isinstance(layers, bool) or not isinstance(layers, int) or not 0 <= layers <= total:
            raise ModmergeError(f"{model_dir}: cannot keep {layers!r} encoder layers of {total}")
        config = transformers.AutoConfig.from_pretrained(model_dir, num_hidden_layers=layers)
    with torch.random.fork_rng(devices=[]):
        body = transformers.AutoModel.from_config(config, dtype=torch.float32)
    if keys is not None and getattr(body, "pooler", None) is not None and not any(k.startswith("pooler.") for k in keys):
        body.pooler = None
    return body.eval()


def body_keys_of(model_dir: Path) -> list[str]:
    """The checkpoint names of the bare body ``AutoModel`` builds from ``model_dir``'s config (built
    on the meta device: no memory, no weights read), buffers such as ``position_ids`` left out.

    >>> body_keys_of(Path("bert-base"))[:1]  # doctest: +SKIP
    ['embeddings.word_embeddings.weight']
    """
    config = transformers.AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        body = transformers.AutoModel.from_config(config)
    parameters = {name for name, _ in body.named_parameters()}
    return [checkpoint for module, checkpoint in checkpoint_key_map(body).items() if module in parameters]


def load_body(
    model_dir: Path, state: Mapping[str, torch.Tensor] | None = None, *, layers: int | None = None
) -> transformers.PreTrainedModel:
    """Build the body from ``model_dir``'s config; load ``state`` (default: the directory's weights).

    Built from the config and filled with :func:`load_body_state` rather than ``from_pretrained``,
    so loading is strict (every parameter given) and prints no progress bar. With ``layers`` the
    body is truncated (see :func:`body_from_config`) and the weights of the encoder layers it
    does not have are left out of ``state``; everything else must still fit.

    >>> shallow = load_body(zoo.root / "backbone", layers=1)  # doctest: +SKIP
    """
    if state is None:
        with open_checkpoint(model_dir) as ckpt:
            state = {k: ckpt.get(k) for k in ckpt.keys()}
    body = body_from_config(model_dir, list(state), layers=layers)
    if layers is not None:
        state = first_layers(state, body.config, layers)
    load_body_state(body, state)
    return body.eval()


def first_layers(state: Mapping[str, torch.Tensor], config: Any, layers: int) -> dict[str, torch.Tensor]:
    """``state`` without the tensors of encoder layers ``layers`` and deeper: the weights a body
    truncated by :func:`body_from_config` holds (see :func:`first_layer_keys`)."""
    return {k: state[k] for k in first_layer_keys(list(state), config, layers)}


def first_layer_keys(keys: Sequence[str], config: Any, layers: int) -> list[str]:
    """The parameter names of ``keys`` outside encoder layers ``layers`` and deeper (layer
    indices come from the architecture's data file, the same map the merges use), so a caller
    can read just those tensors from a checkpoint.

    >>> first_layer_keys(ckpt.keys(), transformers.AutoConfig.from_pretrained(model_dir), 1)  # doctest: +SKIP
    """
    cmap = decompose(list(keys), detect_architecture(config.to_dict(), list(keys)))
    return [k for k in keys if (layer := cmap.component_of(k).layer) is None or layer < layers]


def checkpoint_key_map(body: nn.Module) -> dict[str, str]:
    """Module parameter name -> the name a checkpoint stores it under (computed once per body).

    transformers 5 renames some modules in memory (ViT: ``layers.0.attention.q_proj``) but reads
    and writes the classic checkpoint names (``encoder.layer.0.attention.attention.query``); zoo
    files, merges and component maps all use the checkpoint names. Identity for transformers 4
    and for models without a conversion (BERT). Only pure renamings are supported.
    """
    cached = body.__dict__.get("_modmerge_key_map")
    if cached is not None:
        return cached
    state = body.state_dict()
    mapping = {k: k for k in state}
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4.x: checkpoints use the module names
        revert_weight_conversion = None
    if revert_weight_conversion is not None and isinstance(body, transformers.PreTrainedModel):
        by_identity = {id(v): k for k, v in state.items()}
        reverted = revert_weight_conversion(body, dict(state))
        if len(reverted) != len(state) or any(id(v) not in by_identity for v in reverted.values()):
            raise ModmergeError(f"{type(body).__name__}: its checkpoint conversion is not a pure renaming; unsupported")
        mapping = {by_identity[id(v)]: k for k, v in reverted.items()}
    body.__dict__["_modmerge_key_map"] = mapping
    return mapping


def body_state(body: nn.Module) -> dict[str, torch.Tensor]:
    """The body's weights under checkpoint names (what ``save_pretrained`` would write), not copied."""
    state = body.state_dict()
    return {checkpoint: state[module] for module, checkpoint in checkpoint_key_map(body).items()}


def load_body_state(body: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` (checkpoint names, see :func:`checkpoint_key_map`) into ``body`` in place;
    every body parameter must be given, nothing extra."""
    key_map = checkpoint_key_map(body)
    renamed = {module: state[checkpoint] for module, checkpoint in key_map.items() if checkpoint in state}
    known = set(key_map.values())
    unexpected = [k for k in state if k not in known]
    missing, _ = body.load_state_dict(renamed, strict=False)
    missing = [key_map.get(k, k) for k in missing if not k.endswith("position_ids")]
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
