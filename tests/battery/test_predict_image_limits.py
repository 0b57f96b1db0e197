"""`predict`'s image decoding: a pixel limit checked on the header, regular files only."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner
from serve_battery_support import b64, grey_png, header_bomb, pixel_decodes, png

import modmerge.reuse.engine as engine_module
from modmerge.cli import main
from modmerge.errors import ModmergeError
from modmerge.reuse.inputs import InputError, decode_inputs, load_image, parse_input


@pytest.mark.parametrize("source", ["path", "bytes"])
def test_files_over_the_pixel_limit_are_refused_before_decoding(tmp_path, source):
    data = png(5000, 5000)
    value = data if source == "bytes" else str(tmp_path / "big.png")
    (tmp_path / "big.png").write_bytes(data)
    what = f"image_b64 ({len(data)} bytes)" if source == "bytes" else f"image {value}"
    with pytest.raises(InputError) as err:
        load_image(value, (28, 28), where="in 3")
    assert str(err.value) == f"in 3: {what} is 5000 x 5000 pixels, over the limit of 16777216 pixels (max_image_pixels)"
    assert load_image(value, (28, 28), where="in 3", max_pixels=5000 * 5000).shape == (28, 28)


def test_a_bomb_beyond_pils_own_ceiling_is_one_line_naming_the_input(monkeypatch):
    decoded = pixel_decodes(monkeypatch)
    with pytest.raises(InputError, match=r"^input 0: image_b64 \(\d+ bytes\) is over the limit of 16777216 pixels"):
        parse_and_decode({"image_b64": b64(header_bomb(20000))})
    assert decoded == []  # refused from the header: no pixel was decompressed
    parse_and_decode({"image_b64": b64(grey_png(7, side=28))})
    assert decoded and set(decoded) == {(28, 28)}  # the counter does see a real decode


def parse_and_decode(item, **limits):
    return decode_inputs([parse_input(item, where="input 0")], (28, 28), **limits)


def test_arrays_are_bounded_too():
    with pytest.raises(InputError, match=r"image array of 100 x 50 pixels is over the limit of 1000 pixels"):
        load_image(np.zeros((50, 100), np.uint8), (28, 28), where="x", max_pixels=1000)


def test_decode_inputs_gives_the_backbone_size_and_keeps_text():
    raws = decode_inputs([parse_input({"image_b64": b64(grey_png(51, side=56))}, where="a"),
                          parse_input({"text": "hi"}, where="b")], (28, 28))
    assert raws[0].value.shape == (28, 28) and abs(float(raws[0].value.mean()) - 51 / 255) < 1e-6
    assert raws[1].value == "hi"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_image_paths_that_are_fifos_or_devices_never_block(tmp_path, monkeypatch):
    os.mkfifo(tmp_path / "pipe.png")
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    for path, kind in ((tmp_path / "pipe.png", "a FIFO"), ("/dev/zero", "a character device"), (tmp_path, "a directory")):
        with pytest.raises(InputError, match=rf"^in 1: image {path} is not a regular file \({kind}\)$"):
            load_image(str(path), (28, 28), where="in 1")
    assert opened == []  # refused from a stat: a FIFO is never opened, so nothing can wait on a writer


def test_predict_passes_max_image_pixels_to_the_engine(tmp_path, monkeypatch):
    seen = {}

    class Stop(ModmergeError):
        pass

    def fake_engine(library, **kwargs):
        seen.update(kwargs)
        raise Stop("stopped after the engine was configured")

    monkeypatch.setattr(engine_module, "ReuseEngine", fake_engine)
    monkeypatch.setattr("modmerge.cli.reuse._open_library", lambda lib_dir: None)
    monkeypatch.setattr("modmerge.cli.reuse.library_source", lambda lib, cache: None)
    (tmp_path / "in.jsonl").write_text('{"text": "x"}\n')
    args = ["predict", str(tmp_path), "--config", "c0", "--input", str(tmp_path / "in.jsonl"),
            "--output", str(tmp_path / "out.jsonl")]
    result = CliRunner().invoke(main, [*args, "--max-image-pixels", "1234"])
    assert result.exit_code == 2 and "stopped after the engine was configured" in result.output
    assert seen["max_image_pixels"] == 1234
    assert CliRunner().invoke(main, [*args]).exit_code == 2 and seen["max_image_pixels"] == 4096 * 4096
    refused = CliRunner().invoke(main, [*args, "--max-image-pixels", "0"])
    assert refused.exit_code == 2 and "--max-image-pixels" in refused.output
