"""Stage 5, on-demand reuse: route inputs to task patterns, map them to expert chains, assemble
and run the chains in batches (:class:`ReuseEngine`), export one assembled model."""

from modmerge.reuse.engine import ReuseEngine, ReuseError
from modmerge.reuse.evaluate import evaluate_library
from modmerge.reuse.export import ExportResult, export_model

__all__ = ["ExportResult", "ReuseEngine", "ReuseError", "evaluate_library", "export_model"]
