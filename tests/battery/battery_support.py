"""What every battery case asserts about a refused command, and the small runs the cases share.

A refused command exits non-zero with one line on stderr that names the culprit, shows no
traceback, and leaves nothing behind: not its output, not a staging directory beside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from click.testing import CliRunner, Result

from modmerge.cli import main

REPO = Path(__file__).resolve().parents[2]


def invoke(args: Sequence[str | os.PathLike[str]]) -> Result:
    """Run ``modmerge ARGS`` in this process (click's runner; exceptions are kept on the result)."""
    return CliRunner().invoke(main, [str(a) for a in args], env={"COLUMNS": "250"})


def assert_refused(result: Result, *culprits: str, leaves: Sequence[Path] = ()) -> str:
    """``result`` is a refusal in one line (the last) naming every one of ``culprits``, and none of ``leaves``
    (nor a staging sibling of one) exists; return the line.

    >>> assert_refused(invoke(["merge", "missing.yaml", "out"]), "missing.yaml")   # doctest: +SKIP
    """
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"traceback instead of one line: {result.exception!r}\n{result.output}") from result.exception
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    # a progress bar drawn before the failure may precede the message; nothing may follow it
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    line = errors[0]
    for culprit in culprits:
        assert culprit in line, f"{culprit!r} not named in: {line}"
    for path in leaves:
        assert_not_written(path)
    return line


def assert_not_written(path: Path) -> None:
    """Neither ``path`` nor a staging or temporary sibling of it (``.NAME.tmp-*``) exists."""
    assert not path.exists(), f"{path} was written"
    if path.parent.is_dir():
        leftovers = sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.tmp-"))
        assert leftovers == [], f"half-written leftovers beside {path}: {leftovers}"


def spawn(args: Sequence[str | os.PathLike[str]], log: Path, *, code: str | None = None) -> subprocess.Popen:
    """Start ``python -m modmerge ARGS`` as a child process (its output to ``log``), for cases
    that kill or talk to a real process. ``code`` runs instead of ``-m modmerge`` (``python -c
    CODE ARGS``), for a child that must be slowed down or instrumented before the CLI starts."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    entry = ["-m", "modmerge"] if code is None else ["-c", code]
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, *entry, *map(str, args)], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=REPO)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
