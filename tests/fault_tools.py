"""Helpers of the fault-injection tests (test_faults_*.py, test_crash.py): damage files the way
an operator's disk or editor would, and read what a CLI said."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def prepare_args(data: Path, out: Path, image_size: int, shard_size: int) -> list[str]:
    """``prepare`` flags for a small synthetic cache (random weights, min count 1)."""
    return ["--dataset", "synthetic", "--data-dir", str(data), "--out", str(out), "--weights",
            "none", "--image-size", str(image_size), "--min-count", "1", "--shard-size",
            str(shard_size), "--quiet"]


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Invert one byte (default: the middle of the file, inside a record's features)."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def keep_records(path: Path, keep: int) -> None:
    """Rewrite a TFRecord file with only its first ``keep`` records: a shorter but valid file."""
    import tensorflow as tf

    records = [r.numpy() for r in tf.data.TFRecordDataset(str(path))][:keep]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    """Replace the file's JSON by ``change(data)`` (like a hand edit)."""
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def with_value(data: dict, keys: str, value: Any) -> dict:
    """``data`` with ``data[k1][k2]... = value`` (``keys`` joined by "/")."""
    *parents, last = keys.split("/")
    node = data
    for key in parents:
        node = node[key]
    node[last] = value
    return data


def dead_pid() -> int:
    """The pid of a process that has already exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def temp_of(name: str, pid: int, kind: str = "tmp") -> str:
    """The temp name a writer with ``pid`` on this host uses for ``name`` (icapnet.io)."""
    from icapnet.io import temp_prefix

    host = temp_prefix(Path(name)).rsplit("-", 1)[1]
    return f".{name}.{kind}-{pid}-{host}"


def error_line(err: str) -> str:
    """The one ``error: ...`` line a CLI printed (nothing else on stderr but TF's own noise)."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err, err
    return errors[0]
