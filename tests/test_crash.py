"""``kill -9`` of a real ``python -m icapnet.train`` process (issue 12, case 12).

The run is killed twice: in the middle of an epoch, then inside the write of a checkpoint
(its temp file complete, the rename not done). Each time the same command is run again; at
the end the history holds every epoch once and the weights equal those of an uninterrupted
run, and no temp file of the killed writes is left.

Where to kill is made certain, not timed: the killed processes run the train CLI through a
small wrapper that pauses (sleeps) at the chosen batch or inside the chosen checkpoint's
fsync and drops a marker file; the test waits for the marker and sends SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from icapnet import prepare
from icapnet.model.store import load_model_dir

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--epochs", "4", "--batch-size", "4", "--units", "8", "--embedding-dim", "8",
         "--attention-units", "8", "--dropout", "0.3", "--learning-rate", "0.01", "--seed",
         "3", "--quiet"]

PAUSING_TRAIN = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path

    marker, where = Path(os.environ["CRASH_MARKER"]), os.environ["PAUSE_AT"]

    def pause():
        marker.write_text(str(os.getpid()))
        time.sleep(600)  # killed here

    if where.startswith("batch:"):  # batch:EPOCH:BATCH (0-based)
        from icapnet.model.callbacks import EpochRecorder
        _, epoch, batch = (int(x) if x.isdigit() else x for x in where.split(":"))
        seen = {}
        begin = EpochRecorder.on_epoch_begin

        def on_epoch_begin(self, e, logs=None):
            seen["epoch"] = e
            return begin(self, e, logs)

        def on_train_batch_end(self, b, logs=None):
            if seen.get("epoch") == epoch and b == batch:
                pause()

        EpochRecorder.on_epoch_begin = on_epoch_begin
        EpochRecorder.on_train_batch_end = on_train_batch_end
    else:  # write:NAME: inside the fsync of NAME's temp file, before the rename
        name = where.split(":", 1)[1]
        real_fsync = os.fsync

        def fsync(fd):
            if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{name}.tmp-"):
                pause()
            return real_fsync(fd)

        os.fsync = fsync

    from icapnet.errors import run_cli
    from icapnet.train import main
    sys.exit(run_cli(main, sys.argv[1:]))
''')


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def _start(args: list[str], tmp: Path, pause_at: str | None = None) -> subprocess.Popen:
    if pause_at is None:
        command = [sys.executable, "-m", "icapnet.train", *args]
        env = _env()
    else:
        script = tmp / "pausing_train.py"
        script.write_text(PAUSING_TRAIN)
        command = [sys.executable, str(script), *args]
        env = {**_env(), "PAUSE_AT": pause_at, "CRASH_MARKER": str(tmp / "paused")}
    # Output to files, not pipes: a pipe nobody reads could block the run before its pause.
    log = tmp / f"train-{len(list(tmp.glob('train-*.log')))}.log"
    proc = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _kill_when_paused(proc: subprocess.Popen, marker: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before pausing:\n"
                                 f"{proc.log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("never reached the pause point")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    marker.unlink()


def _finish(proc: subprocess.Popen) -> None:
    proc.wait(timeout=600)
    assert proc.returncode == 0, proc.log.read_text()[-3000:]


def _epochs(model_dir: Path) -> list[int]:
    return list(pd.read_csv(model_dir / "history.csv")["epoch"])


def _checkpoints(model_dir: Path) -> list[str]:
    return sorted(p.name for p in (model_dir / "checkpoints").glob("epoch-*.npz"))


def _temps(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.rglob(".*") if ".tmp-" in p.name)


@pytest.mark.slow
def test_kill_9_mid_epoch_and_mid_checkpoint_resumes_to_the_same_weights(
        synthetic_scenes_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert prepare.main(["--dataset", "synthetic", "--data-dir", str(synthetic_scenes_dir),
                         "--out", str(cache), "--weights", "none", "--image-size", "32",
                         "--min-count", "1", "--quiet"]) == 0
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    marker = tmp_path / "paused"

    reference = _start(["--cache", str(cache), "--out", str(full), *TRAIN], tmp_path)
    # 1. killed in the middle of the second epoch: only the first one is on disk
    first = _start(["--cache", str(cache), "--out", str(crashed), *TRAIN], tmp_path,
                   pause_at="batch:1:2")
    _kill_when_paused(first, marker)
    assert _checkpoints(crashed) == ["epoch-0001.npz"] and _epochs(crashed) == [0]
    assert not (crashed / "model.weights.h5").exists()

    # 2. the re-run is killed inside the write of epoch 3's checkpoint (after epoch index 2)
    second = _start(["--cache", str(cache), "--out", str(crashed), *TRAIN], tmp_path,
                    pause_at="write:epoch-0003.npz")
    _kill_when_paused(second, marker)
    left = _temps(crashed)
    assert [n for n in left if n.startswith(f".epoch-0003.npz.tmp-{second.pid}-")], left
    assert _checkpoints(crashed) == ["epoch-0001.npz", "epoch-0002.npz"]
    assert _epochs(crashed) == [0, 1, 2]  # the row came first; its checkpoint never did

    # 3. the same command again finishes the run
    _finish(_start(["--cache", str(cache), "--out", str(crashed), *TRAIN], tmp_path))
    _finish(reference)
    assert _epochs(crashed) == _epochs(full) == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(pd.read_csv(crashed / "history.csv"),
                                  pd.read_csv(full / "history.csv"))
    assert _temps(crashed) == []
    for a, b in zip(load_model_dir(full)[0].weights, load_model_dir(crashed)[0].weights,
                    strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
