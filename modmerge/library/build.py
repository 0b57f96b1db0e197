"""`modmerge library build RUN_DIR LIB_DIR`: store every Pareto configuration's modular experts once.

The modules are rebuilt from the task source (a suite or a zoo) with the search's own :class:`MergeProblem` (same method
F, parameters, quantisation Q, granularity and seed), so each configuration's rebuilt storage cost
must equal the one in ``pareto.json``; a difference means the models changed since the search.

Everything is written into a hidden sibling of ``LIB_DIR`` first, ``manifest.json`` last, and
then swapped in by renames, so a failed or killed build leaves the previous library (or none),
never a half-written one.

>>> lib = build_library(Path("runs/vision-ta"), Path("libs/vision-ta"))  # doctest: +SKIP
>>> [c.id for c in lib.configurations][:2]  # doctest: +SKIP
['c0', 'c1']
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from modmerge.atomic import remove_dead_staging, staging_dir, write_text
from modmerge.checkpoints.writer import COPY_PATTERNS, copy_support_files, move_into_place
from modmerge.errors import ModmergeError, validation_line
from modmerge.experts.grouping import GroupingMatrix
from modmerge.experts.modules import Module, ModuleKey
from modmerge.library.blobs import write_blob
from modmerge.library.manifest import (
    ConfigEntry,
    LibraryError,
    LibraryManifest,
    ModuleEntry,
    RouterEntry,
    TaskInfo,
    chain_id,
)
from modmerge.library.store import Library
from modmerge.objectives.performance import chain
from modmerge.objectives.problem import MergeProblem
from modmerge.run_files import ParetoFile, RunFileError, SolutionEntry, read_pareto_file
from modmerge.search.driver import source_problem
from modmerge.search.recipe import SearchRecipe
from modmerge.tasks.source import TaskSource, entries
from modmerge.tasks.taskpool import head_kind_keys, max_length

logger = logging.getLogger(__name__)

# progress(done, total, what): called after each module is stored.
Progress = Callable[[int, int, str], None]
RouterWeights = tuple[Mapping[str, torch.Tensor], Mapping[str, Any]]
_COST_RTOL = 1e-9
_BACKBONE_FILES = ("config.json", *COPY_PATTERNS)


def build_library(
    run_dir: str | Path,
    lib_dir: str | Path,
    *,
    source: TaskSource,
    router: RouterWeights | None = None,
    progress: Progress | None = None,
) -> Library:
    """Build (or atomically replace) the expert library ``lib_dir`` from the search run ``run_dir``.
    Only an absent or empty ``lib_dir``, or an expert library, may be the target
    (:func:`check_library_target`).

    ``router`` is ``(Router.to_state(), RouterConfig.to_dict())``, optionally with a
    ``test_accuracy`` entry in the dict: it goes to ``manifest.router.test_accuracy``, not into the
    stored config. ``progress(done, total, what)`` is called once per stored module.

    ``source`` is the task source the search ran on (:func:`run_source` says which: the CLI
    opens it): modules are rebuilt from its models, heads and poolers are stored from them.

    >>> lib = build_library("runs/tiny", "libs/tiny", source=open_suite("suite.yaml"))  # doctest: +SKIP
    >>> lib.select(0.5).id  # doctest: +SKIP
    'c1'
    """
    run_dir, lib_dir = Path(run_dir), Path(lib_dir)
    check_library_target(lib_dir)
    payload = _read_pareto(run_dir / "pareto.json")
    remove_dead_staging(lib_dir)
    staging = staging_dir(lib_dir)
    try:
        manifest = _build_into(staging, run_dir, payload, source, router, progress)
        _write_manifest(staging, manifest)
        _swap_in(staging, lib_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Library.open(lib_dir)


def _build_into(
    staging: Path, run_dir: Path, payload: ParetoFile, source: TaskSource, router: RouterWeights | None,
    progress: Progress | None,
) -> LibraryManifest:
    where = run_dir / "pareto.json"
    try:
        # The search ran on whatever device it had; module values do not depend on it.
        fields = dict(payload.recipe)
        if fields.get("suite") is not None or fields.get("zoo") is not None:
            fields["device"] = "cpu"
        recipe = SearchRecipe.model_validate(fields)
    except ValidationError as err:
        raise LibraryError(f"{where}: recipe: {validation_line(err)}") from None
    if not recipe.has_source:
        raise LibraryError(f"{where}: the search scored evaluator callables, whose data a library cannot reach; "
                           "search on a task suite (suite:) to build a library")
    if payload.tasks != source.tasks:
        raise LibraryError(f"{where}: tasks {payload.tasks} differ from '{source.name}' tasks {source.tasks}")
    randomized = recipe.call().merge_method.randomized
    configs = _distinct_configurations(payload, randomized, where)
    problems: dict[int, MergeProblem] = {}
    for seed, _, _ in configs:
        if seed not in problems:
            # The search's own construction, so modules come out bit-identical.
            problems[seed] = source_problem(recipe, source, seed)
    first = next(iter(problems.values()))
    if payload.units != first.unit_ids:
        raise LibraryError(f"{where}: units differ from '{source.name}' (its models or their architecture changed)")
    blobs = staging / "blobs"
    blobs.mkdir()
    wanted = {(seed, k) for seed, g, _ in configs for t in range(first.n_tasks) for k in chain(g, t, first.unit_ids)}
    stored: dict[tuple[int, ModuleKey], str] = {}
    modules: dict[str, ModuleEntry] = {}
    chains: dict[str, list[str]] = {}
    configurations: list[ConfigEntry] = []
    for seed, g, sol in configs:
        problem = problems[seed]
        _check_cost(problem, g, sol.storage_cost, where)
        per_task: dict[str, str] = {}
        for t, task in enumerate(problem.task_names):
            hashes = []
            for key in chain(g, t, problem.unit_ids):
                if (seed, key) not in stored:
                    stored[(seed, key)] = _store_module(blobs, problem.builder.module(key), modules)
                    if progress is not None:
                        progress(len(stored), len(wanted), key.id)
                hashes.append(stored[(seed, key)])
            cid = chain_id(hashes)
            chains[cid] = hashes
            per_task[task] = cid
        used = sorted({h for cid in per_task.values() for h in chains[cid]})
        configurations.append(ConfigEntry(
            id="", grouping=g.to_list(), storage_cost=sol.storage_cost, validation=sol.validation.model_dump(),
            test=None if sol.test is None else sol.test.model_dump(), seed=seed, chains=per_task, modules=used,
        ))
    configurations.sort(key=lambda c: (c.storage_cost, -float(c.validation.get("mean", 0.0))))
    for i, entry in enumerate(configurations):
        entry.id = f"c{i}"
    _copy_backbone(source, staging / "backbone")
    return LibraryManifest(
        zoo=source.name,
        source=source.describe(),
        backbone=source.backbone_info,
        tasks=_store_heads(source, blobs),
        units=first.unit_ids,
        unit_keys={u: list(keys) for u, keys in first.units.items()},
        method={"name": recipe.method, "parameters": dict(recipe.parameters)},
        quantization=recipe.quant().to_dict(),
        granularity=recipe.granularity,
        body_parameters=first.body_parameters,
        pretrained_body_bits=first.full_bits * first.body_parameters,
        configurations=configurations,
        chains=chains,
        modules=modules,
        router=None if router is None else _store_router(blobs, router, source),
    )


def run_source(run_dir: str | Path) -> dict[str, Any]:
    """The task source a search run directory was made on, as :meth:`TaskSource.describe` gave it
    (validated like a build reads it; runs from before suites name their zoo only).

    >>> run_source("runs/vision-ta")  # doctest: +SKIP
    {'zoo': 'vision', 'store': '/root/.cache/modmerge'}
    """
    payload = _read_pareto(Path(run_dir) / "pareto.json")
    return dict(payload.source or {"zoo": payload.zoo})


def _read_pareto(path: Path) -> ParetoFile:
    try:
        payload = read_pareto_file(path)
    except RunFileError as err:
        raise LibraryError(str(err)) from None
    if not payload.zoo and not payload.source:
        raise LibraryError(f"{path}: the run has no task suite or zoo (a search on evaluator callables has no task "
                           "heads or data to store; run it on a task suite to build a library)")
    return payload


def _distinct_configurations(
    payload: ParetoFile, randomized: bool, source: Path,
) -> list[tuple[int, GroupingMatrix, SolutionEntry]]:
    """(builder seed, grouping, solution) of every Pareto solution of every run, equal groupings once.

    A deterministic method F gives equal modules whatever the run's seed, so equal grouping
    matrices are one configuration; a randomized F (DARE) gives seed-dependent modules.
    """
    seen: set[tuple[int, GroupingMatrix]] = set()
    out = []
    first_seed = None
    for r, run in enumerate(payload.runs):
        seed = run.seed
        first_seed = seed if first_seed is None else first_seed
        builder_seed = seed if randomized else first_seed
        for s, sol in enumerate(run.solutions):
            try:
                g = GroupingMatrix.from_array(sol.grouping)
            except (TypeError, ValueError, ModmergeError) as err:
                raise LibraryError(f"{source}: runs[{r}].solutions[{s}] is malformed ({err})") from None
            if (builder_seed, g) not in seen:
                seen.add((builder_seed, g))
                out.append((builder_seed, g, sol))
    if not out:
        raise LibraryError(f"{source}: no Pareto solutions in any run")
    return out


def _check_cost(problem: MergeProblem, g: GroupingMatrix, recorded: float, source: Path) -> None:
    rebuilt = problem.storage_cost(g)
    if abs(rebuilt - recorded) > _COST_RTOL * max(abs(recorded), 1e-30):
        raise LibraryError(
            f"{source}: configuration {g.key()} rebuilds with storage cost {rebuilt!r}, pareto.json says "
            f"{recorded!r} ('{problem.label}' changed since the search?)"
        )


def _store_module(blobs: Path, module: Module, modules: dict[str, ModuleEntry]) -> str:
    state: dict[str, torch.Tensor] = {}
    dtypes: dict[str, str] = {}
    quantised = 0
    for name, tensor in module.tensors.items():
        state.update(tensor.to_state(prefix=name))
        codes = None if tensor.quantized_part is None else tensor.quantized_part.codes
        parts = [p for p in (codes, tensor.full_part) if p is not None]
        dtypes[name] = "+".join(str(p.dtype).removeprefix("torch.") for p in parts)
        quantised += int(tensor.quantised.sum())
    digest, nbytes = write_blob(blobs, state)
    members = list(module.key.members)
    if digest in modules:
        # Equal bytes from another group of the same unit (e.g. units no fine-tuning changed).
        if members not in modules[digest].members:
            modules[digest].members.append(members)
    else:
        modules[digest] = ModuleEntry(unit=module.key.unit, members=[members], bytes=nbytes, dtypes=dtypes,
                                      quantised_units=quantised, tensors=list(module.tensors))
    return digest


def _store_heads(source: TaskSource, blobs: Path) -> list[TaskInfo]:
    """One blob per task head: the classifier plus the body's head-kind keys (BERT's pooler),
    which belong to each task and are never merged."""
    pooler_keys = head_kind_keys(source)
    out = []
    for entry in entries(source):
        head = dict(source.task_head(entry.name))
        if pooler_keys:
            with source.task_body(entry.name) as body:
                head.update({k: body.get(k).clone() for k in pooler_keys if k in body.keys()})
        digest, nbytes = write_blob(blobs, head)
        out.append(TaskInfo(
            name=entry.name, modality=entry.modality, metric=entry.metric,
            num_labels=int(head["classifier.weight"].shape[0]) if "classifier.weight" in head else len(entry.label_names),
            pooling=entry.pooling, max_length=max_length(entry),
            labels=list(entry.label_names), head=digest, head_bytes=nbytes,
        ))
    return out


def _store_router(blobs: Path, router: RouterWeights, source: TaskSource) -> RouterEntry:
    """The router's weights, and the pretrained body it reads features from (full precision, cut
    to the router's ``feature_layers``): routing an input needs that body, and a library must
    route without the zoo beside it."""
    state, config = router
    config = dict(config)
    accuracy = config.pop("test_accuracy", None)
    report = config.pop("report", None) or {}
    digest, nbytes = write_blob(blobs, state)
    with source.backbone() as ckpt:
        backbone = {k: ckpt.get(k).clone() for k in ckpt.keys()}
    layers = config.get("feature_layers")
    if layers is not None:  # a router that reads k layers needs only the body cut there
        import transformers

        from modmerge.tasks.models import first_layers

        backbone_config = transformers.AutoConfig.from_pretrained(source.backbone_dir)
        backbone = first_layers(backbone, backbone_config, layers)
    backbone_digest, backbone_bytes = write_blob(blobs, backbone)
    return RouterEntry(blob=digest, bytes=nbytes, config=config, report=dict(report),
                       test_accuracy=None if accuracy is None else float(accuracy),
                       backbone_blob=backbone_digest, backbone_bytes=backbone_bytes)


def _copy_backbone(source: TaskSource, out: Path) -> None:
    """The backbone's config and tokenizer/processor files, no weights: enough to build an empty body.
    Only files that really live in the backbone's directory (no symlink out of it) are copied."""
    src = source.backbone_dir
    out.mkdir()
    copy_support_files(src, out, _BACKBONE_FILES)
    if not (out / "config.json").exists():
        raise LibraryError(f"{src}: backbone has no config.json")


