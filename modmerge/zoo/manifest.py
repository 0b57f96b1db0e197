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

from pydantic import BaseModel, ConfigDict, Field

from modmerge.tasks.spec import BackboneInfo, TaskEntry

__all__ = ["BackboneInfo", "TaskEntry", "ZooManifest"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
