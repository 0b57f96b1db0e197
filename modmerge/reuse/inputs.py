"""Raw inputs of the reuse stage: validation, JSON-lines reading, and encoding for a backbone.

An input is ``{"text": str}``, ``{"image": path | array}`` or ``{"image_b64": str}`` (an image
file's bytes, base64-encoded: how a client uploads one), optionally with ``"task"`` (the
oracle task pattern for that input: the router is skipped for it) and ``"id"`` (echoed back).
Images are read as the zoo's image tasks store them: greyscale, the backbone's image size,
float32 in [0, 1] (``uint8 / 255.0``, the same expression the zoo's datasets use, so a PNG of a
zoo test image gives bit-identical pixels), then :func:`~modmerge.tasks.batching.pixel_values`.

Image files are decoded by :func:`modmerge.image_files.decode_greyscale`: only regular files,
and only if the header says they have at most ``max_pixels`` pixels.

Example::

    >>> parse_input({"text": "a red fox", "task": "has_animal"}, where="input 0")
    RawInput(kind='text', value='a red fox', task='has_animal', id=None)
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modmerge.errors import ModmergeError
from modmerge.image_files import DEFAULT_MAX_IMAGE_PIXELS, ImageFileError, decode_greyscale, resized
from modmerge.tasks.batching import EncodedTexts, pixel_values, tokenize

ALLOWED_FIELDS = frozenset({"text", "image", "image_b64", "task", "id"})


class InputError(ModmergeError):
    """An input (or a line of an input file) is malformed."""


@dataclass(frozen=True)
class RawInput:
    """One validated input: ``kind`` is ``"text"`` or ``"image"``."""

    kind: str
    value: Any
    task: str | None = None
    id: Any = None


def parse_input(item: Any, *, where: str) -> RawInput:
    """Validate one input dict; ``where`` names it in errors (e.g. ``"in.jsonl line 3"``).

    >>> parse_input({"image": "digit.png"}, where="input 0").kind
    'image'
    """
    if not isinstance(item, Mapping):
        raise InputError(f"{where}: expected an object like {{\"text\": ...}}, got {type(item).__name__}")
    unknown = sorted(set(item) - ALLOWED_FIELDS)
    if unknown:
        raise InputError(f"{where}: unknown field {unknown[0]!r} (fields: text, image or image_b64, optional task, id)")
    kinds = [k for k in ("text", "image", "image_b64") if k in item]
    if len(kinds) != 1:
        raise InputError(f"{where}: needs exactly one of 'text', 'image' or 'image_b64'")
    kind, value = kinds[0], item[kinds[0]]
    if kind == "text" and not isinstance(value, str):
        raise InputError(f"{where}: 'text' must be a string")
    if kind == "image_b64":
        kind, value = "image", decode_image_b64(value, where=where)
    if kind == "image" and not isinstance(value, str | Path | bytes | np.ndarray | torch.Tensor):
        raise InputError(f"{where}: 'image' must be a file path or an array")
    task = item.get("task")
    if task is not None and not isinstance(task, str):
        raise InputError(f"{where}: 'task' must be a string")
    return RawInput(kind=kind, value=value, task=task, id=item.get("id"))


def decode_image_b64(value: Any, *, where: str) -> bytes:
    """The image file bytes of an ``image_b64`` field (standard base64, padding required).

    >>> decode_image_b64("iVBORw==", where="input 0")[:4]
    b'\\x89PNG'
    """
    if not isinstance(value, str):
        raise InputError(f"{where}: 'image_b64' must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{where}: 'image_b64' is not valid base64") from None


def read_jsonl(path: Path) -> list[RawInput]:
    """Every non-blank line of ``path`` as an input; errors name the file and line number.

    >>> read_jsonl(Path("in.jsonl"))  # doctest: +SKIP
    [RawInput(kind='text', value='...', task=None, id=None), ...]
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: input file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: unreadable ({type(err).__name__})") from None
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path} line {number}: not valid JSON ({err.msg})") from None
        raw = parse_input(item, where=f"{path} line {number}")
        if raw.kind == "image" and isinstance(raw.value, str) and not Path(raw.value).is_absolute():
            # relative image paths are relative to the input file, so a dataset directory travels
            raw = RawInput(raw.kind, str(path.parent / raw.value), raw.task, raw.id)
        out.append(raw)
    return out


