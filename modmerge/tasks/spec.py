"""What the task runtime knows of a task and of its pretrained body, whatever their origin.

A :class:`TaskEntry` describes one task (modality, metric, pooling, labels, how its inputs are
read); a :class:`BackboneInfo` the pretrained body every task model was fine-tuned from. A
benchmark zoo's manifest and a user's task suite both produce them, so everything downstream of
``modmerge.tasks`` reads one description.

Example::

    >>> TaskEntry(name="sst2", modality="text", description="", label_names=["neg", "pos"],
    ...           pooling="pooler").metric
    'accuracy'
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from modmerge.errors import ModmergeError

MetricName = Literal["accuracy", "mcc", "macro_f1", "f1_macro", "pearson", "spearman", "pearson_spearman"]
Pooling = Literal["pooler", "cls"]


class TaskError(ModmergeError):
    """A task, its model or its data cannot be used (names the task, file, row or field)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackboneInfo(_Model):
    """The pretrained body every task model was fine-tuned from."""

    name: str = Field(description="e.g. 'all-MiniLM-L6-v2' or 'vit-tiny (self-pretrained)'")
    path: str = Field(default="backbone", description="HF directory, relative to the zoo directory")
    architecture: str = Field(description="component architecture name, e.g. 'bert' or 'vit'")
    parameters: int
    self_pretrained: bool = Field(description="pretrained inside this project (say so in every report)")
    source: str = Field(description="where the weights came from, with version")
    pretraining: str = Field(default="", description="how it was pretrained, when self-pretrained")
    train_seconds: float = Field(default=0.0, description="pretraining wall time, when self-pretrained")


class TaskEntry(_Model):
    """One task: its data, its fine-tuned model, and how well it does."""

    name: str
    modality: Literal["text", "image"]
    description: str
    label_names: list[str]
    metric: MetricName = "accuracy"
    pooling: Pooling = Field(description="'pooler': BERT pooler output; 'cls': first token of the last layer")
    # Paths, sizes and hashes below are filled in by ZooWriter.write_task; builders leave them empty.
    body: str = Field(default="", description="HF directory of the fine-tuned body, relative to the zoo directory")
    head: str = Field(default="", description="safetensors file of the task head, relative to the zoo directory")
    head_parameters: int = 0
    data: str = Field(default="", description="cached splits file, relative to the zoo directory")
    split_sizes: dict[str, int] = Field(default_factory=dict)
    derived: bool = False
    fine_tuning: dict[str, float | int | str] = Field(default_factory=dict, description="method, epochs, lr, ...")
    train_seconds: float = 0.0
    metrics: dict[str, float] = Field(
        default_factory=dict, description="e.g. individual_validation, individual_test, pretrained_test"
    )
    sha256: dict[str, str] = Field(default_factory=dict, description="relative file -> sha256")
    input_fields: list[str] = Field(
        default_factory=list, description="data fields fed to the tokenizer (one, or a pair) or the image field; "
        "empty for a zoo's stored inputs")
    max_length: int | None = Field(default=None, description="tokenizer truncation (default: fine_tuning's, or 128)")
