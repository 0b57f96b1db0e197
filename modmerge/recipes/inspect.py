"""Read-only views for the CLI: a model's component table and a recipe's merge plan.

>>> rows, unmatched, arch = inspect_model("path/to/model")  # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from typing import Any

from rich.table import Table

from modmerge.checkpoints import open_checkpoint, validate_checkpoints
from modmerge.components import (
    component_table,
    decompose,
    detect_architecture,
    load_architecture,
    rows_to_json,
)
from modmerge.recipes.execute import component_map_for
from modmerge.recipes.plan import plan_tensors
from modmerge.recipes.schema import MergeRecipe


def inspect_model(
    spec: str, *, architecture: str | None = None, granularity: str = "component", allow_pickle: bool = False
) -> tuple[list[dict[str, Any]], list[str], str]:
    """Component rows (as dicts), unmatched parameter names and the architecture's name.

    At ``component`` granularity rows are the components; at ``layer`` / ``model`` they are the
    merge units, with the kinds they hold joined by ``+``.
    """
    with open_checkpoint(spec, allow_pickle=allow_pickle) as ckpt:
        keys = ckpt.keys()
        arch = load_architecture(architecture) if architecture else detect_architecture(ckpt.config, keys)
        cmap = decompose(keys, arch)
        if granularity == "component":
            rows = rows_to_json(component_table(ckpt, cmap))
            return rows, list(cmap.unmatched), arch.name
        rows = []
        for unit, names in cmap.units(granularity).items():  # type: ignore[arg-type]
            components = sorted({cmap.component_of(k) for k in names})
            layers = {c.layer for c in components}
            rows.append(
                {
                    "component": unit,
                    "kind": "+".join(dict.fromkeys(c.kind for c in components)),
                    "layer": "-" if len(layers) != 1 or None in layers else str(layers.pop()),
                    "parameters": sum(ckpt.info(k).numel for k in names),
                    "tensors": len(names),
                    "tensor_names": names,
                }
            )
        return rows, list(cmap.unmatched), arch.name


def describe_plan(recipe: MergeRecipe, *, allow_pickle: bool = False) -> Table:
    """Open and validate every checkpoint, then tabulate which method each component gets."""
    with ExitStack() as stack:
        base = stack.enter_context(open_checkpoint(recipe.base_model, allow_pickle=allow_pickle))
        models = [
            stack.enter_context(open_checkpoint(m.model, allow_pickle=allow_pickle, base=base)) for m in recipe.models
        ]
        validate_checkpoints(base, models)
        cmap = component_map_for(recipe, base)
        plan = plan_tensors(recipe, base.keys(), cmap)
        table = Table(title=f"merge plan: {len(models)} models, {len(plan)} tensors (validated, nothing written)")
        for col in ("component", "method", "parameters", "tensors"):
            table.add_column(col)
        counts = Counter(cmap.component_of(k) for k in plan)
        for component in cmap.components():
            call = plan[cmap.keys_of(component)[0]]
            params = ", ".join(f"{k}={v}" for k, v in call.params)
            table.add_row(component.id, call.method, params, str(counts[component]))
        return table


__all__ = ["describe_plan", "inspect_model"]
