"""Task suites: what a user writes to bring their own models and data.

A suite names a pretrained model and T tasks, each with its fine-tuned model (an ordinary
``AutoModelFor...Classification`` directory, a bare body plus a ``head`` file, or a PEFT adapter
directory) and its data files (JSONL, CSV, Parquet, or a ``datasets`` directory from
``save_to_disk``; a hub dataset id for users online)::

    pretrained: path/or/hub-id
    tasks:
      sentiment:
        model: path/or/hub-id
        data:
          train: data/sentiment/train.jsonl        # optional
          validation: data/sentiment/val.jsonl
          test: data/sentiment/test.jsonl
        input: text                    # a field, a pair [premise, hypothesis], or an image field
        label: label
        metric: accuracy               # accuracy | f1_macro | mcc | pearson | spearman

Relative paths are read from the suite file's folder. Unknown fields are errors that name them.

Example::

    >>> suite = load_suite("suite.yaml")                 # doctest: +SKIP
    >>> suite.tasks["sentiment"].input_fields            # doctest: +SKIP
    ['text']
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modmerge.tasks.spec import MetricName, Pooling, TaskError

SPLITS = ("train", "validation", "test")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SuiteData(_Strict):
    """A task's split files (or hub dataset ids, ``id`` or ``id:split``)."""

    train: str | None = Field(default=None, description="router training, statistics, calibration")
    validation: str = Field(description="what the search and the baselines' tuning evaluate on")
    test: str = Field(description="what every reported figure is measured on")

    def splits(self) -> dict[str, str]:
        return {s: p for s in SPLITS if (p := getattr(self, s)) is not None}


class SuiteTask(_Strict):
    """One task of a suite."""

    model: str = Field(description="fine-tuned model: HF directory or hub id, with its head, or a PEFT adapter")
    data: SuiteData
    input: str | list[str] = Field(default="text", description="field fed to the tokenizer, a pair, or an image field")
    label: str = "label"
    metric: MetricName = "accuracy"
    modality: Literal["text", "image"] | None = Field(default=None, description="default: from the pretrained config")
    head: str | None = Field(default=None, description="safetensors classifier file when `model` is a bare body")
    pooling: Pooling | None = Field(default=None, description="default: 'pooler' when the body has one, else 'cls'")
    label_names: list[str] | None = Field(default=None, description="default: the model config's id2label")
    max_length: int = Field(default=128, ge=1, description="tokenizer truncation")
    description: str = ""

    @field_validator("input")
    @classmethod
    def _one_or_two(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not 1 <= len(value) <= 2:
            raise ValueError("input must be one field or a pair of fields")
        return value

    @property
    def input_fields(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class TaskSuite(_Strict):
    """A suite file's content (see the module doc)."""

    name: str | None = Field(default=None, description="default: the suite file's stem")
    pretrained: str
    tasks: dict[str, SuiteTask] = Field(min_length=1)
    self_pretrained: bool = Field(default=False, description="the pretrained model was trained by this project")
    description: str = ""


def load_suite(path: str | Path) -> tuple[TaskSuite, Path]:
    """Parse and validate a suite file; returns the suite and the folder its paths are relative to.

    Errors are one line naming the file and the field.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise TaskError(f"{path}: cannot read suite ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise TaskError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise TaskError(f"{path}: a suite is a mapping with 'pretrained' and 'tasks'")
    try:
        suite = TaskSuite.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise TaskError(f"{path}: field '{where}': {first['msg']}") from None
    for name, task in suite.tasks.items():
        if not math.isfinite(task.max_length):
            raise TaskError(f"{path}: task '{name}' field 'max_length' must be finite")
    return suite, path.resolve().parent


def resolve_path(spec: str, root: Path) -> str:
    """``spec`` relative to the suite's folder when that names an existing path, else as given
    (a hub id)."""
    candidate = Path(spec).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    return str(candidate) if candidate.exists() else spec
