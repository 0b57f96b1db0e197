"""`modmerge zoo list` through the CLI: every registered zoo, built or not (issue 17, item 8)."""

from __future__ import annotations

from click.testing import CliRunner

from modmerge.cli import main
from modmerge.zoo.registry import ZOOS


def _rows(output: str) -> dict[str, list[str]]:
    """Table rows by zoo name, cells stripped (rich draws the cells between '│')."""
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in output.splitlines() if line.startswith("│")]
    return {row[0]: row for row in cells if row and row[0]}


def test_zoo_list_on_an_empty_cache_lists_every_zoo_unbuilt(tmp_path):
    result = CliRunner().invoke(main, ["zoo", "list", "--cache", str(tmp_path)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    assert set(rows) == set(ZOOS)
    assert all(row[1] == "no" for row in rows.values())
    assert not any(tmp_path.iterdir())  # listing builds nothing


def test_zoo_list_shows_a_built_zoo(tiny_zoo):
    cache = tiny_zoo.root.parent.parent
    result = CliRunner().invoke(main, ["zoo", "list", "--cache", str(cache)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    _, built, tasks, backbone, size, description = _rows(result.output)["tiny"]
    assert (built, tasks) == ("yes", str(len(tiny_zoo.tasks)))
    assert backbone == tiny_zoo.manifest.backbone.name and size.endswith("MiB")
    assert description == ZOOS["tiny"].description
