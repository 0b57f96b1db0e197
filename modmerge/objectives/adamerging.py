"""AdaMerging: task-arithmetic coefficients learned by entropy minimisation on unlabeled inputs.

Yang et al., 'AdaMerging: Adaptive Model Merging for Multi-Task Learning', ICLR 2024,
arXiv:2310.02575. The merged body is

    theta(lambda) = theta_0 + sum_t lambda_{t,u(k)} * tau_t[k]      for every body tensor k,

with one coefficient per task (``granularity="model"``: task-wise AdaMerging) or one per task
and unit ``u`` (layer-wise). The authors' layer-wise code keeps one coefficient per parameter
tensor (``"tensor"``, the default of the layer-wise row); ``"layer"`` and ``"component"`` use
modmerge's units instead. Every task keeps its own head, fixed.

The coefficients minimise ``sum_t mean_x H(softmax(f_t(x; theta(lambda))))``, the Shannon
entropy of each task's predictions on unlabeled inputs of that task, with Adam (betas 0.9,
0.999, no weight decay); each step draws a fresh batch per task. As in the authors' code the
coefficients start at the prior 0.3 and are clamped to [0, 1] in the forward. Two departures:
their loop reads two batches of 16 per task per step (its ``break`` comes after the second); here
a step reads one batch of ``batch_size``. And the model runs in eval mode (no dropout).

Regression tasks have no predictive distribution, so no entropy: they are left out of the loss
(a warning says so) and still get the merged body; with no classification task at all the
adaptation is refused.

The gradient flows through :meth:`modmerge.tasks.taskpool.TaskPool.logits` (``functional_call``
on the pool's body): only the coefficients require grad; the pretrained body and the stacked
task vectors (T bodies) stay fixed in memory.

>>> pre = {"w": torch.zeros(2)}
>>> model = AdaMerging(pre, [{"w": torch.ones(2)}, {"w": torch.full((2,), 2.0)}], {"model": ["w"]})
>>> model.merged()["w"]  # 0 + 0.3 * (1 - 0) + 0.3 * (2 - 0)
tensor([0.9000, 0.9000], grad_fn=<AddBackward0>)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

import torch
from torch import nn

from modmerge.components import ComponentMap
from modmerge.errors import ModmergeError
from modmerge.tasks.batching import eval_batches, select
from modmerge.tasks.metrics import REGRESSION_METRICS
from modmerge.tasks.taskpool import TaskPool

logger = logging.getLogger(__name__)

State = Mapping[str, torch.Tensor]
Granularity = Literal["model", "layer", "component", "tensor"]
AdaptationSplit = Literal["validation", "test"]
GRANULARITIES: tuple[str, ...] = get_args(Granularity)
SPLITS: tuple[str, ...] = get_args(AdaptationSplit)


@dataclass(frozen=True)
class AdaMergingSettings:
    """How the coefficients are learned (the authors' values by default).

    ``split`` is whose unlabeled inputs the entropy is minimised on: ``validation`` (the
    default here: every baseline row then chooses what it learns on the validation split, as the
    MERGE search does) or ``test`` (the paper's test-time adaptation on the test inputs it then
    reports on). The inputs are the split's evaluated subset (the first ``val_limit`` /
    ``test_limit`` examples); their labels are never read.

    >>> AdaMergingSettings(steps=0)
    Traceback (most recent call last):
    ...
    modmerge.errors.ModmergeError: AdaMerging: steps must be >= 1, got 0
    """

    granularity: Granularity = "model"
    split: AdaptationSplit = "validation"
    steps: int = 500
    lr: float = 1e-3
    batch_size: int = 16
    prior: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ModmergeError(f"AdaMerging: granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        if self.split not in SPLITS:
            raise ModmergeError(f"AdaMerging: split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ModmergeError(f"AdaMerging: {name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ModmergeError(f"AdaMerging: lr must be > 0, got {self.lr}")

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def coefficient_units(keys: Sequence[str], granularity: Granularity, cmap: ComponentMap | None = None) -> dict[str, list[str]]:
    """Which tensors share a coefficient: one unit (``model``), one per tensor (``tensor``), or
    modmerge's ``layer`` / ``component`` units of ``cmap`` restricted to ``keys``.

    >>> coefficient_units(["a", "b"], "tensor")
    {'a': ['a'], 'b': ['b']}
    >>> coefficient_units(["a", "b"], "model")
    {'model': ['a', 'b']}
    """
    if granularity == "model":
        return {"model": list(keys)}
    if granularity == "tensor":
        return {k: [k] for k in keys}
    if cmap is None:
        raise ModmergeError(f"AdaMerging: granularity {granularity!r} needs the model's component map")
    wanted = set(keys)
    units = {u: [k for k in members if k in wanted] for u, members in cmap.units(granularity).items()}
    return {u: members for u, members in units.items() if members}


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-example Shannon entropy (nats) of ``softmax(logits)`` over the last dimension.

    >>> softmax_entropy(torch.zeros(1, 4))  # uniform over 4 classes: log 4
    tensor([1.3863])
    """
    logits = logits.float()
    return -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)


