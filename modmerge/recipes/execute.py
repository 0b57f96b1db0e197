"""Run a merge recipe: open and validate checkpoints, then merge and write tensor by tensor.

Only the current tensor of each of the T+1 checkpoints is resident (readers are lazy, zero-copy
views), and the output is streamed into safetensors shards, so peak memory stays near
(T+1) x the largest tensor plus the shard being written.

>>> result = run_recipe(load_recipe("examples/ties-bert.yaml"), Path("out/merged"))  # doctest: +SKIP
>>> result.tensors, result.seconds  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modmerge.checkpoints import (
    Checkpoint,
    TensorInfo,
    check_finite,
    open_checkpoint,
    validate_checkpoints,
    write_model_directory,
)
from modmerge.checkpoints.validate import count_nonfinite, is_finite
from modmerge.components import ComponentMap, decompose, detect_architecture, load_architecture
from modmerge.components.decompose import Rule as ComponentRule
from modmerge.errors import CheckpointError, RecipeError
from modmerge.merging.linear import linear_coefficients
from modmerge.merging.sparsify import kept_count, kth_largest
from modmerge.merging.statistics import load_statistics, statistics_norm
from modmerge.recipes.output_dir import MARKER, check_output_dir, marker_text
from modmerge.recipes.plan import MethodCall, plan_tensors
from modmerge.recipes.prefetch import prefetch
from modmerge.recipes.schema import MergeRecipe
from modmerge.recipes.task_models import body_view, split_task_models, write_task_models

ProgressFn = Callable[[str, int], None]
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class MergeResult:
    """What a merge did: where it wrote, how much it read, how long it took."""

    out_dir: Path
    tensors: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    methods: Counter[str] = field(default_factory=Counter)
    task_models: list[str] = field(default_factory=list)  # per-task model folders, when heads were kept

    def to_json(self) -> dict[str, object]:
        return {
            "out_dir": str(self.out_dir),
            "tensors": self.tensors,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "seconds": self.seconds,
            "methods": dict(self.methods),
            "task_models": self.task_models,
        }


def tensor_seed(seed: int, key: str) -> int:
    """A per-tensor seed: the same tensor gets the same random draws whatever the merge order."""
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63 - 1)


def component_map_for(recipe: MergeRecipe, base: Checkpoint) -> ComponentMap:
    """Decompose the base model's parameter names with the recipe's architecture and rules."""
    keys = base.keys()
    arch = (
        load_architecture(recipe.architecture)
        if recipe.architecture
        else detect_architecture(base.config, keys)
    )
    rules = [ComponentRule(pattern=r.pattern, kind=r.kind, stack=r.stack) for r in recipe.rules]
    return decompose(keys, arch, extra_rules=rules)


def merged_tensors(
    base: Checkpoint,
    models: Sequence[Checkpoint],
    plan: Mapping[str, MethodCall],
    *,
    weights: Sequence[float] | None = None,
    statistics: Sequence[Mapping[str, torch.Tensor]] | None = None,
    seed: int = 0,
    out_dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    result: MergeResult | None = None,
    thresholds: Mapping[MethodCall, Sequence[float]] | None = None,
    statistics_norms: Sequence[float] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, merged tensor)`` in the base's key order; the inputs and every merged tensor
    are checked for NaN/Inf (a :class:`CheckpointError` naming the tensor, and the file or the method).

    Methods that take ``stats_norms`` (Fisher normalised over the model) get ``statistics_norms``,
    one per model, or by default each model's statistics norm over every tensor of ``base``.
    """
    device = torch.device(device)
    norms = None if statistics_norms is None else list(statistics_norms)
    concatenated: dict[MethodCall, dict[str, torch.Tensor]] = {}
    for key in base.keys():
        call = plan[key]
        method = call.merge_method
        b = base.get(key)
        ts = [m.get(key) for m in models]
        kwargs = call.kwargs
        if weights is not None and "weights" in method.accepts:
            kwargs["weights"] = list(weights)
        # A linear merge with every coefficient nonzero carries any NaN/Inf of its inputs into its
        # output, so one scan of the output replaces T+1 scans of the inputs (a third of the
        # memory traffic of task arithmetic); the inputs are scanned only to name a culprit.
        linear = linear_coefficients(call.method, len(models), kwargs) if b.is_floating_point() else None
        deferred = linear is not None and all(c != 0.0 for c in linear[1])
        if not deferred or linear[0] == 0.0:
            check_finite(b, label=base.label, key=key)
        if not deferred:
            for m, t in zip(models, ts, strict=True):
                check_finite(t, label=m.label, key=key)
        if result is not None:
            result.bytes_read += b.nbytes + sum(t.nbytes for t in ts)
            result.methods[call.method] += 1
        if not b.is_floating_point():
            merged = b  # integer buffers (position ids, ...) are not weights: keep the base's
        else:
            if thresholds is not None and call in thresholds:
                kwargs["thresholds"] = list(thresholds[call])
            if method.randomized:
                kwargs["generator"] = torch.Generator(device=device).manual_seed(
                    tensor_seed(seed, key)
                )
            if method.needs and statistics is not None:
                per_model = [s.get(key) for s in statistics]
                kwargs["stats"] = (
                    None if any(s is None for s in per_model) else [s.to(device) for s in per_model]
                )
            if "stats_norms" in method.accepts and statistics is not None:
                if norms is None:
                    norms = [statistics_norm(s, base.keys()) for s in statistics]
                kwargs["stats_norms"] = norms
            if device.type != "cpu":
                b, ts = b.to(device), [t.to(device) for t in ts]
            if method.model_scope == "concatenate" and kwargs.get("scope") == "model":
                if call not in concatenated:
                    concatenated[call] = _concatenated_merge(base, models, plan, call, kwargs, device)
                merged = concatenated[call].pop(key)
            else:
                merged = method(b, ts, **kwargs).to("cpu")
        out = merged.to(out_dtype or base.info(key).dtype).contiguous()
        # Every method's output is scanned, after the cast: fewer bytes for half-precision
        # outputs, and a cast that overflows is caught too. Finite inputs can still give NaN/Inf
        # (an overflow, a division by a vanishing norm); a deferred scan names a bad input first.
        if not is_finite(out):
            if deferred:
                for checkpoint, tensor in zip((base, *models), (b, *ts), strict=True):
                    check_finite(tensor, label=checkpoint.label, key=key)
            n_nan, n_inf = count_nonfinite(out)
            raise CheckpointError(f"tensor '{key}': the merged values of method '{call.method}' are not finite "
                                  f"({n_nan} NaN, {n_inf} Inf in {out.dtype}; the inputs are finite)")
        del b, ts, merged
        yield key, out
        for checkpoint in (base, *models):
            checkpoint.release(key)


