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
