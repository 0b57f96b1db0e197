"""`modmerge serve` refuses bad arguments with one line before loading anything."""

from __future__ import annotations

from click.testing import CliRunner

from modmerge.cli import main


def run(*args):
    return CliRunner().invoke(main, ["serve", *args])


def test_non_loopback_host_needs_allow_remote(tmp_path):
    result = run(str(tmp_path), "--budget", "0.5", "--host", "0.0.0.0")
    assert result.exit_code == 2
    assert "error: settings: host '0.0.0.0' is not a loopback address; pass allow_remote" in result.output


def test_budget_or_config_is_required(tmp_path):
    for args in ([], ["--budget", "0.5", "--config", "c0"]):
        result = run(str(tmp_path), *args)
        assert result.exit_code == 2
        assert "error: give exactly one of --budget or --config" in result.output


def test_inconsistent_limits_are_one_line(tmp_path):
    result = run(str(tmp_path), "--config", "c0", "--max-inputs", "500", "--max-batch", "100")
    assert result.exit_code == 2
    assert "error: settings: max_batch (100) must be at least max_inputs (500)" in result.output
