"""Component decomposition: parameter name -> (layer, kind), from architecture data files.

>>> from modmerge.components import decompose
>>> decompose(["model.layers.0.self_attn.q_proj.weight"], "llama").units("component")
{'layer0.attn': ['model.layers.0.self_attn.q_proj.weight']}
"""

from modmerge.components.architecture import (
    Architecture,
    ArchRule,
    builtin_architectures,
    detect_architecture,
    load_architecture,
)
from modmerge.components.component import KINDS, Component, Kind
from modmerge.components.decompose import (
    GRANULARITIES,
    ComponentMap,
    Granularity,
    Rule,
    check_granularity,
    decompose,
)
from modmerge.components.table import ComponentRow, component_table, rows_to_json
from modmerge.components.task_vectors import task_vector, unit_task_vectors

__all__ = [
    "GRANULARITIES",
    "KINDS",
    "ArchRule",
    "Architecture",
    "Component",
    "ComponentMap",
    "ComponentRow",
    "Granularity",
    "Kind",
    "Rule",
    "builtin_architectures",
    "check_granularity",
    "component_table",
    "decompose",
    "detect_architecture",
    "load_architecture",
    "rows_to_json",
    "task_vector",
    "unit_task_vectors",
]
