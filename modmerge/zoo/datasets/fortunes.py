"""Fortune-cookie quote topic (Debian ``fortunes`` + ``fortunes-min``).

Each category file holds quotes separated by lines of a single ``%``. Labels are the file's
category, so they are noisy (a "politics" quote may be a joke about anything). Six of the
larger categories are used (:data:`CATEGORIES`); a pilot with TF-IDF + logistic regression put
this set at ~64% accuracy, far from both chance (17%) and ceiling. The big catch-all files
(``people``, ``cookie``, ``miscellaneous``, ``definitions``) are left out: they are topics of
form or source, not of content. Whitespace is collapsed; a quote found in more than one of
the chosen files is dropped.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from modmerge.zoo.datasets.base import (
    DEFAULT_SEED,
    TEXT_SIZES,
    SplitSizes,
    TaskData,
    build_splits,
    require,
    task_rng,
)

CATEGORIES = ("computers", "men-women", "politics", "science", "songs-poems", "work")
_SEPARATOR = re.compile(r"^%[ \t]*$", re.MULTILINE)


def read_fortune_file(path: Path) -> list[str]:
    """Quotes of one fortune file, whitespace collapsed, empty entries dropped.

    Example::

        >>> read_fortune_file(store.fortunes() / "science")[:1]   # doctest: +SKIP
        ['1 + 1 = 3, for large values of 1.']
    """
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    return [quote for chunk in _SEPARATOR.split(text) if (quote := " ".join(chunk.split()))]


def read_fortunes(fortune_dir: Path, categories: Sequence[str] = CATEGORIES) -> list[tuple[str, int]]:
    """``(quote, category index)`` for the given category files, cross-category duplicates removed."""
    per_category = []
    for category in categories:
        path = Path(fortune_dir) / category
        require(path.is_file(), "fortunes", f"missing category file {path}")
        per_category.append(set(read_fortune_file(path)))
    owners = Counter(quote for quotes in per_category for quote in quotes)
    return sorted((q, c) for c, quotes in enumerate(per_category) for q in quotes if owners[q] == 1)


def fortune_task(
    fortune_dir: Path, seed: int = DEFAULT_SEED, sizes: SplitSizes = TEXT_SIZES,
    categories: Sequence[str] = CATEGORIES,
) -> TaskData:
    """Topic of a fortune quote among ``categories``.

    Example::

        >>> fortune_task(store.fortunes()).label_names   # doctest: +SKIP
        ('computers', 'men-women', 'politics', 'science', 'songs-poems', 'work')
    """
    rows = read_fortunes(fortune_dir, categories)
    require(len(rows) >= 10 * len(categories), "fortunes", f"only {len(rows)} quotes in {fortune_dir}")
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    train, validation, test = build_splits(texts, labels, sizes, task_rng(seed, "fortunes"))
    return TaskData(
        name="fortune_topic", modality="text", label_names=tuple(categories), train=train,
        validation=validation, test=test,
        description=f"topic of a fortune-cookie quote ({len(categories)} categories, noisy labels)",
        source="fortunes",
    )