def _concatenated_merge(
    base: Checkpoint, models: Sequence[Checkpoint], plan: Mapping[str, MethodCall], call: MethodCall,
    kwargs: Mapping[str, object], device: torch.device,
) -> dict[str, torch.Tensor]:
    """Merge every floating tensor planned for ``call`` as one flattened vector per model (a
    method whose ``scope: model`` means the whole model at once, e.g. PCB), split back by key.
    Holds T + 2 float32 copies of those tensors: the price of scoring them together."""
    keys = [k for k in base.keys() if plan[k] == call and base.info(k).dtype.is_floating_point]

    def flat(checkpoint: Checkpoint) -> torch.Tensor:
        parts = [checkpoint.get(k).to(device, torch.float32).reshape(-1) for k in keys]
        for k in keys:
            checkpoint.release(k)
        return torch.cat(parts)

    merged = call.merge_method(flat(base), [flat(m) for m in models], **kwargs).to("cpu")
    out, start = {}, 0
    for k in keys:
        shape = tuple(base.info(k).shape)
        size = math.prod(shape)
        out[k] = merged[start : start + size].view(shape)
        start += size
    return out


def model_scope_thresholds(
    base: Checkpoint, models: Sequence[Checkpoint], plan: Mapping[str, MethodCall]
) -> dict[MethodCall, list[float]]:
    """Per-model trim thresholds for calls with ``scope: model`` (TIES' whole-model top-k).

    For each such call, the k-th largest ``|theta_t - theta_pre|`` over every tensor the call
    merges, found exactly in two streaming passes (:func:`kth_largest`), one model at a time.
    """
    groups: dict[MethodCall, list[str]] = {}
    for key, call in plan.items():
        wants = call.kwargs.get("scope") == "model" and "thresholds" in call.merge_method.accepts
        if wants and base.info(key).dtype.is_floating_point:
            groups.setdefault(call, []).append(key)
    found: dict[MethodCall, list[float]] = {}
    for call, keys in groups.items():
        n = sum(base.info(k).numel for k in keys)
        k = kept_count(float(call.kwargs["density"]), n, str(call.kwargs.get("count", "round")))
        found[call] = []
        for model in models:

            def magnitudes(model: Checkpoint = model, keys: list[str] = keys) -> Iterator[torch.Tensor]:
                for key in keys:
                    yield torch.sub(model.get(key).float(), base.get(key).float()).abs_().reshape(-1)
                    model.release(key)
                    base.release(key)

            found[call].append(math.inf if k == 0 else 0.0 if k == n else kth_largest(magnitudes, k, n))
    return found


