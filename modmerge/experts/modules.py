"""Modular experts, eq. (4): theta_hat_l^n = Q(F(theta_pre^l, Theta_l^n)).

A module is one unit (a component at the chosen granularity) merged over one group of tasks:
groups of two or more are merged with the static method F through the same executor as
``modmerge merge``; a singleton keeps its task's own tensors. Then the conditional compression Q
is applied tensor by tensor. A :class:`ModuleKey` names a module by value, so equal modules are
built once and shared by every configuration and expert chain that uses them.

>>> builder = ExpertBuilder(pretrained, task_states, units, MethodCall.build("ties", {}), QuantConfig())  # doctest: +SKIP
>>> module = builder.module(ModuleKey(unit="layer0.attn", members=(0, 2)))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from modmerge.checkpoints import in_memory
from modmerge.errors import MergeMethodError
from modmerge.lru import BytesLRU
from modmerge.merging.statistics import statistics_norm
from modmerge.quantization import CompressedTensor, QuantConfig, compress, dtype_bits, storage_dtype
from modmerge.recipes.execute import merged_tensors, model_scope_thresholds
from modmerge.recipes.plan import MethodCall

State = Mapping[str, torch.Tensor]


@dataclass(frozen=True, order=True)
class ModuleKey:
    """A module by value: which unit, which tasks' components were merged into it."""

    unit: str
    members: tuple[int, ...]

    @property
    def id(self) -> str:
        return f"{self.unit}@{'+'.join(map(str, self.members))}"

    @classmethod
    def from_id(cls, text: str) -> ModuleKey:
        """Inverse of :attr:`id`.

        >>> ModuleKey.from_id("layer0.attn@0+2")
        ModuleKey(unit='layer0.attn', members=(0, 2))
        """
        unit, _, members = text.rpartition("@")
        return cls(unit=unit, members=tuple(int(m) for m in members.split("+")))


@dataclass
class Module:
    """One modular expert: its compressed tensors and their storage accounting."""

    key: ModuleKey
    tensors: dict[str, CompressedTensor]

    def dequantized(self) -> dict[str, torch.Tensor]:
        return {k: t.dequantize() for k, t in self.tensors.items()}

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


class ExpertBuilder:
    """Builds and caches modules for one zoo, one method F and one quantisation setting.

    Compressed modules and their dequantised tensors are kept in two LRU caches, each bounded by
    ``cache_bytes``, because a search asks for the same modules again and again; a module evicted
    is built again when asked for (same seed, same tensors; ``builds`` counts every build).
    Storage costs outlive the cache (:class:`~modmerge.objectives.performance.ExpertCosts` keeps
    them per module).

    Modules are stored in the pretrained checkpoint's dtype (:attr:`dtype`, e.g. bfloat16): a merge
    runs in float32 and is rounded to it, a singleton keeps its task's values in it, so an
    unquantised unit costs what the checkpoint does and eq. (8)'s ``b_plus`` is :attr:`full_bits`.
    """

    def __init__(
        self,
        pretrained: State,
        tasks: Sequence[State],
        units: Mapping[str, Sequence[str]],
        call: MethodCall,
        quant: QuantConfig,
        *,
        statistics: Sequence[State] | None = None,
        seed: int = 0,
        cache_bytes: int = 2 * 2**30,
    ) -> None:
        self.pretrained, self.tasks, self.units = pretrained, list(tasks), {u: list(k) for u, k in units.items()}
        limit = call.merge_method.max_models
        if limit is not None and len(self.tasks) > limit:
            raise MergeMethodError(
                f"method '{call.method}' merges at most {limit} models, but a module may group all "
                f"{len(self.tasks)} tasks: choose a method without that limit (e.g. multislerp for slerp)"
            )
        self.call, self.quant, self.statistics, self.seed = call, quant, statistics, seed
        self.cache_bytes = cache_bytes
        self.dtype = storage_dtype(pretrained[k] for keys in self.units.values() for k in keys)
        self.full_bits = dtype_bits(self.dtype)
        self._modules: BytesLRU[ModuleKey, Module] = BytesLRU(cache_bytes)
        self._dense: BytesLRU[ModuleKey, dict[str, torch.Tensor]] = BytesLRU(cache_bytes)
        self.builds = 0
        self._norms: list[float] | None = None

    def module(self, key: ModuleKey) -> Module:
        """The compressed module (LRU-cached; built again if it was evicted)."""
        module = self._modules.get(key)
        if module is None:
            module = self._build(key)
            self.builds += 1
            self._modules.put(key, module, module.nbytes)
        return module

    def dense(self, key: ModuleKey) -> dict[str, torch.Tensor]:
        """The module's dequantised tensors, as a body consumes them (LRU-cached; read-only:
        full-precision tensors share memory with the compressed module)."""
        tensors = self._dense.get(key)
        if tensors is None:
            tensors = self.module(key).dequantized()
            self._dense.put(key, tensors, sum(t.nbytes for t in tensors.values()))
        return tensors

    def _merged(self, key: ModuleKey) -> dict[str, torch.Tensor]:
        keys = self.units[key.unit]
        if len(key.members) == 1:
            own = self.tasks[key.members[0]]
            return {k: own[k].to(self.dtype, copy=True) for k in keys}
        base = in_memory({k: self.pretrained[k] for k in keys}, label="pretrained")
        models = [in_memory({k: self.tasks[i][k] for k in keys}, label=f"task{i}") for i in key.members]
        plan = dict.fromkeys(keys, self.call)
        stats = None if self.statistics is None else [self.statistics[i] for i in key.members]
        thresholds = model_scope_thresholds(base, models, plan)
        wants_norms = stats is not None and "stats_norms" in self.call.merge_method.accepts
        norms = [self._statistics_norms()[i] for i in key.members] if wants_norms else None
        return dict(merged_tensors(base, models, plan, statistics=stats, seed=self.seed, thresholds=thresholds,
                                   out_dtype=self.dtype, statistics_norms=norms))

    def _statistics_norms(self) -> list[float]:
        """Each task's statistics norm over the whole body (every unit), computed once: Fisher
        normalised over the model divides by it, whichever unit a module merges."""
        if self._norms is None:
            assert self.statistics is not None
            keys = [k for unit_keys in self.units.values() for k in unit_keys]
            self._norms = [statistics_norm(s, keys) for s in self.statistics]
        return self._norms

    def _build(self, key: ModuleKey) -> Module:
        merged = self._merged(key)
        compressed = {
            k: compress(v, [self.tasks[i][k].float() for i in key.members], config=self.quant) for k, v in merged.items()
        }
        return Module(key=key, tensors=compressed)
