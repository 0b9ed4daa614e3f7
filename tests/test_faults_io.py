"""Full disks and stale temp files (issue 12, cases 4 and 5).

The full-disk tests write onto a real 20 MB tmpfs filled up to a few bytes (they need root to
mount it and are skipped, saying so, where that is impossible); the checkpoint-write case and
the CLI fallback inject ENOSPC in-process and always run. Each ends in one line naming the
path and saying the disk is full, and leaves nothing half-written that could look valid.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import tensorflow as tf
from fault_tools import dead_pid, error_line, prepare_args, temp_of

from icapnet import export, prepare, train
from icapnet.errors import run_cli
from icapnet.io import STALE_AFTER_S, atomic_write_bytes, remove_stale_temps, temp_prefix

TRAIN = ["--epochs", "2", "--batch-size", "8", "--units", "8", "--embedding-dim", "8",
         "--attention-units", "8", "--quiet"]
FULL = "disk full (no space left on device); nothing was written there, free some space and " \
       "re-run"


def _prepare_args(data: Path, out: Path) -> list[str]:
    return prepare_args(data, out, image_size=32, shard_size=2)


@pytest.fixture(scope="module")
def cache(synthetic_scenes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("io") / "cache"
    assert prepare.main(_prepare_args(synthetic_scenes_dir, out)) == 0
    return out


@pytest.fixture()
def small_disk(tmp_path: Path):
    """A 20 MB tmpfs (root only; skipped with the reason elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)],
                              capture_output=True, text=True, timeout=30)
    except OSError as err:
        pytest.skip(f"cannot mount a tmpfs here ({err}); the ENOSPC injection tests still run")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the ENOSPC "
                    "injection tests still run")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def _fill(disk: Path, room: int) -> None:
    """Leave about ``room`` bytes free on ``disk``."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    stat = os.statvfs(disk)
    with open(filler, "wb") as handle:
        handle.write(bytes(max(0, stat.f_bavail * stat.f_frsize - room)))


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name or ".old-" in p.name]


def _assert_disk_full_line(err: str, under: Path) -> Path:
    line = error_line(err)
    match = re.fullmatch(rf"error: ({re.escape(str(under))}/\S+): {re.escape(FULL)}", line)
    assert match, line
    return Path(match[1])


def test_prepare_on_a_full_disk_then_resumes(small_disk: Path, synthetic_scenes_dir: Path,
                                             capsys) -> None:
    out = small_disk / "cache"
    _fill(small_disk, 12_000)  # a shard or two of 4x512 float16 records, then no more room
    assert run_cli(prepare.main, _prepare_args(synthetic_scenes_dir, out)) == 2
    _assert_disk_full_line(capsys.readouterr().err, out)
    assert _temps(small_disk) == []
    if (out / "manifest.json").exists():  # what was finished is recorded, and only that
        from icapnet.data.cache import open_cache

        partial = open_cache(out, require_complete=False)
        assert not partial.complete
    (small_disk / "filler").unlink()
    assert run_cli(prepare.main, _prepare_args(synthetic_scenes_dir, out)) == 0
    assert run_cli(prepare.main, ["--verify", "--out", str(out)]) == 0


def test_train_on_a_full_disk_then_resumes(small_disk: Path, cache: Path, capsys) -> None:
    out = small_disk / "model"
    _fill(small_disk, 0)
    assert run_cli(train.main, ["--cache", str(cache), "--out", str(out), *TRAIN]) == 2
    _assert_disk_full_line(capsys.readouterr().err, out)
    assert _temps(small_disk) == []
    assert not (out / "config.json").exists()
    (small_disk / "filler").unlink()
    assert run_cli(train.main, ["--cache", str(cache), "--out", str(out), *TRAIN]) == 0
    assert list(pd.read_csv(out / "history.csv")["epoch"]) == [0, 1]


def test_export_on_a_full_disk(small_disk: Path, tiny_model_dir: Path, tmp_path: Path,
                               capsys) -> None:
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    out = small_disk / "exported"
    _fill(small_disk, 200_000)
    assert run_cli(export.main, ["--model", str(model), "--out", str(out)]) == 2
    assert error_line(capsys.readouterr().err) == f"error: {out}: {FULL}"
    assert not out.exists() and _temps(small_disk) == []


def test_checkpoint_write_on_a_full_disk_enospc_injected(cache: Path, tmp_path: Path,
                                                         monkeypatch, capsys) -> None:
    """The write of the first epoch's checkpoint fails with ENOSPC (injected at its fsync, so
    it runs without root): one line naming it, no temp file, and the re-run trains each epoch
    once."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if "epoch-0001.npz" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    out = tmp_path / "model"
    monkeypatch.setattr(os, "fsync", fsync)
    assert run_cli(train.main, ["--cache", str(cache), "--out", str(out), *TRAIN]) == 2
    assert error_line(capsys.readouterr().err) == (
        f"error: {out / 'checkpoints' / 'epoch-0001.npz'}: {FULL}")
    assert _temps(out) == [] and not (out / "checkpoints" / "epoch-0001.npz").exists()
    monkeypatch.setattr(os, "fsync", real_fsync)

    # Temp files of a killed writer (dead pid) go; a live writer's stay.
    dead, alive = dead_pid(), os.getppid()
    stale = [out / f"{temp_of('history.csv', dead)}-a1b2c3d4",
             out / "checkpoints" / f"{temp_of('epoch-0002.npz', dead)}-z9y8x7w6"]
    live = out / "checkpoints" / f"{temp_of('best.npz', alive)}-q1w2e3r4"
    for path in [*stale, live]:
        path.write_bytes(b"partial")
    assert run_cli(train.main, ["--cache", str(cache), "--out", str(out), *TRAIN]) == 0
    assert list(pd.read_csv(out / "history.csv")["epoch"]) == [0, 1]
    assert [p for p in stale if p.exists()] == [] and live.exists()


