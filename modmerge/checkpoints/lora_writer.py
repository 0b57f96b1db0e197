"""``extract_lora``: a PEFT LoRA adapter from a base and a fine-tuned checkpoint.

Every changed weight of a linear (or GPT-2 ``Conv1D``) module becomes a rank-``r`` LoRA update
from the truncated SVD of its delta (:mod:`modmerge.checkpoints.lora_extract`). What LoRA cannot
carry is decided per kind, and the report says where each change went:

- embeddings that changed are saved whole in ``modules_to_save`` (``embeddings="save"``, the
  default), factorised like linear weights (``"lora"``, PEFT's ``lora_embedding_A/B``; an
  embedding tied to another module, such as GPT-2's ``wte`` and ``lm_head``, is saved all the
  same) or dropped (``"drop"``). A saved tied embedding brings its partners along, since PEFT
  copies modules, and a copy of ``wte`` alone would leave ``lm_head`` at the base weights;
- a changed bias of a LoRA target goes into ``lora_B.bias`` (PEFT's ``lora_bias=True``) when
  PEFT allows it: every target has a bias and no embedding is factorised. Otherwise it is dropped
  (and reported), as saving the module whole would undo the point of the adapter;
- any other module whose tensors changed (norms, convolutions, a ViT's class token) is saved
  whole; LoRA targets inside a saved module are saved with it. So are the heads PEFT's task
  wrappers save on their own (``classifier``/``score`` of a sequence or token classifier,
  ``qa_outputs``), changed or not, as loading fails without them. A changed tensor that belongs to
  no module PEFT can name (top-level, or unknown to the model class) is dropped.

Tensors are read one pair at a time; what stays in memory is the factors (the adapter's size)
and the bias deltas. The saved modules are read again when the file is written. Nothing appears
at the output until the adapter is complete.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modmerge.checkpoints.lora_extract import (
    CONV1D,
    EMBEDDING,
    LINEAR,
    LoraFactors,
    adapter_config,
    auto_saved_modules,
    is_within,
    lora_bias_key,
    lora_keys,
    module_kind_pattern,
    module_of,
    saved_key,
    truncated_svd,
    update_matrix,
)
from modmerge.checkpoints.module_map import ModuleMap, module_map_for
from modmerge.checkpoints.safetensors_io import StreamingSafetensorsWriter
from modmerge.checkpoints.source import Checkpoint, TensorInfo
from modmerge.checkpoints.validate import check_finite, validate_checkpoints
from modmerge.checkpoints.writer import check_output_directory, staged_directory
from modmerge.errors import ModmergeError

logger = logging.getLogger(__name__)

EMBEDDING_POLICIES = ("save", "lora", "drop")
FACTOR_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"


@dataclass(frozen=True)
class LoraExtractOptions:
    """How to extract: the largest ``rank``; with ``energy``, each module keeps the smallest rank
    whose singular values hold that fraction of its update's squared norm; ``embeddings``: save,
    lora or drop; ``dtype`` of the factors (``auto``: the base weight's); ``device`` for the SVD.

    >>> LoraExtractOptions(rank=0)
    Traceback (most recent call last):
    ...
    modmerge.errors.ModmergeError: rank must be a whole number of at least 1, got 0
    """

    rank: int = 16
    energy: float | None = None
    embeddings: str = "save"
    dtype: str = "auto"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ModmergeError(f"rank must be a whole number of at least 1, got {self.rank!r}")
        if self.energy is not None and not (0.0 < self.energy <= 1.0):
            raise ModmergeError(f"energy must be in (0, 1], got {self.energy!r}")
        if self.embeddings not in EMBEDDING_POLICIES:
            raise ModmergeError(f"embeddings must be one of {', '.join(EMBEDDING_POLICIES)}, got {self.embeddings!r}")
        if self.dtype != "auto" and self.dtype not in FACTOR_DTYPES:
            raise ModmergeError(f"dtype must be auto or one of {', '.join(FACTOR_DTYPES)}, got {self.dtype!r}")
        try:
            device = torch.device(self.device)
        except (RuntimeError, ValueError):
            raise ModmergeError(f"device {self.device!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModmergeError(f"device {self.device!r}: CUDA is not available here")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ModmergeError(f"device {self.device!r}: MPS is not available here")


@dataclass(frozen=True)
class ModuleFit:
    """One LoRA update: its rank, ``||delta||_F`` and ``||delta - B A||_F`` with the stored factors."""

    module: str
    kind: str
    rank: int
    delta_norm: float
    error: float

    @property
    def relative_error(self) -> float:
        return self.error / self.delta_norm if self.delta_norm > 0 else 0.0


@dataclass(frozen=True)
class KindSummary:
    """The fits of modules alike (``model.layers.*.self_attn.q_proj``): their count, ranks, the
    relative error of them all together (``sqrt(sum err^2 / sum ||delta||^2)``) and the worst one."""

    pattern: str
    modules: int
    ranks: tuple[int, int]
    relative_error: float
    worst_module: str
    worst_error: float


@dataclass
class ExtractionReport:
    """What :func:`extract_lora` wrote and where every change went."""

    out_dir: Path
    fits: list[ModuleFit]
    saved_modules: list[str]
    dropped: dict[str, str]
    lora_bias: bool
    adapter_bytes: int
    tuned_bytes: int
    unchanged: int
    note: str | None
    config: dict = field(default_factory=dict)

    def by_kind(self) -> list[KindSummary]:
        """One row per module pattern, worst relative error first."""
        groups: dict[str, list[ModuleFit]] = {}
        for fit in self.fits:
            groups.setdefault(module_kind_pattern(fit.module), []).append(fit)
        rows = []
        for pattern, fits in groups.items():
            total = sum(f.delta_norm**2 for f in fits)
            error = math.sqrt(sum(f.error**2 for f in fits) / total) if total > 0 else 0.0
            worst = max(fits, key=lambda f: f.relative_error)
            rows.append(KindSummary(pattern, len(fits), (min(f.rank for f in fits), max(f.rank for f in fits)),
                                    error, worst.module, worst.relative_error))
        return sorted(rows, key=lambda r: (-r.relative_error, r.pattern))

    def to_json(self) -> dict[str, object]:
        return {
            "out_dir": str(self.out_dir),
            "adapter_bytes": self.adapter_bytes,
            "tuned_bytes": self.tuned_bytes,
            "lora_bias": self.lora_bias,
            "unchanged_tensors": self.unchanged,
            "saved_modules": self.saved_modules,
            "dropped": self.dropped,
            "note": self.note,
            "modules": [
                {"module": f.module, "kind": f.kind, "rank": f.rank, "delta_norm": f.delta_norm,
                 "error": f.error, "relative_error": f.relative_error}
                for f in self.fits
            ],
        }


@dataclass
class _Update:
    kind: str
    factors: LoraFactors
    fit: ModuleFit


@dataclass
class _Plan:
    """What the reading pass found, before the decisions that need every module."""

    updates: dict[str, _Update] = field(default_factory=dict)
    weights: dict[str, tuple[tuple[int, ...], torch.dtype]] = field(default_factory=dict)  # (out, in), dtype
    biases: dict[str, torch.Tensor] = field(default_factory=dict)
    changed_biases: set[str] = field(default_factory=set)
    saved: set[str] = field(default_factory=set)
    dropped: dict[str, str] = field(default_factory=dict)
    unchanged: int = 0


def extract_lora(
    base: Checkpoint,
    tuned: Checkpoint,
    out_dir: str | Path,
    options: LoraExtractOptions,
    *,
    base_model: str | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ExtractionReport:
    """Write the PEFT LoRA adapter that takes ``base`` to ``tuned`` into ``out_dir``
    (``adapter_config.json`` naming ``base_model``, ``adapter_model.safetensors``).

    ``base`` and ``tuned`` must share keys and shapes (dtypes may differ); NaN/Inf values and a
    non-empty ``out_dir`` (unless ``overwrite``) are refused before anything is written.
    ``progress(key)`` is called once per tensor read.

    Example::

        >>> base, tuned = open_checkpoint("llama-base"), open_checkpoint("llama-chat")  # doctest: +SKIP
        >>> report = extract_lora(base, tuned, "out/chat-lora", LoraExtractOptions(rank=32))  # doctest: +SKIP
        >>> report.by_kind()[0].relative_error  # doctest: +SKIP
        0.41
    """
    out_dir = Path(out_dir)
    check_output_directory(out_dir, overwrite=overwrite)
    validate_checkpoints(base, [tuned], same_dtype=False)
    modules = module_map_for(base.config, {k: base.info(k).shape for k in base.keys()})
    plan = _read(base, tuned, modules, options, progress)
    heads = auto_saved_modules(modules.model_class, modules.modules)
    saved = _close_saved(plan.saved | heads, modules, base.keys())
    for module in [m for m in plan.updates if is_within(m, saved)]:
        del plan.updates[module]
    lora_bias = _settle_biases(plan, modules, saved, options)
    if not plan.updates:  # PEFT refuses a LoRA adapter that targets no module
        raise ModmergeError(
            f"{tuned.label}: no linear weight differs from {base.label}, so there is no LoRA update to extract"
        )
    saved_tensors = _saved_tensors(saved, modules, tuned)
    specs = _specs(plan, lora_bias, saved_tensors, tuned)
    config = adapter_config(
        ranks={m: u.factors.rank for m, u in plan.updates.items()},
        all_modules=modules.modules,
        modules_to_save=saved,
        base_model=base_model,
        model_class=modules.model_class,
        fan_in_fan_out=any(u.kind == CONV1D for u in plan.updates.values()),
        lora_bias=lora_bias,
    )
    with staged_directory(out_dir) as tmp:
        with StreamingSafetensorsWriter(tmp / ADAPTER_FILE, specs) as writer:
            for name, tensor in _adapter_tensors(plan, lora_bias, saved_tensors, tuned):
                writer.write(name, tensor.to(specs[name].dtype))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        adapter_bytes = (tmp / ADAPTER_FILE).stat().st_size
    return ExtractionReport(
        out_dir=out_dir,
        fits=[u.fit for u in plan.updates.values()],
        saved_modules=sorted(saved),
        dropped=dict(sorted(plan.dropped.items())),
        lora_bias=lora_bias,
        adapter_bytes=adapter_bytes,
        tuned_bytes=sum(tuned.info(k).nbytes for k in tuned.keys()),
        unchanged=plan.unchanged,
        note=modules.note,
        config=config,
    )


def _read(
    base: Checkpoint,
    tuned: Checkpoint,
    modules: ModuleMap,
    options: LoraExtractOptions,
    progress: Callable[[str], None] | None,
) -> _Plan:
    plan = _Plan()
    device = torch.device(options.device)
    for key in base.keys():
        b, t = base.get(key), tuned.get(key)
        check_finite(b, label=base.label, key=key)
        check_finite(t, label=tuned.label, key=key)
        delta = t.to(device, torch.float32) - b.to(device, torch.float32)
        changed = bool(delta.any())
        plan.unchanged += not changed
        _place(plan, key, delta, changed, b.dtype, modules, options)
        base.release(key)
        tuned.release(key)
        if progress is not None:
            progress(key)
    return plan


def _place(
    plan: _Plan,
    key: str,
    delta: torch.Tensor,
    changed: bool,
    dtype: torch.dtype,
    modules: ModuleMap,
    options: LoraExtractOptions,
) -> None:
    module, leaf = module_of(key), key.rpartition(".")[2]
    kind = modules.kind(key)
    matrix = leaf == "weight" and delta.dim() == 2
    if kind in (LINEAR, CONV1D) and matrix and key not in modules.tied:
        plan.weights[module] = (tuple(update_matrix(delta, kind).shape), dtype)
        if changed:
            plan.updates[module] = _fit(module, kind, update_matrix(delta, kind), dtype, options)
        return
    if kind in (LINEAR, CONV1D) and leaf == "bias" and delta.dim() == 1:
        plan.biases[module] = delta.cpu()
        if changed:
            plan.changed_biases.add(module)
        return
    if not changed:
        return
    if kind is None:
        plan.dropped[key] = f"not a tensor of {modules.model_class or 'the model'}"
    elif kind == EMBEDDING and matrix and options.embeddings == "drop":
        plan.dropped[key] = "embedding change (embeddings: drop)"
    elif kind == EMBEDDING and matrix and options.embeddings == "lora" and key not in modules.tied:
        plan.updates[module] = _fit(module, kind, update_matrix(delta, kind), dtype, options)
    elif module == "":
        plan.dropped[key] = "a top-level tensor: no module to save it in"
    else:
        plan.saved.add(module)


def _fit(module: str, kind: str, matrix: torch.Tensor, dtype: torch.dtype, options: LoraExtractOptions) -> _Update:
    factors = truncated_svd(matrix, options.rank, energy=options.energy)
    stored = _stored_dtype(options, dtype)
    a, b = factors.a.to(stored), factors.b.to(stored)
    error = float(torch.linalg.matrix_norm(matrix - b.to(torch.float32) @ a.to(torch.float32)))
    kept = LoraFactors(a=a.cpu(), b=b.cpu(), singular_values=factors.singular_values.cpu())
    return _Update(kind, kept, ModuleFit(module, kind, kept.rank, factors.delta_norm, error))


def _stored_dtype(options: LoraExtractOptions, weight_dtype: torch.dtype) -> torch.dtype:
    if options.dtype in FACTOR_DTYPES:
        return FACTOR_DTYPES[options.dtype]
    return weight_dtype if weight_dtype.is_floating_point else torch.float32


def _close_saved(saved: set[str], modules: ModuleMap, keys: list[str]) -> set[str]:
    """``saved`` with the modules of every tensor tied to one inside it, until nothing changes."""
    closed = set(saved)
    names = set(keys) | modules.tensors
    while True:
        more = {
            module_of(partner)
            for key in names
            if key in modules.tied and is_within(module_of(key), closed)
            for partner in modules.tied[key]
        } - closed
        if not more:
            return closed
        closed |= more


def _settle_biases(plan: _Plan, modules: ModuleMap, saved: set[str], options: LoraExtractOptions) -> bool:
    """Whether the adapter carries bias updates (``lora_bias``); drops the changes it cannot carry."""
    pending = {m for m in plan.changed_biases if not is_within(m, saved)}
    if not pending:
        return False
    targets = set(plan.updates) | pending
    has_embedding = any(u.kind == EMBEDDING for u in plan.updates.values())
    no_bias = sorted(m for m in targets if m not in plan.biases)
    no_weight = sorted(m for m in pending if m not in plan.weights)
    if not has_embedding and not no_bias and not no_weight:
        for module in sorted(pending - set(plan.updates)):  # a bias changed, its weight did not
            (out, inp), dtype = plan.weights[module]
            rank, stored, kind = min(options.rank, out, inp), _stored_dtype(options, dtype), modules.kinds[module]
            zeros = LoraFactors(a=torch.zeros(rank, inp, dtype=stored), b=torch.zeros(out, rank, dtype=stored),
                                singular_values=torch.zeros(rank))
            plan.updates[module] = _Update(kind, zeros, ModuleFit(module, kind, rank, 0.0, 0.0))
        return True
    if has_embedding:
        why = "PEFT's lora_bias does not work with embedding LoRA"
    elif no_bias:
        why = f"PEFT's lora_bias needs every target to have a bias; {no_bias[0]} has none"
    else:
        why = f"{no_weight[0]} has no weight of its own to hang a LoRA update on"
    for module in sorted(pending):
        plan.dropped[f"{module}.bias"] = f"bias change of a LoRA target ({why})"
    return False


def _saved_tensors(saved: set[str], modules: ModuleMap, tuned: Checkpoint) -> dict[str, str]:
    """Adapter name -> the tuned tensor it copies, for every tensor inside a saved module (a tied
    tensor the file lacks is read from the partner it holds)."""
    held = set(tuned.keys())
    out: dict[str, str] = {}
    for key in sorted(held | modules.tensors):
        if not is_within(module_of(key), saved):
            continue
        source = key if key in held else next((p for p in modules.tied.get(key, ()) if p in held), None)
        if source is not None:
            out[saved_key(key)] = source
    return out


def _specs(plan: _Plan, lora_bias: bool, saved_tensors: dict[str, str], tuned: Checkpoint) -> dict[str, TensorInfo]:
    specs: dict[str, TensorInfo] = {}
    for module, update in plan.updates.items():
        a_key, b_key = lora_keys(module, update.kind)
        specs[a_key] = TensorInfo(tuple(update.factors.a.shape), update.factors.a.dtype)
        specs[b_key] = TensorInfo(tuple(update.factors.b.shape), update.factors.b.dtype)
        if lora_bias:
            specs[lora_bias_key(module)] = TensorInfo((update.factors.b.shape[0],), update.factors.b.dtype)
    for name, source in saved_tensors.items():
        specs[name] = tuned.info(source)
    return specs


def _adapter_tensors(
    plan: _Plan, lora_bias: bool, saved_tensors: dict[str, str], tuned: Checkpoint
) -> Iterator[tuple[str, torch.Tensor]]:
    for module, update in plan.updates.items():
        a_key, b_key = lora_keys(module, update.kind)
        yield a_key, update.factors.a
        yield b_key, update.factors.b
        if lora_bias:
            yield lora_bias_key(module), plan.biases[module]
    for name, source in saved_tensors.items():
        yield name, tuned.get(source)
        tuned.release(source)
