"""Stage 5, on-demand reuse: route inputs to task patterns, map them to expert chains, assemble
and run the chains in batches (:class:`ReuseEngine`), export one assembled model."""

from modmerge.reuse.engine import ReuseEngine, ReuseError
from modmerge.reuse.evaluate import evaluate_library
from modmerge.reuse.export import ExportResult, export_model
from modmerge.reuse.router import (
    Router,
    RouterConfig,
    RouterError,
    fit_router,
    router_body,
    router_features,
    train_router,
)

__all__ = [
    "ExportResult", "ReuseEngine", "ReuseError", "Router", "RouterConfig", "RouterError", "evaluate_library",
    "export_model", "fit_router", "router_body", "router_features", "train_router",
]