@pytest.mark.parametrize("raised,expected", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/logs/events.out"),
     "error: /data/logs/events.out: disk full ([Errno 28] No space left on device: "
     "'/data/logs/events.out')"),
    (tf.errors.ResourceExhaustedError(None, None, "/data/x.tfrecord; No space left on device"),
     "error: disk full: /data/x.tfrecord; No space left on device"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "error: disk full: [Errno 122] Disk quota "
     "exceeded"),
])
def test_any_full_disk_error_is_one_line(raised: Exception, expected: str, capsys) -> None:
    def main(argv):
        raise raised

    assert run_cli(main, []) == 2
    assert capsys.readouterr().err == expected + "\n"


def test_other_errors_are_not_mistaken_for_a_full_disk() -> None:
    def main(argv):
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError):
        run_cli(main, [])


def test_atomic_write_on_enospc_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    from icapnet.errors import IcapnetError

    target = tmp_path / "metrics.json"
    target.write_text("old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(IcapnetError, match=re.escape(f"{target}: disk full")):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old" and _temps(tmp_path) == []


# --------------------------------------------------------------------------- stale temps


def test_remove_stale_temps_takes_only_ours_that_nobody_writes(tmp_path: Path) -> None:
    here = temp_prefix(Path("x")).rsplit("-", 1)[1]  # this host's id (a hash of its name)
    elsewhere = "0" * 8 if here != "0" * 8 else "1" * 8
    dead, alive = dead_pid(), os.getppid()

    def owned(name: str, pid: int, host: str = here) -> str:
        return f".{name}.tmp-{pid}-{host}"

    old = time.time() - STALE_AFTER_S - 60
    removed_names = {
        owned("epoch-0002.npz", dead) + "-abcd1234": None,        # killed writer, this host
        owned("model.weights.h5", dead) + ".weights.h5": None,    # with a writer's suffix
        owned("exported", dead).replace(".tmp-", ".old-"): "dir",  # a swapped-out folder
        owned("history.csv", alive, elsewhere) + "-zz": old,      # other host, old
        ".best.npz.k3j4h5g6.tmp": old,                            # no owner (older icapnet)
        ".manifest.json.tmp-123": old,
    }
    kept_names = {
        owned("epoch-0003.npz", alive) + "-abcd1234": None,       # a live writer
        owned("epoch-0004.npz", os.getpid()) + "-abcd1234": None,  # this very process
        owned("history.csv", dead, elsewhere) + "-zz": None,      # other host, recent
        ".best.npz.k3j4h5g6.tmp": None,                           # no owner, recent
        ".bashrc": old, "notes.tmp": old, ".cache.tmp": old, "epoch-0001.npz": old,
    }
    for names in (removed_names, kept_names):
        for name, how in names.items():
            path = (tmp_path / ("gone" if names is removed_names else "kept")) / name
            path.parent.mkdir(exist_ok=True)
            if how == "dir":
                path.mkdir()
                (path / "saved_model.pb").write_bytes(b"x")
            else:
                path.write_bytes(b"partial")
            if isinstance(how, float):
                os.utime(path, (how, how))
    assert {p.name for p in remove_stale_temps(tmp_path / "gone")} == set(removed_names)
    assert list((tmp_path / "gone").iterdir()) == []
    assert remove_stale_temps(tmp_path / "kept") == []
    assert {p.name for p in (tmp_path / "kept").iterdir()} == set(kept_names)
    # ``targets``: only the temps of those files (a folder shared with other things)
    some = tmp_path / "some"
    some.mkdir()
    for name in ("exported", "other"):
        (some / (owned(name, dead) + "-abcd1234")).write_bytes(b"x")
    assert [p.name.split(".")[1] for p in remove_stale_temps(some, targets=["exported"])] == \
        ["exported"]
    assert len(list(some.iterdir())) == 1
