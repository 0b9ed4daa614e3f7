"""Multi-worker training (MultiWorkerMirroredStrategy from TF_CONFIG): two worker processes on
127.0.0.1 reach the weights of one process with the same global batch, only the chief writes
the model directory, and a run whose worker was killed mid-epoch resumes when both restart."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_training import write_cache

from icapnet.config import Config, ModelConfig, TrainConfig
from icapnet.errors import IcapnetError
from icapnet.model.store import load_model_dir
from icapnet.model.strategies import check_tf_config, gather_from_workers, get_strategy, is_chief
from icapnet.model.training import train

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--epochs", "2", "--batch-size", "8", "--units", "16", "--embedding-dim", "8",
         "--attention-units", "8", "--dropout", "0", "--state-dropout", "0",
         "--attention-penalty", "0.5", "--clip-norm", "0.05", "--learning-rate", "0.01",
         "--seed", "7", "--quiet"]
# Same weights up to float32 summation order: the two halves of each global batch are summed
# by an all-reduce instead of inside one matmul (measured ~4e-6 after 2 epochs).
TOLERANCE = 1e-4

# A worker: the train CLI, optionally killed (SIGKILL, nothing saved) in epoch KILL_EPOCH.
WORKER = textwrap.dedent("""
    import os, signal, sys
    import keras
    from icapnet import cli
    from icapnet.errors import run_cli
    from icapnet.model.training import train
    from icapnet.train import build_parser, cache_dataset, config_from_args

    kill_epoch, argv = int(sys.argv[1]), sys.argv[2:]

    class KillAt(keras.callbacks.Callback):
        epoch = -1
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == kill_epoch and batch == 1:
                os.kill(os.getpid(), signal.SIGKILL)

    def main(argv):
        args = build_parser().parse_args(argv)
        cli.start(log_info=True)  # "resuming ..." on stderr
        config = config_from_args(args, cache_dataset(args.cache))  # as train.main does
        train(config, args.cache, args.out, verbose=0, extra_callbacks=[KillAt()])
    sys.exit(run_cli(main, argv))
""")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run_workers(cache: Path, out: Path, kill: dict[int, int] | None = None
                 ) -> list[subprocess.CompletedProcess]:
    """Two workers of one cluster; ``kill``: {worker index: epoch in which it dies}."""
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
               "TF_CONFIG": json.dumps(tf_config)}
        argv = ["--cache", str(cache), "--out", str(out), "--strategy", "multiworker", *FLAGS]
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str((kill or {}).get(index, -1)), *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT))
    done = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=300)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


def _weights(model_dir: Path) -> list[np.ndarray]:
    return [w.numpy() for w in load_model_dir(model_dir)[0].weights]


def _max_diff(a: Path, b: Path) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(_weights(a), _weights(b), strict=True))


@pytest.mark.slow
def test_two_workers_match_one_process_and_resume_after_a_worker_is_killed(tmp_path):
    # 15 images x 2 captions = 30 pairs: 3 full global batches of 8 and one of 6 (3 + 3).
    cache = write_cache(tmp_path / "cache", n_train=15, n_val=3)
    config = Config(model=ModelConfig(embedding_dim=8, units=16, attention_units=8,
                                      dropout=0.0, state_dropout=0.0),
                    train=TrainConfig(epochs=2, batch_size=8, learning_rate=0.01, seed=7,
                                      attention_penalty=0.5, clip_norm=0.05))
    single = train(config, cache, tmp_path / "single", verbose=0)

    # Uninterrupted: both workers finish, the chief alone fills the model directory.
    together = tmp_path / "together"
    for proc in _run_workers(cache, together):
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert _max_diff(tmp_path / "single", together) < TOLERANCE
    np.testing.assert_allclose(pd.read_csv(together / "history.csv")["loss"], single["loss"],
                               rtol=1e-4)
    assert sorted(p.name for p in (together / "checkpoints").iterdir()) == [
        "best.npz", "config.json", "epoch-0001.npz", "epoch-0002.npz"]
    assert not list(together.glob(".*"))  # no worker's temporary files left behind

    # Worker 1 is killed in the middle of epoch 2: worker 0 stops with one line, not a hang.
    crashed = tmp_path / "crashed"
    first = _run_workers(cache, crashed, kill={1: 1})
    assert first[1].returncode == -9
    assert first[0].returncode == 2, first[0].stderr[-3000:]
    last = first[0].stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "start every worker again" in last, last
    assert [p.name for p in (crashed / "checkpoints").glob("epoch-*")] == ["epoch-0001.npz"]

    # Both restarted with the same command: they resume at epoch 2 and end where one process does.
    for proc in _run_workers(cache, crashed):
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "resuming" in proc.stderr and "at epoch 2" in proc.stderr
    assert _max_diff(tmp_path / "single", crashed) < TOLERANCE
    assert len(pd.read_csv(crashed / "history.csv")) == 2


def test_tf_config_problems_are_one_line():
    with pytest.raises(IcapnetError, match="TF_CONFIG is not set"):
        check_tf_config(None)
    with pytest.raises(IcapnetError, match="TF_CONFIG: not valid JSON"):
        check_tf_config("{cluster")
    with pytest.raises(IcapnetError, match='needs "cluster"'):
        check_tf_config(json.dumps({"task": {"type": "worker", "index": 0}}))
    with pytest.raises(IcapnetError, match="task index 2"):
        check_tf_config(json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                    "task": {"type": "worker", "index": 2}}))
    spec = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    assert check_tf_config(json.dumps(spec)) == spec


def test_one_process_is_its_own_chief():
    strategy = get_strategy("default")
    assert is_chief(strategy)
    assert gather_from_workers(strategy, 5) == [5]