def load_image(value: Any, size: tuple[int, int], *, where: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> torch.Tensor:
    """A greyscale H x W float32 image in [0, 1] from a file path, an image file's bytes or an array.

    uint8 data is divided by 255 exactly as the zoo's datasets do; float arrays are taken as
    already in [0, 1]. Images of another size are resized (bilinear) to ``size`` (H, W). A file
    of more than ``max_pixels`` pixels is refused (InputError) before it is decoded.

    >>> load_image(np.zeros((28, 28), dtype=np.uint8), (28, 28), where="x").shape
    torch.Size([28, 28])
    """
    from PIL import Image

    if isinstance(value, str | Path | bytes):
        problem = None
        try:
            array = np.asarray(decode_greyscale(value, size, max_pixels=max_pixels))
        except ImageFileError as err:
            problem = f"{where}: {err}"
        if problem is not None:  # raised outside the except: see modmerge.image_files.decode_greyscale
            raise InputError(problem)
    else:
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        array = np.squeeze(array)
        if array.ndim == 3 and array.shape[-1] in (3, 4):  # colour: convert like PIL's "L"
            array = np.asarray(Image.fromarray(array.astype(np.uint8)[..., :3]).convert("L"))
        if array.ndim != 2:
            raise InputError(f"{where}: image array must be H x W (greyscale), got shape {tuple(array.shape)}")
        if array.size > max_pixels:
            raise InputError(f"{where}: image array of {array.shape[1]} x {array.shape[0]} pixels is over the limit "
                             f"of {max_pixels} pixels (max_image_pixels)")
        if tuple(array.shape) != size:
            mode = "L" if array.dtype == np.uint8 else "F"
            array = np.asarray(resized(Image.fromarray(array.astype(np.uint8 if mode == "L" else np.float32), mode), size))
    if array.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def encode_images(
    raws: Sequence[RawInput], size: tuple[int, int], *, where: str = "input", max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> torch.Tensor:
    """``pixel_values`` (N x 1 x H x W) of image inputs; files decoded one at a time.

    >>> encode_images([RawInput("image", np.zeros((28, 28), np.uint8))], (28, 28)).shape
    torch.Size([1, 1, 28, 28])
    """
    images = [load_image(r.value, size, where=f"{where} {i}", max_pixels=max_pixels) for i, r in enumerate(raws)]
    return pixel_values(torch.stack(images)) if images else torch.empty(0, 1, *size)


def decode_inputs(
    raws: Sequence[RawInput], size: tuple[int, int], *, where: str = "input", max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> list[RawInput]:
    """``raws`` with every image (path, file bytes, array) replaced by its H x W float32 tensor at
    ``size``: the decoding, and every way it can fail, done up front, one input at a time.

    >>> decode_inputs([RawInput("image", np.zeros((56, 56), np.uint8))], (28, 28))[0].value.shape
    torch.Size([28, 28])
    """
    return [RawInput(r.kind, load_image(r.value, size, where=f"{where} {i}", max_pixels=max_pixels), r.task, r.id)
            if r.kind == "image" else r for i, r in enumerate(raws)]


def encode_texts(tokenizer: Any, raws: Sequence[RawInput], max_length: int) -> EncodedTexts:
    """Token ids of text inputs, truncated to ``max_length`` as the zoo's task pools encode them.

    >>> encode_texts(tokenizer, [RawInput("text", "a red fox")], 16)  # doctest: +SKIP
    """
    return tokenize(tokenizer, [r.value for r in raws], max_length)


def select_rows(encoded: torch.Tensor | EncodedTexts, rows: torch.Tensor) -> torch.Tensor | EncodedTexts:
    """The examples at ``rows`` (a copy), in that order.

    >>> select_rows(EncodedTexts.from_lists([[1], [2, 3]], pad_id=0), torch.tensor([1])).ids.tolist()
    [2, 3]
    """
    if isinstance(encoded, EncodedTexts):
        starts, ends = encoded.offsets[rows], encoded.offsets[rows + 1]
        return EncodedTexts.from_lists([encoded.ids[s:e].tolist() for s, e in zip(starts.tolist(), ends.tolist(), strict=True)],
                                       pad_id=encoded.pad_id)
    return encoded[rows]
