"""Tokenizer and processor files that are symlinks: `merge` copies a file only when it really lives
in the model directory, so a link cannot pull an outside file's contents into the output.

- a symlink that resolves outside the model directory (absolute, relative, or through another
  link) is skipped, with a warning naming it;
- a symlink that resolves to a regular file inside the model directory is followed: the output
  gets a regular file with its contents (the file is the model's own either way);
- a Hugging Face cache snapshot (``models--ORG--NAME/snapshots/REV``) is the exception the cache
  layout makes: its files link into the repository's ``blobs/``, which they may.

`merge` used to follow every link.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import yaml
from battery_support import invoke

SECRET = "the contents of a file outside the model directory"


def _recipe(tmp_path: Path, base: Path, tasks: list[Path]) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"base_model": str(base), "models": [{"model": str(t)} for t in tasks],
                                    "method": "task_arithmetic"}))
    return path


def _base_with_links(bert_zoo, tmp_path: Path) -> Path:
    base = shutil.copytree(bert_zoo[0], tmp_path / "base")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text(SECRET)
    (base / "vocab.txt").write_text("[PAD]\n[UNK]\n")  # a regular file: copied
    (base / "tokenizer.json").symlink_to(outside / "secret.json")  # absolute, outside
    (base / "merges.txt").symlink_to(Path("..") / "outside" / "secret.json")  # relative, outside
    (base / "hop").symlink_to(outside / "secret.json")
    (base / "tokenizer_config.json").symlink_to("hop")  # inside link to a link that leaves
    (base / "shared").mkdir()
    (base / "shared" / "special.json").write_text('{"pad_token": "[PAD]"}')
    (base / "special_tokens_map.json").symlink_to(Path("shared") / "special.json")  # inside: followed
    (base / "added_tokens.json").symlink_to(base / "shared" / "special.json")  # absolute, but inside
    return base


def test_merge_copies_no_file_a_symlink_brings_from_outside(bert_zoo, tmp_path, caplog):
    base = _base_with_links(bert_zoo, tmp_path)
    out = tmp_path / "merged"
    with caplog.at_level(logging.WARNING):
        result = invoke(["merge", _recipe(tmp_path, base, bert_zoo[1][:2]), out])
    assert result.exit_code == 0, result.output
    written = {p.name for p in out.iterdir()}
    assert {"tokenizer.json", "merges.txt", "tokenizer_config.json"}.isdisjoint(written)
    assert all(SECRET not in p.read_bytes().decode(errors="replace") for p in out.iterdir())
    skipped = "\n".join(r.getMessage() for r in caplog.records)
    for name in ("tokenizer.json", "merges.txt", "tokenizer_config.json"):
        assert str(base / name) in skipped and "outside" in skipped
    # what lives inside is copied, as regular files
    assert (out / "vocab.txt").read_text() == "[PAD]\n[UNK]\n"
    for name in ("special_tokens_map.json", "added_tokens.json"):
        assert not (out / name).is_symlink() and (out / name).read_text() == '{"pad_token": "[PAD]"}'


def test_a_hub_cache_snapshot_links_into_its_blobs(bert_zoo, tmp_path):
    repo = tmp_path / "hub" / "models--org--tiny-bert"
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(bert_zoo[0], snapshot)
    (repo / "blobs").mkdir()
    (repo / "blobs" / "9f86d081").write_text('{"model": {"vocab": {}}}')
    (snapshot / "tokenizer.json").symlink_to(Path("..") / ".." / "blobs" / "9f86d081")
    (tmp_path / "secret.json").write_text(SECRET)
    (snapshot / "vocab.txt").symlink_to(tmp_path / "secret.json")  # out of the repository: skipped
    out = tmp_path / "merged"
    result = invoke(["merge", _recipe(tmp_path, snapshot, bert_zoo[1][:2]), out])
    assert result.exit_code == 0, result.output
    assert (out / "tokenizer.json").read_text() == '{"model": {"vocab": {}}}'
    assert not (out / "vocab.txt").exists()
