"""PEFT adapters (LoRA, (IA)^3) seen as dense fine-tuned checkpoints, merged lazily per tensor.

A merge wants full weights, so an adapter directory opens as a :class:`Checkpoint` with the
base model's keys, each tensor the base tensor with the adapter applied when it is requested:

- LoRA: ``W + s * B @ A`` with ``s = alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``),
  transposed for GPT-2 ``Conv1D`` weights (``fan_in_fan_out``); embeddings use ``(B @ A).T``;
  ``lora_B.bias`` (``lora_bias=True``) is added to the base bias; per-module ``rank_pattern`` /
  ``alpha_pattern`` are honoured.
- (IA)^3: ``W * l`` where ``l`` scales the input dimension (columns) of feedforward modules and
  the output dimension (rows, and the bias) of the others.
- ``modules_to_save``: the saved full tensors replace the base ones (or are added when the base
  lacks them, e.g. a new classification head).

Not supported (refused with a clear error): DoRA, trainable-token deltas and other PEFT types.
Adapter names (``base_model.model.<path>.lora_A[.default].weight``) are mapped to base keys
even when the two differ by a task-model prefix such as ``bert.``.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modmerge.checkpoints.pickle_io import PickleSource, refuse_pickle
from modmerge.checkpoints.safetensors_io import SafetensorsFile
from modmerge.checkpoints.source import Checkpoint, TensorInfo, TensorSource, read_json
from modmerge.errors import CheckpointError

logger = logging.getLogger(__name__)

_PREFIX = "base_model.model."
_ADAPTER_KEY = re.compile(
    r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B|ia3_l|"
    r"lora_magnitude_vector)(?:\.(?!weight$|bias$)(?P<name>[^.]+))?(?:\.(?P<param>weight|bias))?$"
)


@dataclass(frozen=True)
class _Patch:
    """One adapter update to a base tensor, applied in float32 when the tensor is read."""

    kind: str  # "lora", "lora_embedding", "add" (bias), "scale" (ia3), "scale_flat" (ia3 bias)
    keys: tuple[str, ...]  # adapter tensors it reads
    scaling: float = 1.0
    transpose: bool = False


class _KeyMatcher:
    """Finds the base key an adapter name refers to when the two differ by a leading prefix."""

    def __init__(self, base_keys: list[str]) -> None:
        self.keys = set(base_keys)
        self.by_suffix: dict[str, list[str]] = {}
        for key in base_keys:
            parts = key.split(".")
            for i in range(1, len(parts)):
                self.by_suffix.setdefault(".".join(parts[i:]), []).append(key)

    def match(self, name: str, where: str) -> str | None:
        if name in self.keys:
            return name
        parts = name.split(".")
        for i in range(1, len(parts) - 1):  # the adapter's model had a prefix the base lacks
            if ".".join(parts[i:]) in self.keys:
                return ".".join(parts[i:])
        hits = self.by_suffix.get(name, [])  # the base has a prefix the adapter lacks
        if len(hits) > 1:
            raise CheckpointError(f"{where}: '{name}' matches several base tensors: {hits[:3]}")
        return hits[0] if hits else None


def _pattern_value(patterns: dict[str, Any], module: str, default: float) -> float:
    # PEFT matches pattern keys as regexes against the end of the module path.
    for pattern, value in patterns.items():
        if re.fullmatch(rf"(?:.*\.)?(?:{pattern})", module):
            return float(value)
    return default


def _is_feedforward(config: dict[str, Any], module: str) -> bool:
    ff = config.get("feedforward_modules") or []
    if isinstance(ff, str):
        return re.fullmatch(ff, module) is not None
    return any(module.endswith(name) for name in ff)


class AdapterSource:
    """The base model's tensors with a PEFT adapter merged in, one tensor at a time."""

    def __init__(
        self,
        label: str,
        base: TensorSource,
        adapter: TensorSource,
        config: dict[str, Any],
        *,
        owns_base: bool,
    ) -> None:
        self.label = label
        self._base = base
        self._adapter = adapter
        self._owns_base = owns_base
        self._base_keys = set(base.keys())
        self._patches: dict[str, list[_Patch]] = {}
        self._replaced: dict[str, str] = {}  # base (or new) key -> adapter key
        self._plan(config)

    def keys(self) -> list[str]:
        return self._base.keys() + [k for k in self._replaced if k not in self._base_keys]

    def info(self, key: str) -> TensorInfo:
        if key in self._base_keys:
            return self._base.info(key)
        if key in self._replaced:
            return self._adapter.info(self._replaced[key])
        raise CheckpointError(f"{self.label}: no tensor '{key}'")

    def get(self, key: str) -> torch.Tensor:
        info = self.info(key)
        if key in self._replaced:
            return self._adapter.get(self._replaced[key]).to(info.dtype)
        weight = self._base.get(key)
        patches = self._patches.get(key)
        if not patches:
            return weight
        out = weight.to(torch.float32)
        for patch in patches:
            out = self._apply(key, out, patch)
        return out.to(info.dtype)

    def release(self, key: str) -> None:
        release = getattr(self._base, "release", None)
        if release is not None and key in self._base_keys:
            release(key)

    def close(self) -> None:
        self._adapter.close()
        if self._owns_base:
            self._base.close()

    def _apply(self, key: str, weight: torch.Tensor, patch: _Patch) -> torch.Tensor:
        tensors = [self._adapter.get(k).to(torch.float32) for k in patch.keys]
        if patch.kind == "lora":
            a, b = tensors
            if a.dim() == 4:  # Conv2d: compose the two convolutions into one kernel
                if a.shape[-2:] == (1, 1):
                    delta = (b.flatten(1) @ a.flatten(1))[:, :, None, None]
                else:
                    delta = torch.nn.functional.conv2d(a.permute(1, 0, 2, 3), b).permute(1, 0, 2, 3)
            else:
                delta = b @ a
            delta = delta.T if patch.transpose else delta
            return weight + patch.scaling * delta
        if patch.kind == "lora_embedding":
            a, b = tensors
            return weight + patch.scaling * (b @ a).T
        if patch.kind == "add":
            return weight + patch.scaling * tensors[0]
        if patch.kind == "scale":
            vec = tensors[0].T if patch.transpose else tensors[0]
            return weight * vec
        if patch.kind == "scale_flat":
            return weight * tensors[0].reshape(weight.shape)
        raise CheckpointError(f"{self.label}: tensor '{key}' has unknown patch kind {patch.kind!r}")

    def _plan(self, config: dict[str, Any]) -> None:
        peft_type = str(config.get("peft_type", "")).upper()
        if peft_type not in ("LORA", "IA3"):
            raise CheckpointError(
                f"{self.label}: PEFT type {peft_type or '?'} is not supported (LoRA and IA3 only)"
            )
        if config.get("use_dora"):
            raise CheckpointError(f"{self.label}: DoRA adapters (use_dora) are not supported")
        matcher = _KeyMatcher(self._base.keys())
        modules: dict[str, dict[str, str]] = {}
        adapter_keys = self._adapter.keys()
        for key in adapter_keys:
            name = key.removeprefix(_PREFIX)
            m = _ADAPTER_KEY.match(name)
            if m is None:
                self._plan_full_tensor(key, name, matcher)
                continue
            part = m["kind"] + (f".{m['param']}" if m["param"] else "")
            modules.setdefault(m["module"], {})[part] = key
        for module, parts in modules.items():
            if "lora_magnitude_vector" in parts:
                raise CheckpointError(f"{self.label}: DoRA adapters (use_dora) are not supported")
            weight_key = matcher.match(f"{module}.weight", self.label)
            if weight_key is None:
                raise CheckpointError(
                    f"{self.label}: adapter module '{module}' has no matching base tensor "
                    f"'{module}.weight' (is this the right base model?)"
                )
            bias_key = matcher.match(f"{module}.bias", self.label)
            if peft_type == "LORA":
                self._plan_lora(config, module, parts, weight_key, bias_key)
            else:
                self._plan_ia3(config, module, parts, weight_key, bias_key)

    def _plan_full_tensor(self, key: str, name: str, matcher: _KeyMatcher) -> None:
        if "trainable_tokens" in name:
            raise CheckpointError(
                f"{self.label}: tensor '{key}': trainable-token deltas are not supported"
            )
        name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)
        target = matcher.match(name, self.label)
        if target is None:
            logger.info(
                "%s: '%s' is not in the base model; adding it as a new tensor", self.label, key
            )
            target = name
        elif self._adapter.info(key).shape != self._base.info(target).shape:
            raise CheckpointError(
                f"{self.label}: saved module tensor '{key}' has shape "
                f"{self._adapter.info(key).shape}, base tensor '{target}' has "
                f"{self._base.info(target).shape}"
            )
        self._replaced[target] = key

    def _need(self, parts: dict[str, str], part: str, module: str) -> str:
        if part not in parts:
            raise CheckpointError(
                f"{self.label}: adapter module '{module}' lacks its '{part}' tensor"
            )
        return parts[part]

    def _plan_lora(
        self,
        config: dict[str, Any],
        module: str,
        parts: dict[str, str],
        weight_key: str,
        bias_key: str | None,
    ) -> None:
        embedding = "lora_embedding_A" in parts
        a_key = self._need(parts, "lora_embedding_A" if embedding else "lora_A.weight", module)
        b_key = self._need(parts, "lora_embedding_B" if embedding else "lora_B.weight", module)
        rank = self._adapter.info(a_key).shape[0]
        alpha = _pattern_value(
            config.get("alpha_pattern") or {}, module, float(config.get("lora_alpha", 8))
        )
        scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        base_shape = self._base.info(weight_key).shape
        if embedding:
            patch = _Patch("lora_embedding", (a_key, b_key), scaling)
        else:
            b_out = self._adapter.info(b_key).shape[0]
            a_in = self._adapter.info(a_key).shape[1]
            transpose = bool(config.get("fan_in_fan_out"))
            # PEFT may switch fan_in_fan_out on for Conv1D layers without saving it; the shape
            # decides whenever it is unambiguous.
            if base_shape[:2] == (a_in, b_out) and base_shape[:2] != (b_out, a_in):
                transpose = True
            elif base_shape[:2] == (b_out, a_in) and base_shape[:2] != (a_in, b_out):
                transpose = False
            expected = (a_in, b_out) if transpose else (b_out, a_in)
            if base_shape[:2] != expected:
                raise CheckpointError(
                    f"{self.label}: LoRA update of '{module}' has shape {expected}, base tensor "
                    f"'{weight_key}' has {base_shape}"
                )
            patch = _Patch("lora", (a_key, b_key), scaling, transpose)
        self._patches.setdefault(weight_key, []).append(patch)
        if "lora_B.bias" in parts:
            if bias_key is None:
                raise CheckpointError(
                    f"{self.label}: LoRA bias for '{module}' but the base has no bias"
                )
            self._patches.setdefault(bias_key, []).append(
                _Patch("add", (parts["lora_B.bias"],), scaling)
            )

    def _plan_ia3(
        self,
        config: dict[str, Any],
        module: str,
        parts: dict[str, str],
        weight_key: str,
        bias_key: str | None,
    ) -> None:
        vec_key = self._need(parts, "ia3_l", module)
        transpose = bool(config.get("fan_in_fan_out"))
        vec_shape = self._adapter.info(vec_key).shape
        vec_shape = tuple(reversed(vec_shape)) if transpose else vec_shape
        base_shape = self._base.info(weight_key).shape
        try:
            ok = torch.broadcast_shapes(vec_shape, base_shape) == torch.Size(base_shape)
        except RuntimeError:
            ok = False
        if not ok:
            raise CheckpointError(
                f"{self.label}: IA3 vector of '{module}' has shape {vec_shape}, which cannot scale "
                f"base tensor '{weight_key}' of shape {base_shape}"
            )
        self._patches.setdefault(weight_key, []).append(
            _Patch("scale", (vec_key,), transpose=transpose)
        )
        if bias_key is not None and not _is_feedforward(config, module):
            self._patches.setdefault(bias_key, []).append(_Patch("scale_flat", (vec_key,)))


