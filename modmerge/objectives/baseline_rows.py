"""The rows of `modmerge baselines`: what each row is, its fixed settings and its tuned parameters.

A row is one of five kinds: ``individual`` (the T fine-tuned bodies), ``pretrained`` (the
pretrained body with each task's head), ``static`` (a registry merge method, its parameters
tuned on validation over grids read from the registry's ``search`` ranges), ``adamerging``
(coefficients learned by entropy minimisation, :mod:`modmerge.objectives.adamerging`) and
``emr`` (EMR-Merging with oracle task labels, :mod:`modmerge.merging.emr`). This module only
describes rows (it loads no model), so the CLI can list them cheaply.

>>> [b.name for b in BASELINES if b.kind != "static"]
['Individual', 'Pretrained', 'AdaMerging (task-wise)', 'AdaMerging (layer-wise)', 'EMR-Merging']
>>> row("Task Arithmetic").grid(points=3)
[{'scaling': 0.1}, {'scaling': 0.55}, {'scaling': 1.0}]
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from modmerge.errors import ModmergeError
from modmerge.merging import get_method

Kind = Literal["individual", "pretrained", "static", "adamerging", "emr"]
# What a non-static row writes as its ``method`` in baselines.json (static rows: the registry name).
REPORTED_METHOD = {"adamerging": "adamerging", "emr": "emr_merging"}


@dataclass(frozen=True)
class Baseline:
    """A table row: a registry method with fixed settings and the parameters tuned on validation,
    or one of the rows that are not registry methods (``kind``, module doc)."""

    name: str
    method: str | None  # the registry method of a static row; None for the other kinds
    fixed: Mapping[str, Any] = field(default_factory=dict)
    tune: tuple[str, ...] = ()
    points: int = 4
    kind: Kind = "static"
    summary: str = ""

    def grid(self, points: int | None = None) -> list[dict[str, Any]]:
        """Parameter settings to try: an even grid over each tuned parameter's search range."""
        if self.method is None:
            return [dict(self.fixed)]
        method = get_method(self.method)
        axes = []
        for name in self.tune:
            spec = method.spec(name)
            lo, hi = spec.search or (spec.low, spec.high)
            values = np.linspace(float(lo), float(hi), points or self.points)
            axes.append([round(float(v), 4) for v in values])
        return [{**self.fixed, **dict(zip(self.tune, combo, strict=True))} for combo in itertools.product(*axes)]

    @property
    def reported_method(self) -> str | None:
        """The ``method`` field of the row in baselines.json."""
        return self.method if self.kind == "static" else REPORTED_METHOD.get(self.kind)

    def describe(self) -> str:
        """One line for `modmerge baselines --help`."""
        if self.summary or self.method is None:
            return self.summary
        return get_method(self.method).summary


BASELINES: tuple[Baseline, ...] = (
    Baseline("Individual", None, kind="individual", summary="each task's own fine-tuned body (C = T)."),
    Baseline("Pretrained", None, kind="pretrained", summary="the pretrained body with each task's head."),
    Baseline("Weight Averaging", "weight_averaging"),
    Baseline("Task Arithmetic", "task_arithmetic", tune=("scaling",), points=10),
    Baseline("TIES", "ties", fixed={"scope": "model"}, tune=("density", "scaling")),
    Baseline("Breadcrumbs", "breadcrumbs", tune=("density", "scaling")),
    Baseline("DARE (TA)", "dare", fixed={"consensus": "none"}, tune=("drop_rate", "scaling")),
    Baseline("DARE (TIES)", "dare", fixed={"consensus": "ties"}, tune=("drop_rate", "scaling")),
    Baseline("PCB", "pcb", tune=("drop_ratio", "scaling")),
    Baseline("Fisher", "fisher"),
    Baseline("RegMean", "regmean", tune=("alpha",)),
    Baseline("AdaMerging (task-wise)", None, {"granularity": "model"}, kind="adamerging",
             summary="task arithmetic with one coefficient per task, learned by minimising the entropy "
                     "of the predictions on unlabeled inputs (Yang et al., ICLR 2024)."),
    Baseline("AdaMerging (layer-wise)", None, {"granularity": "tensor"}, kind="adamerging",
             summary="AdaMerging with one coefficient per task and parameter tensor, as the authors' "
                     "layer-wise code."),
    Baseline("EMR-Merging", None, kind="emr",
             summary="unified task vector + a 1-bit mask and a rescaler per task (Huang et al., NeurIPS "
                     "2024); with oracle task labels (no router yet)."),
    # mergekit's methods; those defined on two models run only on two-task zoos
    Baseline("Breadcrumbs (TIES)", "breadcrumbs_ties", tune=("density", "lambda")),
    Baseline("DARE linear (mergekit)", "dare_linear", tune=("density", "lambda")),
    Baseline("DARE TIES (mergekit)", "dare_ties", tune=("density", "lambda")),
    Baseline("DELLA", "della", tune=("density", "lambda")),
    Baseline("DELLA (linear)", "della_linear", tune=("density", "lambda")),
    Baseline("SCE", "sce", tune=("select_topk",)),
    Baseline("Model Stock", "model_stock"),
    Baseline("Multi-SLERP", "multislerp"),
    Baseline("Karcher", "karcher"),
    Baseline("SLERP", "slerp", tune=("t",)),
    Baseline("NuSLERP", "nuslerp"),
    Baseline("NearSwap", "nearswap", tune=("t",)),
    Baseline("Arcee Fusion", "arcee_fusion"),
)


def row(name: str) -> Baseline:
    """The row called ``name``; a one-line error listing the rows otherwise."""
    for baseline in BASELINES:
        if baseline.name == name:
            return baseline
    raise ModmergeError(f"unknown baselines row {name!r} (rows: {', '.join(b.name for b in BASELINES)})")


def rows_epilog() -> str:
    """The row listing of `modmerge baselines --help`."""
    return "\b\nRows (--methods):\n" + "\n".join(f"  {b.name}: {b.describe()}" for b in BASELINES)
