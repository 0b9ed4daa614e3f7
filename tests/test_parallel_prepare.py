"""prepare split over processes: `--num-workers 2 --worker-index i` on two processes at once
builds the same cache, record for record, as one process; the parts are checked when merged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from icapnet.config import DataConfig
from icapnet.data.cache import open_cache
from icapnet.data.cache_build import build_cache
from icapnet.data.cache_parts import part_name, select_shards
from icapnet.data.datasets import load_dataset
from icapnet.errors import IcapnetError
from icapnet.model.backbone import feature_config_for
from icapnet.prepare import main

ROOT = Path(__file__).resolve().parents[1]

# A prepare process with the tests' tiny backbone registered (conftest's constructor).
PREPARE = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from conftest import _tiny_cnn
    from icapnet.errors import run_cli
    from icapnet.model.backbone import Backbone, register_backbone
    from icapnet.prepare import main
    register_backbone(Backbone("tiny", _tiny_cnn, "conv_b", lambda x: x / 127.5 - 1.0, 16))
    sys.exit(run_cli(main, sys.argv[2:]))
""")


def _flags(data: Path, out: Path) -> list[str]:
    return ["--dataset", "synthetic", "--data-dir", str(data), "--out", str(out),
            "--backbone", "tiny", "--weights", "none", "--min-count", "1", "--shard-size", "2",
            "--quiet"]


def _records(cache_dir: Path) -> dict[str, list[tuple[str, bytes]]]:
    cache = open_cache(cache_dir)
    return {split: [(i, f.tobytes()) for i, f in cache.read_features(split)]
            for split in cache.splits}


def _manifest(cache_dir: Path) -> dict:
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    manifest.pop("finished_at")
    return manifest


@pytest.mark.slow
def test_two_processes_build_the_one_process_cache(synthetic_scenes_dir, tiny_backbone,
                                                   tmp_path):
    single = tmp_path / "single"
    assert main(_flags(synthetic_scenes_dir, single)) == 0

    parallel = tmp_path / "parallel"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [subprocess.Popen([sys.executable, "-c", PREPARE, str(ROOT / "tests"),
                               *_flags(synthetic_scenes_dir, parallel), "--num-workers", "2",
                               "--worker-index", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
    # One of them found the other's part complete and merged; the other said it was done.
    assert sum("feature cache:" in out for out, _ in outputs) >= 1

    assert _records(parallel) == _records(single)
    assert _manifest(parallel) == _manifest(single)
    for name in ("vocab.json", "captions.json", "boxes.json"):
        assert (parallel / name).read_bytes() == (single / name).read_bytes(), name
    assert sorted(p.name for p in parallel.iterdir()) == sorted(p.name for p in single.iterdir())
    shards = sorted(p.name for p in (single / "features").iterdir())
    assert shards == sorted(p.name for p in (parallel / "features").iterdir())
    assert len(shards) > 2  # both workers had shards to extract


def test_parts_merge_only_when_complete_and_consistent(synthetic_scenes_dir, tiny_backbone,
                                                      tmp_path):
    dataset = load_dataset("synthetic", synthetic_scenes_dir)
    feature_cfg = feature_config_for(tiny_backbone, "none")
    data_cfg = DataConfig(min_count=1)
    out = tmp_path / "cache"

    def build(index):
        return build_cache(dataset, out, feature_cfg, data_cfg, shard_size=2, progress=False,
                           num_workers=3, worker_index=index)

    build(0)
    build(2)
    assert not (out / "manifest.json").exists()  # part 1 is missing: nothing merged
    with pytest.raises(IcapnetError, match="not a feature cache"):
        open_cache(out)
    # A part that claims a shard another part also holds is refused at the merge.
    part0 = json.loads((out / part_name(0, 3)).read_text())
    stolen = next(iter(part0["shards"]))
    build(1)  # merges: parts 0, 1, 2 are disjoint and cover the plan
    cache = open_cache(out)
    assert cache.complete and not list(out.glob("manifest.part-*"))
    plan_names = sorted(cache.manifest["shards"])
    assert sorted(select_shards({name: {} for name in plan_names}, 1, 3)) == plan_names[1::3]

    # Re-running worker 1 reuses the merged cache's shards; a forged overlapping part fails.
    (out / part_name(0, 3)).write_text(json.dumps(part0))
    part2 = dict(part0, shards={stolen: part0["shards"][stolen]}, images={}, skipped={})
    (out / part_name(2, 3)).write_text(json.dumps(part2))
    with pytest.raises(IcapnetError, match=f"shard {stolen} is in two manifest parts"):
        build(1)


def test_prepare_worker_flags_are_checked(synthetic_scenes_dir, tmp_path):
    base = ["--dataset", "synthetic", "--data-dir", str(synthetic_scenes_dir), "--out",
            str(tmp_path / "c")]
    with pytest.raises(IcapnetError, match="--worker-index I"):
        main([*base, "--num-workers", "2"])
    with pytest.raises(IcapnetError, match="need --num-workers"):
        main([*base, "--worker-index", "1"])
    with pytest.raises(IcapnetError, match=r"--worker-index: must be in 0\.\.1"):
        main([*base, "--num-workers", "2", "--worker-index", "2", "--weights", "none"])