def adapter_base_spec(path: Path) -> tuple[str, str | None]:
    """The base model an adapter directory names (``base_model_name_or_path``) and its revision."""
    config = read_json(path / "adapter_config.json")
    spec = config.get("base_model_name_or_path")
    if not spec:
        raise CheckpointError(f"{path / 'adapter_config.json'}: no base_model_name_or_path; pass the base model explicitly")
    return str(spec), config.get("revision")


def open_adapter(
    path: Path, *, base: Checkpoint, allow_pickle: bool = False, owns_base: bool = False
) -> Checkpoint:
    """Open a PEFT adapter directory as a dense checkpoint over ``base``.

    With ``owns_base`` the base is closed with the returned checkpoint (or on failure here);
    :func:`~modmerge.checkpoints.resolve.open_checkpoint` opens the base an adapter names
    (:func:`adapter_base_spec`) that way.

    Example::

        >>> base = open_checkpoint("bert-base")  # doctest: +SKIP
        >>> tuned = open_adapter(Path("runs/lora-sst2"), base=base)  # doctest: +SKIP
        >>> tuned.get("encoder.layer.0.attention.self.query.weight")  # W + s * B @ A  # doctest: +SKIP
    """
    config = read_json(path / "adapter_config.json")
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        weights = path / "adapter_model.bin"
        if not weights.is_file():
            raise CheckpointError(f"{path}: adapter_config.json but no adapter_model.safetensors")
        if not allow_pickle:
            raise refuse_pickle(weights)
    adapter: TensorSource | None = None
    try:
        adapter = (
            SafetensorsFile(weights) if weights.suffix == ".safetensors" else PickleSource(weights)
        )
        source = AdapterSource(str(path), base.source, adapter, config, owns_base=owns_base)
    except CheckpointError:
        if adapter is not None:
            adapter.close()
        if owns_base:
            base.close()
        raise
    return Checkpoint(
        source=source,
        label=str(path),
        config=base.config,
        directory=base.directory,
        files=[weights],
    )
