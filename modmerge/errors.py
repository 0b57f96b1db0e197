"""User-facing errors. Each carries one line that names the culprit (file, tensor, field).

The CLI prints ``str(err)`` and exits non-zero; library callers can catch the family.
"""


class ModmergeError(Exception):
    """Base class: a clear, one-line problem with the user's input."""


class CheckpointError(ModmergeError):
    """A checkpoint cannot be read, is corrupt, or holds bad values (NaN/Inf)."""


class CompatibilityError(ModmergeError):
    """Checkpoints that should merge do not match (keys, shapes, dtypes, architecture)."""


class RecipeError(ModmergeError):
    """A recipe field is unknown, missing or out of range."""


class ComponentError(ModmergeError):
    """A parameter cannot be mapped to a component, or a granularity does not apply."""


class MergeMethodError(ModmergeError):
    """A merge method is unknown or was called with bad parameters or inputs."""


class OutputError(ModmergeError, OSError):
    """A file or folder cannot be written: a full disk, a read-only mount, a file where a folder
    should be. Still an :class:`OSError` with the cause's ``errno``, so code that tolerates a
    failed write (an optional cache) keeps doing so; ``str()`` is the one line alone."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code

    def __str__(self) -> str:
        return str(self.args[0])


def validation_line(err: object) -> str:
    """A pydantic ``ValidationError`` as one line: ``field.path: message`` per error, joined by ``; ``.

    >>> from pydantic import BaseModel, ConfigDict
    >>> class R(BaseModel):
    ...     model_config = ConfigDict(extra="forbid")
    ...     budget: int
    >>> try:
    ...     R.model_validate({"budget": "x", "budgte": 3})
    ... except Exception as e:
    ...     print(validation_line(e))
    budget: Input should be a valid integer, unable to parse string as an integer; budgte: unknown field
    """
    parts = []
    for e in err.errors():  # type: ignore[attr-defined]
        loc = ".".join(str(p) for p in e["loc"]) or "recipe"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
