"""Model inputs for zoo tasks: encoding once, then cheap batches for training and evaluation.

Images become ``pixel_values`` (N x 1 x H x W, normalised to [-1, 1] as ViT image processors do)
once per split. Texts are tokenised once per split into :class:`EncodedTexts` (token ids packed
flat, no padding); a batch is padded only to its own longest text. Sorting texts by length
before cutting batches (length bucketing) is the main CPU speed lever for short texts: a batch
of tweets is padded to ~30 tokens instead of the split's longest ~128.

Example::

    >>> import torch
    >>> enc = EncodedTexts.from_lists([[2, 7, 3], [2, 3]], pad_id=0)
    >>> enc.batch(torch.tensor([0, 1]))["input_ids"]
    tensor([[2, 7, 3],
            [2, 3, 0]])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

Inputs = dict[str, torch.Tensor]
Batch = tuple[Inputs, torch.Tensor]


def pixel_values(images: torch.Tensor) -> torch.Tensor:
    """float32 N x H x W images in [0, 1] -> ViT input N x 1 x H x W in [-1, 1].

    >>> pixel_values(torch.ones(2, 28, 28)).shape
    torch.Size([2, 1, 28, 28])
    """
    return ((images.float() - 0.5) / 0.5).unsqueeze(1).contiguous()


@dataclass(frozen=True)
class EncodedTexts:
    """Token ids of N texts packed into one flat tensor; ``offsets[i]:offsets[i+1]`` is text i."""

    ids: torch.Tensor  # int64, sum of lengths
    offsets: torch.Tensor  # int64, N + 1
    pad_id: int

    @classmethod
    def from_lists(cls, ids: Sequence[Sequence[int]], pad_id: int) -> EncodedTexts:
        lengths = torch.tensor([len(x) for x in ids], dtype=torch.int64)
        offsets = torch.zeros(len(ids) + 1, dtype=torch.int64)
        torch.cumsum(lengths, 0, out=offsets[1:])
        flat = torch.tensor([t for x in ids for t in x], dtype=torch.int64)
        return cls(flat, offsets, pad_id)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def head(self, n: int) -> EncodedTexts:
        """The first ``n`` texts (a prefix of the packed ids, no copy)."""
        n = min(n, len(self))
        return EncodedTexts(self.ids[: int(self.offsets[n])], self.offsets[: n + 1], self.pad_id)

    def batch(self, indices: torch.Tensor) -> Inputs:
        """``input_ids`` and ``attention_mask`` of the texts at ``indices``, padded to the longest."""
        lengths = self.lengths[indices]
        width = int(lengths.max()) if len(indices) else 0
        input_ids = torch.full((len(indices), width), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(indices), width), dtype=torch.int64)
        for row, i in enumerate(indices.tolist()):
            n = int(lengths[row])
            input_ids[row, :n] = self._ids(i)
            mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def _ids(self, i: int) -> torch.Tensor:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def to_payload(self) -> dict[str, Any]:
        """A ``torch.save``-able dict (loadable with ``weights_only=True``)."""
        return {"ids": self.ids, "offsets": self.offsets, "pad_id": self.pad_id}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> EncodedTexts:
        return cls(payload["ids"], payload["offsets"], int(payload["pad_id"]))


def tokenize(tokenizer: Any, texts: Sequence[str] | Sequence[tuple[str, str]], max_length: int) -> EncodedTexts:
    """Tokenise ``texts`` once (truncated to ``max_length``, no padding); 2-tuples are encoded as
    sentence pairs (``[CLS] a [SEP] b [SEP]``, truncating the longer first).

    ``tokenizer`` is a Hugging Face tokenizer (``AutoTokenizer.from_pretrained(backbone_dir)``).
    """
    texts = list(texts)
    if texts and isinstance(texts[0], (tuple, list)):
        first, second = [str(t[0]) for t in texts], [str(t[1]) for t in texts]
        encoded = tokenizer(first, second, truncation="longest_first", max_length=max_length, padding=False)
    else:
        encoded = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return EncodedTexts.from_lists(encoded["input_ids"], pad_id=pad_id)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def image_batches(
    pixels: torch.Tensor, labels: torch.Tensor, *, batch_size: int, seed: int, epoch: int, shuffle: bool = True
) -> list[Batch]:
    """Training batches of ``pixel_values``: a fresh seeded shuffle per ``epoch``.

    >>> batches = image_batches(torch.zeros(5, 1, 4, 4), torch.arange(5), batch_size=2, seed=0, epoch=0)
    >>> [len(y) for _, y in batches]
    [2, 2, 1]
    """
    order = torch.randperm(len(labels), generator=_epoch_generator(seed, epoch)) if shuffle else torch.arange(len(labels))
    return [
        ({"pixel_values": pixels[idx]}, labels[idx])
        for idx in torch.split(order, batch_size)
    ]


def text_batches(
    encoded: EncodedTexts, labels: torch.Tensor, *, batch_size: int, seed: int, epoch: int,
    bucket_batches: int = 50,
) -> list[Batch]:
    """Training batches with length bucketing: seeded shuffle, sort by length within chunks of
    ``bucket_batches`` batches, cut, then shuffle the batch order (so lengths do not trend).

    >>> enc = EncodedTexts.from_lists([[1] * n for n in (5, 1, 4, 2)], pad_id=0)
    >>> sorted(b[0]["input_ids"].shape[1] for b in text_batches(enc, torch.arange(4), batch_size=2, seed=0, epoch=0))
    [2, 5]
    """
    gen = _epoch_generator(seed, epoch)
    order = torch.randperm(len(labels), generator=gen)
    lengths = encoded.lengths
    groups: list[torch.Tensor] = []
    for chunk in torch.split(order, batch_size * bucket_batches):
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        groups.extend(torch.split(chunk, batch_size))
    batch_order = torch.randperm(len(groups), generator=gen).tolist()
    return [(encoded.batch(groups[b]), labels[groups[b]]) for b in batch_order]


def eval_batches(inputs: torch.Tensor | EncodedTexts, batch_size: int) -> Iterator[tuple[torch.Tensor, Inputs]]:
    """``(indices, model inputs)`` covering every example once; texts longest first (lengths sorted,
    so padding is minimal and the slowest batch shows up first in a progress bar).

    >>> [idx.tolist() for idx, _ in eval_batches(torch.zeros(3, 1, 2, 2), 2)]
    [[0, 1], [2]]
    """
    if isinstance(inputs, EncodedTexts):
        order = torch.argsort(inputs.lengths, descending=True, stable=True)
        for idx in torch.split(order, batch_size):
            yield idx, inputs.batch(idx)
    else:
        for idx in torch.split(torch.arange(len(inputs)), batch_size):
            yield idx, {"pixel_values": inputs[idx]}


def select(inputs: torch.Tensor | EncodedTexts, indices: torch.Tensor) -> Inputs:
    """Model inputs of the examples at ``indices``, in that order (texts padded to the batch's
    longest): a drawn batch, as AdaMerging's adaptation draws them.

    >>> select(torch.zeros(5, 1, 2, 2), torch.tensor([4, 0]))["pixel_values"].shape
    torch.Size([2, 1, 2, 2])
    """
    return inputs.batch(indices) if isinstance(inputs, EncodedTexts) else {"pixel_values": inputs[indices]}


def take_first(inputs: torch.Tensor | EncodedTexts, n: int) -> torch.Tensor | EncodedTexts:
    """The first ``n`` examples (the size-constrained subset D'_t)."""
    return inputs.head(n) if isinstance(inputs, EncodedTexts) else inputs[:n]
