"""The component table behind ``modmerge inspect``: one row per component with its sizes.

Only tensor descriptions (shape) are read, never tensor data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from modmerge.components.decompose import ComponentMap
from modmerge.errors import ComponentError


class _Described(Protocol):
    @property
    def numel(self) -> int: ...


class _Describable(Protocol):
    def keys(self) -> list[str]: ...

    def info(self, key: str) -> _Described: ...


@dataclass(frozen=True)
class ComponentRow:
    """One component of a model: its id, kind, layer (``"-"`` when layer-free), stack and sizes."""

    component: str
    kind: str
    layer: str
    stack: str
    parameters: int
    tensors: int
    tensor_names: tuple[str, ...]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _sizes(source: Mapping[str, tuple[tuple[int, ...], str]] | _Describable) -> dict[str, int]:
    if callable(getattr(source, "info", None)):
        described: Any = source
        names: list[str] = described.keys()
        return {key: int(described.info(key).numel) for key in names}
    table: Any = source
    return {key: _numel(tuple(shape)) for key, (shape, _dtype) in table.items()}


def component_table(
    source: Mapping[str, tuple[tuple[int, ...], str]] | _Describable, component_map: ComponentMap
) -> list[ComponentRow]:
    """Rows in model order for every component of ``component_map``.

    ``source`` is either ``{name: (shape, dtype_name)}`` or a Checkpoint-like object with
    ``keys()`` and ``info(key).numel``. Its names must be exactly the map's names.

    >>> from modmerge.components.decompose import decompose
    >>> shapes = {"model.embed_tokens.weight": ((8, 4), "float32"), "lm_head.weight": ((8, 4), "float32")}
    >>> rows = component_table(shapes, decompose(list(shapes), "llama"))
    >>> [(r.component, r.layer, r.parameters) for r in rows]
    [('embed', '-', 32), ('head', '-', 32)]
    """
    sizes = _sizes(source)
    mapped_names = component_map.keys()
    mapped = set(mapped_names)
    missing = [k for k in mapped_names if k not in sizes]
    if missing:
        raise ComponentError(f"tensor {missing[0]!r} is in the component map but not in the model")
    extra = [k for k in sizes if k not in mapped]
    if extra:
        raise ComponentError(f"tensor {extra[0]!r} is in the model but not in the component map")
    rows = []
    for component in component_map.components():
        names = component_map.keys_of(component)
        rows.append(
            ComponentRow(
                component=component.id,
                kind=component.kind,
                layer="-" if component.layer is None else str(component.layer),
                stack=component.stack,
                parameters=sum(sizes[k] for k in names),
                tensors=len(names),
                tensor_names=tuple(names),
            )
        )
    return rows


def rows_to_json(rows: list[ComponentRow]) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts (``tensor_names`` as a list).

    >>> row = ComponentRow("head", "head", "-", "", 10, 1, ("score.weight",))
    >>> rows_to_json([row])[0]["tensor_names"]
    ['score.weight']
    """
    out = []
    for row in rows:
        item = asdict(row)
        item["tensor_names"] = list(row.tensor_names)
        out.append(item)
    return out