def _write_manifest(staging: Path, manifest: LibraryManifest) -> None:
    write_text(staging / "manifest.json", manifest.model_dump_json(indent=2))


def check_library_target(lib_dir: str | Path) -> None:
    """Raise :class:`LibraryError` unless a build may put a library at ``lib_dir``: it is absent,
    an empty directory, or an expert library (its ``manifest.json`` a regular file that opens as
    a library manifest). Anything else (a zoo, a model, a user's files) is never replaced, even
    when it holds a file named ``manifest.json``.

    >>> check_library_target("zoos/tiny")  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    modmerge.library.manifest.LibraryError: zoos/tiny: not replaced: it is not empty and not an expert library (...)
    """
    lib_dir = Path(lib_dir)
    if not lib_dir.exists() and not lib_dir.is_symlink():
        return
    if not lib_dir.is_dir():
        raise LibraryError(f"{lib_dir}: not replaced: it exists and is not a directory")
    if not any(lib_dir.iterdir()):
        return
    try:
        Library.open(lib_dir)
    except LibraryError as err:
        raise LibraryError(f"{lib_dir}: not replaced: it is not empty and not an expert library ({err}); "
                           "remove it or build elsewhere") from None


def _swap_in(staging: Path, lib_dir: Path) -> None:
    """Rename the finished library into place; an old one is renamed aside first, then removed.
    ``lib_dir`` is checked again (it was before the build): it may have changed meanwhile."""
    check_library_target(lib_dir)
    move_into_place(staging, lib_dir)
