"""Real processes killed with SIGKILL: a search resumes to the uninterrupted result, and a library
build leaves the old library byte-identical.

The in-process versions (an exception at a generation, inside an evaluation, a failed blob
write) are tests/search/test_search_resume.py and
tests/library/test_build.py::test_failed_build_leaves_the_previous_library_intact; these kill a
`python -m modmerge` child, so nothing in the process gets to clean up.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from battery_support import invoke, snapshot, spawn

from modmerge.library import Library

pytestmark = pytest.mark.slow  # each case starts a fresh Python that imports torch (~5-10 s on 2 cores)

SEARCH = {"zoo": "tiny", "method": "task_arithmetic", "parameters": {"scaling": 0.3}, "budget": 8,
          "population": 2, "validation_limit": 16, "test_limit": 16, "init": "random"}
# What a run measured about its own work (seconds, cache hits), not what it found.
COST_FIELDS = ("evaluation_cost", "test_cost")


def _kill_when(proc, ready: Callable[[], bool], log: Path, timeout: float = 180.0) -> None:
    """SIGKILL ``proc`` as soon as ``ready()``; fail if it exits or times out first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before it could be killed:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"not ready to kill after {timeout:.0f} s:\n{log.read_text()}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def _results(run: Path) -> dict:
    payload = json.loads((run / "pareto.json").read_text())
    for entry in payload["runs"]:
        for field in COST_FIELDS:
            entry.pop(field)
    return payload


@pytest.fixture(scope="module")
def cache(tiny_zoo) -> Path:
    return tiny_zoo.root.parent.parent


def test_search_killed_mid_run_resumes_to_the_same_pareto_set(cache, tmp_path):
    recipe = tmp_path / "search.yaml"
    recipe.write_text(yaml.safe_dump(SEARCH))
    whole = invoke(["search", recipe, "--out", tmp_path / "whole", "--cache", cache])
    assert whole.exit_code == 0, whole.output

    run = tmp_path / "killed"
    log = tmp_path / "search.log"
    proc = spawn(["search", recipe, "--out", run, "--cache", cache], log)
    # after the first generation is saved, before the Pareto set is written
    _kill_when(proc, lambda: (run / "run0" / "state.json").is_file() and not (run / "pareto.json").exists(), log)
    assert not (run / "pareto.json").exists()

    resumed = invoke(["search", recipe, "--out", run, "--cache", cache, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert _results(run) == _results(tmp_path / "whole")
    assert (run / "history.json").read_bytes() == (tmp_path / "whole" / "history.json").read_bytes()
    for entry in json.loads((run / "pareto.json").read_text())["runs"]:
        assert set(entry) >= set(COST_FIELDS)


# A child whose blob writes each take 0.1 s longer, so the kill lands mid-build every time
# (the tiny library is otherwise written in a fraction of a second).
SLOW_BLOBS = ("import time, modmerge.library.build as b; write = b.write_blob; "
              "b.write_blob = lambda *a, **k: (time.sleep(0.1), write(*a, **k))[1]; "
              "from modmerge.cli import main; main()")


def test_library_build_killed_midway_leaves_the_old_library_byte_identical(cache, tmp_path):
    recipe = tmp_path / "search.yaml"
    recipe.write_text(yaml.safe_dump({**SEARCH, "budget": 4, "test_limit": 8}))
    run = tmp_path / "run"
    assert invoke(["search", recipe, "--out", run, "--cache", cache]).exit_code == 0
    lib = tmp_path / "lib"
    assert invoke(["library", "build", run, lib, "--cache", cache, "--no-router"]).exit_code == 0
    before = snapshot(lib)
    # a different Pareto set, so a build that finished would change the library
    other = tmp_path / "other-run"
    other.mkdir()
    payload = json.loads((run / "pareto.json").read_text())
    payload["runs"][0]["solutions"] = payload["runs"][0]["solutions"][:1]
    (other / "pareto.json").write_text(json.dumps(payload))

    log = tmp_path / "build.log"
    proc = spawn(["library", "build", other, lib, "--cache", cache, "--no-router"], log, code=SLOW_BLOBS)

    def staging() -> list[Path]:
        return [p for p in tmp_path.iterdir() if p.name.startswith(".lib.tmp-")]

    _kill_when(proc, lambda: any(len(list((s / "blobs").glob("*"))) >= 2 for s in staging() if (s / "blobs").is_dir()),
               log)
    assert snapshot(lib) == before
    assert Library.open(lib, verify=True).verify() == []
    assert len(staging()) == 1  # the dead build's half-written copy, beside the library, never in it

    rebuilt = invoke(["library", "build", other, lib, "--cache", cache, "--no-router"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert staging() == []  # the next build removes a dead build's leftovers
    assert len(Library.open(lib, verify=True).configurations) == 1
