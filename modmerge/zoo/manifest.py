"""A zoo's manifest: what was built, from what, how, and how well each task model does.

A zoo is a pretrained backbone plus T task-specific fine-tuned models with fixed splits. On disk
(``ZooStore(root).zoo_dir(name)``)::

    manifest.json                  this file's model, written last (its presence = zoo complete)
    build.json                     name and seed, written when a build starts (a resume must match)
    backbone/                      HF model directory of the pretrained body
    backbone.json                  its BackboneInfo (written after backbone/: its presence = backbone done)
    tasks/<task>/body/             HF model directory of the fine-tuned body (same keys as backbone)
    tasks/<task>/head.safetensors  the task head (classifier), never merged
    tasks/<task>/task.json         this task's TaskEntry (written last: its presence = task built)
    data/<task>.pt                 the task's splits (raw inputs + labels), cached
    data/cache/<task>.<split>.<key>.pt   tokenised texts, written by TaskPool on first use

Example::

    >>> m = ZooManifest.model_validate_json(Path("manifest.json").read_text())  # doctest: +SKIP
    >>> [t.name for t in m.tasks]  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MetricName = Literal["accuracy", "mcc", "macro_f1", "pearson_spearman"]
Pooling = Literal["pooler", "cls"]


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


class ZooManifest(_Model):
    """Everything needed to reproduce and to trust a zoo."""

    name: str
    format_version: int = 1
    created: str
    seed: int
    packages: dict[str, str] = Field(description="package -> version used to build")
    backbone: BackboneInfo
    tasks: list[TaskEntry]
    build_seconds: float
    notes: list[str] = Field(default_factory=list)
    sha256: dict[str, str] = Field(default_factory=dict, description="backbone files -> sha256")

    def task(self, name: str) -> TaskEntry:
        for entry in self.tasks:
            if entry.name == name:
                return entry
        raise KeyError(name)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]
