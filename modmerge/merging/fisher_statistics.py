"""Diagonal Fisher information of a model on data: what ``fisher`` merging weights by.

The Fisher of model ``p(y | x, theta)`` is ``F = E_x E_{y ~ p(y|x)} [(d log p(y|x) / d theta)^2]``
(diagonal), averaged over the examples ``x``. :func:`compute_fisher` offers three estimators of
the inner expectation over ``y``:

- ``"expected"`` (default): the exact expectation over the model's own predictive distribution,
  ``sum_c p_c (d log p_c)^2``, as in Matena & Raffel's code (``expectation_wrt_logits``); one
  backward pass per class (and per labelled position for token-level tasks);
- ``"sampled"``: one label drawn from the model's softmax per example (a Monte Carlo estimate of
  the same quantity, one backward pass);
- ``"empirical"``: the example's true label (the "empirical Fisher", a different quantity: it
  measures the fit to the data, not the model's curvature).

Regression heads (one output, or floating-point labels) use a Gaussian likelihood with the
prediction ``f`` as its mean and unit variance: ``log p(y|x) = -(y - f)^2 / 2``, whose score is
``(y - f) df``. Its expected Fisher is ``(df)^2``; ``"sampled"`` draws ``y ~ N(f, 1)``;
``"empirical"`` uses the true ``y``, i.e. the gradient of the squared error.

>>> model = torch.nn.Linear(2, 3)
>>> fisher = compute_fisher(model, [{"input": torch.randn(4, 2)}])
>>> sorted(fisher), fisher.metadata["estimator"]
(['bias', 'weight'], 'expected')
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import islice
from typing import Literal, get_args

import torch

from modmerge.errors import MergeMethodError
from modmerge.merging.statistics import LossFn, Statistics, split_examples

__all__ = ["ESTIMATORS", "FisherEstimator", "compute_fisher", "log_likelihood_terms"]

FisherEstimator = Literal["expected", "sampled", "empirical"]
ESTIMATORS: tuple[str, ...] = get_args(FisherEstimator)
# One backward pass per (position, class): beyond this many, "sampled" is the practical choice.
MAX_EXPECTED_TERMS = 4096


def _is_causal_lm(model: torch.nn.Module) -> bool:
    """Decoder-only generative models predict token i+1 from position i, so labels are shifted."""
    config = getattr(model, "config", None)
    can_generate = getattr(model, "can_generate", None)
    return bool(callable(can_generate) and can_generate() and not getattr(config, "is_encoder_decoder", False))


def _logits(model: torch.nn.Module, example: Mapping[str, torch.Tensor]) -> torch.Tensor:
    out = model(**{k: v for k, v in example.items() if k != "labels"})
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.ndim not in (2, 3):
        raise MergeMethodError(
            "statistics: the Fisher needs (batch, classes) or (batch, length, vocab) logits from the model; pass loss_fn"
        )
    return logits.float()


def _is_regression(logits: torch.Tensor, labels: torch.Tensor | None) -> bool:
    """Floating labels, or (without labels) a single output: the Hugging Face num_labels == 1 convention."""
    if labels is not None:
        return labels.is_floating_point()
    return logits.ndim == 2 and logits.shape[-1] == 1


def _gaussian_terms(
    mean: torch.Tensor, labels: torch.Tensor | None, estimator: str, generator: torch.Generator | None
) -> list[tuple[float, torch.Tensor]]:
    if estimator == "expected":  # E[((y - f) df)^2] = Var(y) (df)^2 = (df)^2 per output
        return [(1.0, f) for f in mean.reshape(-1)]
    if estimator == "empirical":
        if labels is None:
            raise MergeMethodError("statistics: the empirical Fisher needs 'labels' in each batch; pass loss_fn")
        target = labels.to(mean.dtype).reshape(mean.shape)
    else:
        noise = torch.randn(mean.shape, generator=generator, device=generator.device if generator else mean.device)
        target = mean.detach() + noise.to(mean.device)
    return [(1.0, -0.5 * ((target - mean) ** 2).sum())]


def log_likelihood_terms(
    model: torch.nn.Module,
    example: Mapping[str, torch.Tensor],
    *,
    estimator: FisherEstimator = "expected",
    generator: torch.Generator | None = None,
) -> list[tuple[float, torch.Tensor]]:
    """``(weight, log-likelihood term)`` pairs for one example: its Fisher diagonal is
    ``sum weight * (d term / d theta)^2`` (see the module docstring for the three estimators).

    The model is called with every batch entry except ``labels`` and must return logits (a tensor
    or an output with ``.logits``): (1, classes) for classification or regression, (1, length,
    vocab) for token-level tasks, where positions labelled -100 (or masked out by
    ``attention_mask`` when there are no labels) are skipped and causal LMs are shifted by one.

    >>> model = torch.nn.Linear(2, 3)
    >>> [w for w, _ in log_likelihood_terms(model, {"input": torch.ones(1, 2)}, estimator="sampled")]
    [1.0]
    """
    if estimator not in ESTIMATORS:
        raise MergeMethodError(f"statistics: Fisher estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")
    labels = example.get("labels")
    logits = _logits(model, example)
    if _is_regression(logits, labels):
        return _gaussian_terms(logits, labels, estimator, generator)
    if estimator == "empirical" and labels is None:
        raise MergeMethodError("statistics: the empirical Fisher needs integer 'labels' in each batch; pass loss_fn")
    log_probs = torch.log_softmax(logits, dim=-1)
    # Which positions count: -100 labels are ignored; without labels, the attention mask decides.
    valid = labels != -100 if labels is not None else None
    if valid is None and logits.ndim == 3:
        valid = example.get("attention_mask")
    if logits.ndim == 3 and _is_causal_lm(model):
        log_probs = log_probs[:, :-1]
        labels = labels[:, 1:] if labels is not None else None
        valid = valid[:, 1:] if valid is not None else None
    classes = log_probs.shape[-1]
    log_probs = log_probs.reshape(-1, classes)
    valid = torch.ones(log_probs.shape[0], dtype=torch.bool) if valid is None else valid.reshape(-1).bool().cpu()
    rows = log_probs[valid.to(log_probs.device)]
    if estimator == "expected":
        if rows.numel() > MAX_EXPECTED_TERMS:
            raise MergeMethodError(
                f"statistics: the expected Fisher of this example needs {rows.numel()} backward passes "
                f"(positions x classes > {MAX_EXPECTED_TERMS}); use estimator='sampled'"
            )
        probs = rows.detach().exp().cpu()
        return [(float(probs[i, c]), rows[i, c]) for i in range(rows.shape[0]) for c in range(classes)]
    if estimator == "empirical":
        target = labels.reshape(-1)[valid.to(labels.device)].clamp_min(0).to(rows.device)
    else:
        with torch.no_grad():
            target = torch.multinomial(rows.exp(), 1, generator=generator).reshape(-1)
    return [(1.0, rows.gather(-1, target.unsqueeze(-1)).sum())]


def compute_fisher(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    estimator: FisherEstimator = "expected",
    loss_fn: LossFn | None = None,
    n_batches: int | None = None,
    generator: torch.Generator | None = None,
) -> Statistics:
    """Diagonal Fisher: the mean over examples of the (expected) squared score.

    Each batch is split into examples and each example gets its own backward passes (the Fisher
    is a mean of per-example squared gradients, not the square of a batch gradient): one per
    class for ``estimator="expected"`` (the default; see the module docstring), one for
    ``"sampled"`` (labels drawn with ``generator``) and ``"empirical"`` (the batch's ``labels``).
    ``loss_fn(model, example)``, when given, replaces the estimator: a scalar whose gradient is
    the score (the log-likelihood or its negative), squared as it is. Keys are
    ``model.named_parameters()`` names of trainable parameters; a parameter the loss does not
    reach gets zeros. The model runs in eval mode (no dropout) and is restored after.

    >>> model = torch.nn.Linear(2, 3)
    >>> batch = {"input": torch.randn(4, 2), "labels": torch.tensor([0, 1, 2, 0])}
    >>> fisher = compute_fisher(model, [batch], estimator="empirical")
    >>> sorted(fisher), fisher.metadata["n_examples"]
    (['bias', 'weight'], '4')
    """
    if estimator not in ESTIMATORS:
        raise MergeMethodError(f"statistics: Fisher estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    totals = {name: torch.zeros(p.shape, dtype=torch.float64) for name, p in params.items()}
    count = 0
    was_training = model.training
    model.eval()
    try:
        for batch in islice(batches, n_batches):
            for example in split_examples(batch):
                terms = (
                    [(1.0, loss_fn(model, example))] if loss_fn is not None
                    else log_likelihood_terms(model, example, estimator=estimator, generator=generator)
                )
                for i, (weight, term) in enumerate(terms):
                    grads = torch.autograd.grad(term, list(params.values()), allow_unused=True,
                                                retain_graph=i < len(terms) - 1)
                    for name, grad in zip(params, grads, strict=True):
                        if grad is not None and weight != 0.0:
                            totals[name].add_(grad.detach().to(torch.float64).cpu() ** 2, alpha=weight)
                count += 1
    finally:
        model.train(was_training)
    if count == 0:
        raise MergeMethodError("statistics: compute_fisher got no examples")
    fisher = {name: (t / count).to(torch.float32) for name, t in totals.items()}
    metadata = {"kind": "fisher", "n_examples": str(count), "estimator": "loss_fn" if loss_fn else estimator}
    return Statistics(fisher, metadata)
