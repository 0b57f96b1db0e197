"""Export one assembled task model (a configuration's expert chain for a task + the task's head)
as a Hugging Face model directory.

When the task's head is exactly a transformers classification head the directory is that
class: a text task with ``pooler`` pooling is ``<Arch>ForSequenceClassification`` (pooler,
dropout, linear classifier, as BERT's), an image task with ``cls`` pooling is
``<Arch>ForImageClassification`` (linear classifier on the first token, as ViT's). The match is
not assumed: the filled model's logits are compared with the engine's assembled model on a
probe input before anything is written. Otherwise (e.g. BERT with ``cls`` pooling, which no
transformers class computes) the body is saved as the base model (``AutoModel`` loads it) and
the head as ``modmerge_head.safetensors``, with ``config.json["modmerge_head"]`` saying how to
apply it. Tokenizer / image-processor files are copied from the library's backbone directory.

Example::

    >>> export_model(Library.open("lib"), "c3", "mnist", Path("out/mnist-c3"))        # doctest: +SKIP
    ExportResult(out_dir=PosixPath('out/mnist-c3'), architecture='ViTForImageClassification', ...)
    >>> transformers.AutoModelForImageClassification.from_pretrained("out/mnist-c3")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import save_file
from torch import nn

from modmerge.atomic import remove_dead_staging, staging_dir
from modmerge.checkpoints.source import TensorInfo
from modmerge.checkpoints.writer import move_into_place, write_model_directory
from modmerge.errors import ModmergeError
from modmerge.recipes.output_dir import MARKER, check_output_dir, marker_text
from modmerge.reuse.assembly import POOLER_PREFIX, assemble_body
from modmerge.reuse.engine import ReuseEngine
from modmerge.tasks.models import body_from_config, body_state, load_body_state

HEAD_FILE = "modmerge_head.safetensors"
AUTO_CLASSES = {("text", "pooler"): transformers.AutoModelForSequenceClassification,
                ("image", "cls"): transformers.AutoModelForImageClassification}


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    architecture: str  # the transformers class config.json names
    exact: bool  # True: a transformers classification class; False: base model + modmerge_head
    chain: str
    tensors: int


def export_model(
    library: Any, config_id: str, task: str, out_dir: Path, *, overwrite: bool = False, force: bool = False,
    source: Any = None,
) -> ExportResult:
    """Write ``task``'s assembled model under configuration ``config_id`` to ``out_dir`` (atomic).

    ``out_dir`` gets ``modmerge.json`` (written by ``modmerge export``); a non-empty ``out_dir`` is
    replaced only with ``overwrite`` when an earlier merge or export wrote it, or with ``force``.

    >>> export_model(lib, "c0", "has_animal", tmp_path / "m").architecture  # doctest: +SKIP
    'BertForSequenceClassification'
    """
    engine = ReuseEngine(library, config_id=config_id, source=source)
    engine._check_task(task, "task")
    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite=overwrite, force=force)
    entry, chain_id = engine.tasks[task], engine.chain_of(task)
    body, head = assemble_body(engine.library, chain_id), engine._head(task)
    backbone_dir = Path(engine.library.backbone_dir)
    config = transformers.AutoConfig.from_pretrained(backbone_dir)
    labels = list(getattr(entry, "labels", None) or [])
    config.num_labels = int(getattr(entry, "num_labels", 0) or head.classifier.out_features)
    if len(labels) == config.num_labels:
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
    probe = _probe(engine)
    with torch.inference_mode():
        expected = head(body(**probe).last_hidden_state)
    model = _exact_model(config, entry, body, head, probe, expected)
    if model is not None:
        state = body_state(model)
        _write(out_dir, state, model.config, backbone_dir, True)
        return ExportResult(out_dir, type(model).__name__, True, chain_id, len(state))
    # no transformers class computes this head: the base model, plus the head beside it
    base = body_from_config(backbone_dir)
    base_state = {**body_state(body), **{k: v for k, v in _head_body_keys(head).items()}}
    missing = [k for k in body_state(base) if k not in base_state]
    if missing:  # a pooler the task does not use: keep the backbone layout, weights unused
        base.pooler = None
    load_body_state(base, base_state)
    base.config.modmerge_head = {"file": HEAD_FILE, "pooling": entry.pooling, "task": task,
                                 "note": "logits = classifier(" + ("pooler_output" if entry.pooling == "pooler"
                                                                   else "last_hidden_state[:, 0]") + ")"}
    head_tensors = {f"classifier.{k}": v.detach().contiguous() for k, v in head.classifier.state_dict().items()}
    remove_dead_staging(out_dir)
    staging = staging_dir(out_dir)
    try:
        _write(staging, body_state(base), base.config, backbone_dir, True)
        save_file(head_tensors, str(staging / HEAD_FILE), metadata={"pooling": entry.pooling, "task": task})
        move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out_dir, type(base).__name__, False, chain_id, len(base_state) + len(head_tensors))


def _exact_model(
    config: Any, entry: Any, body: nn.Module, head: nn.Module, probe: dict[str, torch.Tensor], expected: torch.Tensor,
) -> nn.Module | None:
    auto = AUTO_CLASSES.get((entry.modality, entry.pooling))
    if auto is None:
        return None
    try:
        with torch.random.fork_rng(devices=[]):
            model = auto.from_config(config)
    except ValueError:  # the architecture has no such class
        return None
    model.config.architectures = [type(model).__name__]
    prefix = f"{model.base_model_prefix}."
    state = {prefix + k: v for k, v in body_state(body).items()}
    state.update({prefix + k: v for k, v in _head_body_keys(head).items()})
    state.update({f"classifier.{k}": v for k, v in head.classifier.state_dict().items()})
    try:
        load_body_state(model, state)
    except ModmergeError:
        return None
    with torch.inference_mode():
        logits = model.eval()(**probe).logits
    return model if torch.allclose(logits, expected, atol=1e-5, rtol=1e-5) else None


def _head_body_keys(head: nn.Module) -> dict[str, torch.Tensor]:
    """The head's pooler under the body's checkpoint names (``pooler.dense.weight``)."""
    pooler = getattr(head, "pooler", None)
    return {} if pooler is None else {POOLER_PREFIX + k: v for k, v in pooler.state_dict().items()}


def _probe(engine: ReuseEngine) -> dict[str, torch.Tensor]:
    """A small deterministic model input to check an export computes what the engine computes."""
    gen = torch.Generator().manual_seed(0)
    if engine.modality == "image":
        return {"pixel_values": torch.rand(2, 1, *engine.image_size, generator=gen) * 2 - 1}
    vocab = int(getattr(engine.tokenizer, "vocab_size", 100))
    ids = torch.randint(0, vocab, (2, 12), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _write(out_dir: Path, state: dict[str, torch.Tensor], config: Any, backbone_dir: Path, overwrite: bool) -> None:
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    specs = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in tensors.items()}
    write_model_directory(out_dir, tensors.items(), specs, config=json.loads(config.to_json_string()),
                          copy_files_from=backbone_dir, overwrite=overwrite,
                          extra_files={MARKER: marker_text("modmerge export")})
