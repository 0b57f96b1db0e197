"""Reading a task's data files: rows from JSONL, CSV, Parquet or a ``datasets`` directory.

Rows are plain dicts. :func:`read_rows` picks the reader by suffix (a directory holding
``dataset_info.json`` or ``state.json`` is a ``datasets`` save; an ``id`` or ``id:split`` that is
no path is a hub dataset, for users online). Every error names the file, and the row (1-based,
as an editor shows it) and field where there is one.

Example::

    >>> rows = read_rows("data/sentiment/val.jsonl")      # doctest: +SKIP
    >>> rows[0]                                           # doctest: +SKIP
    {'text': 'a fine film', 'label': 1}
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from modmerge.tasks.spec import TaskError

Row = dict[str, Any]


def read_rows(spec: str) -> list[Row]:
    """The rows of a data file, a ``datasets`` directory, or a hub dataset (see the module doc)."""
    path = Path(spec)
    if path.is_dir():
        return _read_saved_dataset(path)
    if not path.exists():
        if path.suffix or "/" not in spec.split(":")[0]:
            raise TaskError(f"{spec}: no such data file")
        return _read_hub_dataset(spec)
    readers = {".jsonl": _read_jsonl, ".json": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise TaskError(f"{path}: unknown data format '{path.suffix}' (JSONL, CSV, Parquet or a datasets directory)")
    return reader(path)


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    try:
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise TaskError(f"{path}: row {number}: not valid JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise TaskError(f"{path}: row {number}: a row is a JSON object, got {type(row).__name__}")
                rows.append(row)
    except UnicodeDecodeError:
        raise TaskError(f"{path}: not UTF-8 text") from None
    except OSError as err:
        raise TaskError(f"{path}: cannot read ({err.strerror or err})") from None
    return rows


def _read_csv(path: Path) -> list[Row]:
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            return [dict(row) for row in csv.DictReader(fh)]
    except (UnicodeDecodeError, csv.Error) as err:
        raise TaskError(f"{path}: not a readable CSV file ({err})") from None
    except OSError as err:
        raise TaskError(f"{path}: cannot read ({err.strerror or err})") from None


def _read_parquet(path: Path) -> list[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TaskError(f"{path}: Parquet needs pyarrow (pip install 'modmerge[data]')") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises its own family for corrupt files
        raise TaskError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise TaskError("datasets directories and hub datasets need `datasets` (pip install 'modmerge[data]')") from None
    return datasets


def _read_saved_dataset(path: Path) -> list[Row]:
    if not any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        raise TaskError(f"{path}: a directory that is not a `datasets` save_to_disk folder")
    datasets = _datasets()
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:
        raise TaskError(f"{path}: cannot load the dataset ({str(err).splitlines()[0]})") from None
    if isinstance(loaded, datasets.DatasetDict):
        raise TaskError(f"{path}: holds several splits ({', '.join(loaded)}); name one split's folder")
    return [dict(row) for row in loaded]


def _read_hub_dataset(spec: str) -> list[Row]:
    name, _, split = spec.partition(":")
    datasets = _datasets()
    try:
        loaded = datasets.load_dataset(name, split=split or "train")
    except Exception as err:
        raise TaskError(f"{spec}: cannot load hub dataset ({str(err).splitlines()[0]})") from None
    return [dict(row) for row in loaded]


def field_values(rows: list[Row], field: str, label: str) -> list[Any]:
    """Column ``field`` of ``rows``; a one-line error names the first row without it."""
    for number, row in enumerate(rows, start=1):
        if field not in row or row[field] is None:
            known = ", ".join(sorted(row)[:8])
            raise TaskError(f"{label}: row {number}: no field '{field}' (fields: {known})")
    return [row[field] for row in rows]