def _load_statistics(
    recipe: MergeRecipe, plan: Mapping[str, MethodCall]
) -> list[dict[str, torch.Tensor]] | None:
    needing = sorted({c.method for c in plan.values() if c.merge_method.needs})
    if not needing:
        return None
    missing = [m.model for m in recipe.models if m.statistics is None]
    if missing:
        raise RecipeError(
            f"method {needing[0]} needs statistics: set models[].statistics for {missing[0]}"
        )
    return [load_statistics(m.statistics)[0] for m in recipe.models]  # type: ignore[arg-type]


def run_recipe(
    recipe: MergeRecipe,
    out_dir: str | Path,
    *,
    allow_pickle: bool = False,
    overwrite: bool = False,
    device: str = "cpu",
    progress: ProgressFn | None = None,
    on_total: Callable[[int], None] | None = None,
    body_only: bool = False,
    force: bool = False,
) -> MergeResult:
    """Merge the recipe's models into a Hugging Face model directory at ``out_dir``.

    Task models saved with their heads (``AutoModelFor...Classification``) over a bare base are
    merged body only; ``out_dir`` then holds one loadable model per task (the merged body with the
    task's own pooler and classifier), or with ``body_only`` the merged body alone
    (:mod:`modmerge.recipes.task_models`).

    Everything that can be checked before writing is checked first (output directory, recipe,
    checkpoints, components, statistics); the output appears atomically only when complete, with
    the ``modmerge.json`` marker that lets a later ``overwrite`` replace it. ``force`` replaces any
    directory (:func:`~modmerge.recipes.output_dir.check_output_dir`).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite=overwrite, force=force)
    overwrite = overwrite or force
    extra_files = {MARKER: marker_text()}
    result = MergeResult(out_dir=out_dir)
    with ExitStack() as stack:
        base = stack.enter_context(open_checkpoint(recipe.base_model, allow_pickle=allow_pickle))
        models = [
            stack.enter_context(open_checkpoint(m.model, allow_pickle=allow_pickle, base=base))
            for m in recipe.models
        ]
        tasks = split_task_models(base, models, component_map_for(recipe, base), [m.model for m in recipe.models])
        full_base = base
        if tasks is not None:  # merge the bodies; heads and poolers stay per task
            models = tasks.bodies()
            base = body_view(base, tasks.merged_keys)
            models = [body_view(m, tasks.merged_keys) for m in models]
        elif body_only:
            raise RecipeError("body_only: the models are bodies already (no task heads to leave out)")
        validate_checkpoints(base, models)
        plan = plan_tensors(recipe, base.keys(), component_map_for(recipe, base))
        statistics = _load_statistics(recipe, plan)
        thresholds = model_scope_thresholds(base, models, plan)
        out_dtype = _DTYPES.get(recipe.dtype)
        specs = {
            k: TensorInfo(base.info(k).shape, out_dtype or base.info(k).dtype) for k in base.keys()
        }
        if on_total is not None:
            on_total(len(specs))
        weights = [m.weight for m in recipe.models]
        stream = prefetch(
            merged_tensors(
                base,
                models,
                plan,
                weights=None if all(w == 1.0 for w in weights) else weights,
                statistics=statistics,
                seed=recipe.seed,
                out_dtype=out_dtype,
                device=device,
                result=result,
                thresholds=thresholds,
            )
        )
        source = base if recipe.tokenizer_source == "base" else models[recipe.tokenizer_source]
        config = _output_config(base, models, recipe.dtype)
        metadata = {"modmerge_recipe": json.dumps(recipe.model_dump(mode="json"))}
        if tasks is not None:
            write_task_models(out_dir, stream, specs, tasks, full_base, body_only=body_only, overwrite=overwrite,
                              metadata=metadata, max_shard_bytes=recipe.max_shard_size,
                              base_config=_output_config(full_base, [], recipe.dtype), progress=progress,
                              extra_files=extra_files)
            result.tensors = len(specs)
            result.bytes_written = sum(s.nbytes for s in specs.values())
            result.seconds = time.perf_counter() - started
            result.task_models = list(tasks.names)
            return result
        write_model_directory(
            out_dir,
            stream,
            specs,
            config=config,
            copy_files_from=source.directory
            or next((m.directory for m in models if m.directory), None),
            metadata={"modmerge_recipe": json.dumps(recipe.model_dump(mode="json"))},
            max_shard_bytes=recipe.max_shard_size,
            overwrite=overwrite,
            progress=progress,
            extra_files=extra_files,
        )
    result.tensors = len(specs)
    result.bytes_written = sum(s.nbytes for s in specs.values())
    result.seconds = time.perf_counter() - started
    return result


def _output_config(base: Checkpoint, models: Sequence[Checkpoint], dtype: str) -> dict | None:
    config = base.config or next((m.config for m in models if m.config), None)
    if config is None:
        return None
    config = dict(config)
    if dtype != "auto":
        for key in ("dtype", "torch_dtype"):
            if key in config:
                config[key] = dtype
    return config
