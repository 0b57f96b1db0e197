"""`modmerge library build|verify|ls` through click's CliRunner."""

from __future__ import annotations

import json

from click.testing import CliRunner

from modmerge.cli import main
from modmerge.library import Library
from modmerge.library.blobs import blob_path


def test_build_without_router(chosen_run, zoo_store, tmp_path):
    result = CliRunner().invoke(main, ["library", "build", str(chosen_run), str(tmp_path / "lib"),
                                       "--cache", str(zoo_store.root), "--no-router"])
    assert result.exit_code == 0, result.output
    assert Library.open(tmp_path / "lib").manifest.router is None and "router:" not in result.output


def test_build_ls_verify(chosen_run, zoo_store, tmp_path):
    runner = CliRunner()
    lib_dir = tmp_path / "lib"
    result = runner.invoke(main, ["library", "build", str(chosen_run), str(lib_dir), "--cache", str(zoo_store.root),
                                  "--router-per-task", "32", "--router-epochs", "2"])
    assert result.exit_code == 0, result.output
    lib = Library.open(lib_dir)
    # the router is trained by default, with the paper's lr, and stored with its accuracy and report
    router = lib.manifest.router
    assert router is not None and router.config["epochs"] == 2 and router.config["lr"] == 5e-4
    assert f"router: test accuracy {router.test_accuracy:.3f}" in result.output
    assert router.report["train_examples"] == 32 * len(lib.tasks) and router.backbone_blob is not None
    assert f"2 configurations, {len(lib.manifest.modules)} modules" in result.output
    assert f"{lib.blob_count} blobs" in result.output

    result = runner.invoke(main, ["library", "verify", str(lib_dir)])
    assert result.exit_code == 0 and result.output.strip() == f"ok: {lib.blob_count} blobs verified"

    result = runner.invoke(main, ["library", "ls", str(lib_dir), "--json"])
    assert result.exit_code == 0
    listed = json.loads(result.output)
    assert listed["configurations"] == lib.describe()
    assert listed["pretrained_body_bytes"] == lib.pretrained_body_bytes()

    result = runner.invoke(main, ["library", "ls", str(lib_dir)], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for row in lib.describe():
        assert f"{row['bytes_on_disk']:,}" in result.output and f"{row['disk_ratio']:.3f}" in result.output
    assert "disk / (C x body)" in result.output and "file overhead" in result.output

    broken = [lib.configurations[0].modules[0], lib.manifest.task("has_color").head]
    for digest in broken:
        path = blob_path(lib.blobs_dir, digest)
        path.write_bytes(path.read_bytes()[:100])
    result = runner.invoke(main, ["library", "verify", str(lib_dir)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line]
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert all(any(d in line for line in lines) for d in broken)


def test_cli_errors_are_one_line(tmp_path, zoo_store):
    runner = CliRunner()
    for args, needle in (
        (["library", "ls", str(tmp_path)], "manifest.json: missing"),
        (["library", "verify", str(tmp_path / "none")], "no such directory"),
        (["library", "build", str(tmp_path), str(tmp_path / "lib"), "--cache", str(zoo_store.root)],
         "pareto.json: not found"),
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, result.output
        # (a transient progress bar may leave a blank line when the output is not a terminal)
        out = result.output.strip()
        assert out.startswith("error: ") and needle in out and "\n" not in out
