"""`merge --overwrite` replaces OUT_DIR only when an earlier `modmerge merge` wrote it (its
modmerge.json marker, written with the model); any other directory is refused with one line naming
it and `--force`, exit 2, byte-identical. `--force` replaces it anyway.

`--overwrite` used to replace whatever directory OUT_DIR named.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from battery_support import assert_refused, invoke, snapshot

MARKER = "modmerge.json"


def _recipe(tmp_path: Path, base: Path, models: list[Path]) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"base_model": str(base), "models": [{"model": str(m)} for m in models],
                                    "method": "task_arithmetic"}))
    return path


@pytest.fixture
def merged(bert_zoo, tmp_path) -> Path:
    """An earlier merge's output."""
    base, tasks = bert_zoo
    out = tmp_path / "earlier"
    assert invoke(["merge", _recipe(tmp_path, base, tasks), out]).exit_code == 0
    assert (out / MARKER).is_file()
    return out


def _users_files(_zoo, _merged: Path, target: Path) -> None:
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")


def _a_model_not_merged(zoo, _merged: Path, target: Path) -> None:
    shutil.copytree(zoo[1][0], target)  # a fine-tuned model: loadable, but no merge wrote it


def _marker(payload: str) -> Callable[[object, Path, Path], None]:
    def make(_zoo, merged: Path, target: Path) -> None:
        shutil.copytree(merged, target)
        (target / MARKER).write_text(payload)

    return make


def _symlinked_marker(_zoo, merged: Path, target: Path) -> None:
    target.mkdir()
    (target / "data.csv").write_text("a,b\n")
    (target / MARKER).symlink_to(merged / MARKER)  # the marker must be the directory's own


NOT_MERGES = {
    "users-files": _users_files,
    "a-model-not-merged": _a_model_not_merged,
    "marker-not-json": _marker("{not json"),
    "marker-of-something-else": _marker(json.dumps({"written_by": "someone else"})),
    "symlinked-marker": _symlinked_marker,
}


@pytest.mark.parametrize("make", NOT_MERGES.values(), ids=NOT_MERGES.keys())
def test_overwrite_refuses_a_directory_no_merge_wrote(bert_zoo, merged, tmp_path, make):
    base, tasks = bert_zoo
    target = tmp_path / "target"
    make(bert_zoo, merged, target)
    before = snapshot(target)
    result = invoke(["merge", _recipe(tmp_path, base, tasks[:2]), target, "--overwrite"])
    assert result.exit_code == 2
    assert_refused(result, str(target), "not replaced", "--force")
    assert snapshot(target) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".target.")] == []


def test_force_replaces_any_directory(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    target = tmp_path / "target"
    _users_files(bert_zoo, tmp_path, target)
    result = invoke(["merge", _recipe(tmp_path, base, tasks[:2]), target, "--force"])
    assert result.exit_code == 0, result.output
    assert not (target / "thesis.tex").exists() and (target / "model.safetensors").is_file()
    assert (target / MARKER).is_file()


def test_without_overwrite_a_merge_output_is_kept(bert_zoo, merged, tmp_path):
    base, tasks = bert_zoo
    before = snapshot(merged)
    result = invoke(["merge", _recipe(tmp_path, base, tasks[:2]), merged])
    assert_refused(result, str(merged), "--overwrite")
    assert snapshot(merged) == before


def test_overwrite_replaces_an_earlier_merge(bert_zoo, merged, tmp_path):
    base, tasks = bert_zoo
    before = snapshot(merged)
    result = invoke(["merge", _recipe(tmp_path, base, tasks[:1]), merged, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert snapshot(merged) != before and (merged / MARKER).is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".earlier.")] == []


@pytest.mark.parametrize("body_only", [False, True], ids=["one-model-per-task", "body-only"])
def test_overwrite_replaces_an_earlier_merge_of_task_models(own_suite, tmp_path, body_only):
    models = own_suite.parent / "models"
    recipe = _recipe(tmp_path, models / "base", [models / "has_animal", models / "count_color"])
    out = tmp_path / "out"
    flags = ["--body-only"] if body_only else []
    assert invoke(["merge", recipe, out, *flags]).exit_code == 0
    assert (out / MARKER).is_file()
    result = invoke(["merge", recipe, out, "--overwrite", *flags])
    assert result.exit_code == 0, result.output


def test_help_documents_overwrite_and_force():
    text = " ".join(invoke(["merge", "--help"]).output.split())
    assert "--overwrite" in text and "--force" in text and MARKER in text
