"""What the service needs from an inference engine (``modmerge.reuse.ReuseEngine`` fits it).

Coding the service against this protocol keeps it testable with a small deterministic fake and
keeps the HTTP layer free of torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Engine(Protocol):
    """An engine answers one combined batch; it groups inputs by expert chain itself.

    ``predict`` returns one dict per input, in input order, with at least ``task``, ``label``
    and ``chain`` (``label_name`` when known). ``config`` is the selected configuration (an
    object with ``id`` or a mapping with ``"id"``).

    Optionally, ``prepare(inputs) -> list`` checks and decodes ONE request's inputs, raising
    whatever ``predict`` would raise for them; ``predict`` then takes the prepared inputs of
    several requests at once. The batcher uses it to answer a bad request (an image bomb, a
    broken file) alone, before its batch-mates' engine call (``ReuseEngine.prepare`` fits).
    """

    config: Any

    def predict(self, inputs: list[dict], tasks: list[str] | None = None) -> list[dict]: ...

    def configs(self) -> list[dict]: ...


def config_id(engine: Engine) -> str:
    """The id of the engine's selected configuration, whether it is an object or a mapping.

    Example::

        >>> class E:
        ...     config = {"id": "c2"}
        >>> config_id(E())
        'c2'
    """
    config = engine.config
    if isinstance(config, Mapping):
        return str(config["id"])
    return str(config.id)


def engine_tasks(engine: Engine) -> list[str] | None:
    """Task names the engine serves, when it says (``tasks`` or the selected config's chains).

    Used to refuse an unknown oracle task at the edge; ``None`` means the engine will judge.
    """
    tasks = getattr(engine, "tasks", None)
    if tasks is not None and not callable(tasks):
        return [t if isinstance(t, str) else str(t.name) for t in tasks]
    config = engine.config
    chains = config.get("chains") if isinstance(config, Mapping) else getattr(config, "chains", None)
    return sorted(chains) if isinstance(chains, Mapping) else None
