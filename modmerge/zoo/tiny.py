"""The ``tiny`` zoo: a few-second synthetic text zoo for the test suite.

A 2-layer BERT (hidden 32, vocabulary 61 words) with a real ``BertTokenizerFast`` built from a
generated ``vocab.txt``, so tests exercise the same text path (tokenisation, length-bucketed
batches, pooler as a head-kind key) as the real text zoo. The "pretrained" backbone is a seeded
RANDOM INITIALISATION: no pretraining at all, which the manifest says.

Sentences are 4-12 words drawn from four word groups (colours, animals, foods, tools) and
filler words. All tasks share that input distribution and vocabulary but label it differently,
so their fine-tuned bodies conflict when merged:

- ``has_animal``: does the sentence name an animal? (2 classes)
- ``has_color``: does it name a colour? (2 classes)
- ``first_group``: the group of the first non-filler word (4 classes)
- ``food_over_tool``: more food words than tool words? (2 classes)

Example::

    >>> zoo = build_tiny(ZooStore(tmp_path), seed=0)   # doctest: +SKIP
    >>> zoo.tasks                                      # doctest: +SKIP
    ['has_animal', 'has_color', 'first_group', 'food_over_tool']
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import transformers
from rich.progress import Progress

from modmerge.tasks.batching import text_batches
from modmerge.tasks.models import TaskClassifier, body_state, load_body
from modmerge.tasks.spec import BackboneInfo, TaskEntry
from modmerge.tasks.taskpool import build_metrics, encode_inputs, head_kind_keys
from modmerge.zoo.build import ZooWriter, count_parameters, fine_tune, new_head
from modmerge.zoo.datasets import Split, TaskData
from modmerge.zoo.datasets.base import task_rng
from modmerge.zoo.store import Zoo, ZooStore

logger = logging.getLogger(__name__)

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
GROUPS = {
    "color": ("red", "blue", "green", "yellow", "purple", "orange", "pink", "brown"),
    "animal": ("cat", "dog", "fox", "owl", "bear", "wolf", "deer", "frog"),
    "food": ("bread", "apple", "rice", "soup", "cheese", "plum", "bean", "corn"),
    "tool": ("hammer", "saw", "drill", "wrench", "knife", "rope", "nail", "brush"),
}
FILLERS = ("the", "a", "of", "and", "to", "in", "on", "with", "is", "was", "it", "that",
           "very", "some", "near", "under", "big", "small", "old", "new", "one", "two", "my", "his")  # fmt: skip
SIZES = {"train": 480, "validation": 128, "test": 256}
MAX_LENGTH = 16
FINE_TUNING = {"method": "full", "epochs": 8, "lr": 2e-3, "batch_size": 32, "max_length": MAX_LENGTH}


def _sentence(rng: np.random.Generator) -> tuple[list[str], dict[str, int]]:
    """A sentence and its word count per group; each group is present with probability 1/2."""
    length = int(rng.integers(4, 13))
    words = [str(w) for w in rng.choice(FILLERS, size=length)]
    counts = {}
    for group, vocab in GROUPS.items():
        counts[group] = int(rng.integers(1, 3)) if rng.random() < 0.5 else 0
        for _ in range(counts[group]):
            words[int(rng.integers(length))] = str(rng.choice(vocab))
    counts = {g: sum(w in GROUPS[g] for w in words) for g in GROUPS}  # overwrites may remove words
    return words, counts


def _first_group(words: list[str]) -> int:
    names = list(GROUPS)
    for word in words:
        for i, group in enumerate(names):
            if word in GROUPS[group]:
                return i
    return -1


LABELLERS: dict[str, tuple[tuple[str, ...], Callable[[list[str], dict[str, int]], int], str]] = {
    "has_animal": (("no", "yes"), lambda w, c: int(c["animal"] > 0), "does the sentence name an animal"),
    "has_color": (("no", "yes"), lambda w, c: int(c["color"] > 0), "does the sentence name a colour"),
    "first_group": (tuple(GROUPS), lambda w, c: _first_group(w), "group of the first non-filler word"),
    "food_over_tool": (("no", "yes"), lambda w, c: int(c["food"] > c["tool"]), "more food words than tool words"),
}


def tiny_task(name: str, seed: int) -> TaskData:
    """Seeded synthetic splits for one tiny task (sentences without a label are redrawn)."""
    label_names, labeller, description = LABELLERS[name]
    rng = task_rng(seed, f"tiny/{name}")
    splits = {}
    for split, size in SIZES.items():
        texts, labels = [], []
        while len(texts) < size:
            words, counts = _sentence(rng)
            label = labeller(words, counts)
            if label >= 0:
                texts.append(" ".join(words))
                labels.append(label)
        splits[split] = Split(texts, labels)
    return TaskData(name, "text", label_names, splits["train"], splits["validation"], splits["test"],
                    f"synthetic: {description}", source="synthetic")


def tiny_tokenizer(directory: Path) -> transformers.PreTrainedTokenizerBase:
    """A BERT WordPiece tokenizer over the tiny vocabulary (``vocab.txt`` written to ``directory``)."""
    words = [*SPECIAL, *FILLERS, *(w for vocab in GROUPS.values() for w in vocab)]
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(words) + "\n")
    # from_pretrained reads vocab.txt under both transformers 4.x and 5.x (their __init__s differ).
    return transformers.BertTokenizerFast.from_pretrained(str(directory), do_lower_case=True)


def tiny_body(vocab_size: int, seed: int) -> transformers.BertModel:
    """The tiny BERT body, randomly initialised from ``seed`` (this zoo's "pretrained" backbone)."""
    config = transformers.BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=MAX_LENGTH + 2, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transformers.BertModel(config).eval()


def build_tiny(store: ZooStore, *, seed: int = 0, progress: Progress | None = None) -> Zoo:
    """Build (or finish, or just open) the ``tiny`` zoo under ``store``; a few seconds on 2 cores.

    Example::

        >>> zoo = build_tiny(ZooStore(tmp_path))                   # doctest: +SKIP
        >>> zoo.manifest.task("has_animal").metrics["individual_test"]  # doctest: +SKIP
        0.98
    """
    started = time.perf_counter()
    writer = ZooWriter(store, "tiny", seed=seed)
    if (zoo := writer.existing()) is not None:
        return zoo
    if not writer.has_backbone():
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer = tiny_tokenizer(Path(tmp))
            body = tiny_body(len(tokenizer), seed)
            info = BackboneInfo(
                name="tiny-bert (random init)", architecture="bert", parameters=count_parameters(body),
                self_pretrained=True, source="modmerge.zoo.tiny (generated)",
                pretraining="none: seeded random initialisation (a test fixture, not a pretrained model)",
            )
            writer.write_backbone(body, info, tokenizer=tokenizer)
    tokenizer = transformers.AutoTokenizer.from_pretrained(writer.backbone_dir)
    pretrained_body = load_body(writer.backbone_dir)
    pretrained_state = {k: v.clone() for k, v in body_state(pretrained_body).items()}
    head_keys = head_kind_keys(list(pretrained_state), "bert")
    for i, name in enumerate(LABELLERS):
        if writer.has_task(name):
            continue
        task_started = time.perf_counter()
        data = tiny_task(name, seed)
        entry = TaskEntry(name=name, modality="text", description=data.description,
                          label_names=list(data.label_names), pooling="pooler", fine_tuning=dict(FINE_TUNING))
        encoded = {split: (encode_inputs(entry, s.inputs, tokenizer), torch.tensor(s.labels))
                   for split, s in data.splits().items()}
        model = TaskClassifier(load_body(writer.backbone_dir), new_head(32, data.num_classes, seed=seed + i),
                               pooling="pooler")
        train_x, train_y = encoded.pop("train")
        stats = fine_tune(
            model, lambda epoch, x=train_x, y=train_y: text_batches(
                x, y, batch_size=int(FINE_TUNING["batch_size"]), seed=seed, epoch=epoch),
            epochs=int(FINE_TUNING["epochs"]), lr=float(FINE_TUNING["lr"]), seed=seed + i, progress=progress,
            description=f"tiny: fine-tune {name}",
        )
        metrics = build_metrics(entry, model, pretrained_body, pretrained_state, encoded, head_keys=head_keys)
        entry = entry.model_copy(update={
            "metrics": metrics, "train_seconds": round(time.perf_counter() - task_started, 2),
            "fine_tuning": {**FINE_TUNING, "steps": stats["steps"], "final_loss": round(stats["final_loss"], 4)},
        })
        writer.write_task(entry, model.body, model.head, data)
        logger.info("tiny/%s: %s", name, {k: round(v, 3) for k, v in metrics.items()})
    writer.finish(
        notes=["synthetic test fixture: the backbone is a random initialisation, not pretrained",
               "tasks share one input distribution and vocabulary with different labels, so they conflict"],
        build_seconds=time.perf_counter() - started,
    )
    return store.load("tiny")