class AdaMerging(nn.Module):
    """The merged body as a function of its coefficients ``lambda`` (units x tasks, the only
    parameter). Built from the pretrained body and the T fine-tuned bodies (the tensors of
    ``units``), it holds ``theta_0`` and the task vectors stacked per tensor (T x shape), float32,
    fixed."""

    def __init__(self, pretrained: State, finetuned: Sequence[State], units: Mapping[str, Sequence[str]],
                 prior: float = 0.3, device: str | torch.device = "cpu") -> None:
        super().__init__()
        if not finetuned:
            raise ModmergeError("AdaMerging needs at least one fine-tuned model")
        self.units = {u: list(keys) for u, keys in units.items()}
        self.pretrained = {k: pretrained[k].detach().to(device, torch.float32) for keys in self.units.values() for k in keys}
        self.deltas = {k: torch.stack([m[k].detach().to(device, torch.float32) - base for m in finetuned])
                       for k, base in self.pretrained.items()}
        self.lambdas_raw = nn.Parameter(torch.full((len(self.units), len(finetuned)), float(prior), device=device))

    def coefficients(self) -> torch.Tensor:
        """``lambda`` clamped to [0, 1] (units x tasks), as the forward uses it."""
        return self.lambdas_raw.clamp(0.0, 1.0)

    def merged(self) -> dict[str, torch.Tensor]:
        """``theta_0 + sum_t lambda_{t,u} tau_t`` for every tensor, differentiable in ``lambda``."""
        lam = self.coefficients()
        out = {}
        for row, keys in enumerate(self.units.values()):
            for k in keys:
                out[k] = self.pretrained[k] + torch.tensordot(lam[row], self.deltas[k], dims=1)
        return out

    def table(self, tasks: Sequence[str]) -> dict[str, dict[str, float]]:
        """The clamped coefficients as ``{task: {unit: lambda}}``."""
        lam = self.coefficients().detach()
        return {t: {u: round(float(lam[row, i]), 6) for row, u in enumerate(self.units)} for i, t in enumerate(tasks)}


@dataclass
class AdaptationResult:
    """The learned coefficients, the merged body they give (detached) and the run's figures."""

    coefficients: dict[str, dict[str, float]]
    state: dict[str, torch.Tensor]
    losses: list[float] = field(default_factory=list)
    entropy_before: float = 0.0
    entropy_after: float = 0.0
    left_out: list[str] = field(default_factory=list)
    seconds: float = 0.0


def entropy_tasks(pool: TaskPool, tasks: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(classification tasks, regression tasks)``: the loss sums the first only."""
    regression = [t for t in tasks if pool.source.entry(t).metric in REGRESSION_METRICS]
    return [t for t in tasks if t not in regression], regression


def mean_entropy(pool: TaskPool, state: State, tasks: Sequence[str], batch_size: int = 64) -> float:
    """``sum_t`` of the mean prediction entropy over task ``t``'s whole adaptation subset."""
    total = 0.0
    with torch.no_grad():
        for task in tasks:
            inputs = pool.inputs(task, pool.split)
            values = [softmax_entropy(pool.logits(task, state, batch)) for _, batch in eval_batches(inputs, batch_size)]
            total += float(torch.cat(values).mean())
    return total


def adapt(
    pool: TaskPool, pretrained: State, finetuned: Sequence[State], units: Mapping[str, Sequence[str]],
    settings: AdaMergingSettings, *, on_step: Callable[[int, float], None] | None = None,
) -> AdaptationResult:
    """Learn the coefficients on ``pool``'s split (``finetuned``: one body per task of the
    pool's source, in task order) and return them with the merged body. See the module doc.

    >>> pool = TaskPool(source, split="validation", limit=200)                         # doctest: +SKIP
    >>> result = adapt(pool, pre, bodies, {"model": keys}, AdaMergingSettings(steps=50))  # doctest: +SKIP
    >>> result.entropy_after < result.entropy_before                                  # doctest: +SKIP
    True
    """
    tasks = pool.source.tasks
    if len(finetuned) != len(tasks):
        raise ModmergeError(f"AdaMerging: {len(finetuned)} fine-tuned bodies for {len(tasks)} tasks")
    classified, regression = entropy_tasks(pool, tasks)
    if not classified:
        raise ModmergeError(f"AdaMerging: every task of '{pool.source.name}' is a regression task; "
                            "prediction entropy is undefined for them")
    if regression:
        logger.warning("AdaMerging: regression tasks %s left out of the entropy loss (entropy is undefined); "
                       "they get the merged body all the same", ", ".join(regression))
    started = time.perf_counter()
    model = AdaMerging(pretrained, finetuned, units, prior=settings.prior, device=pool.device)
    inputs = {t: pool.inputs(t, pool.split) for t in classified}
    before = mean_entropy(pool, model.merged(), classified)
    optimizer = torch.optim.Adam([model.lambdas_raw], lr=settings.lr, betas=(0.9, 0.999), weight_decay=0.0)
    generator = torch.Generator().manual_seed(settings.seed)
    losses = []
    for step in range(settings.steps):
        merged = model.merged()
        loss = torch.zeros(())
        for task in classified:
            drawn = torch.randperm(len(inputs[task]), generator=generator)[: settings.batch_size]
            loss = loss + softmax_entropy(pool.logits(task, merged, select(inputs[task], drawn))).mean().cpu()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    final = {k: v.detach() for k, v in model.merged().items()}
    after = mean_entropy(pool, final, classified)
    state = {k: v.cpu() for k, v in final.items()}
    seconds = time.perf_counter() - started
    logger.info("AdaMerging (%s) on %s: entropy %.4f -> %.4f in %d steps, %.1f s", settings.granularity,
                settings.split, before, after, settings.steps, seconds)
    return AdaptationResult(model.table(tasks), state, losses, before, after, regression, seconds)
