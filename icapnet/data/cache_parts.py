"""One feature cache built by N processes or machines: disjoint shards, then one merge.

The shard plan is deterministic (each split's sorted image ids cut into ``shard_size``
chunks), so every worker computes the same plan without talking to the others. Worker ``i``
of ``N`` extracts the shards at positions ``i, i + N, i + 2N, ...`` of the plan into the one
cache folder (a shared file system, or copied together afterwards) and records them in its
own manifest part, ``manifest.part-IIII-of-NNNN.json``: no file is written by two processes.
When every part is complete, the worker that sees it (or ``prepare --merge``) checks that each
planned image is in exactly one part, with features or skipped, and that each shard file is
there with its recorded size; the one manifest is then written by the same finishing step as a
one-process build, so both caches hold the same files, record for record.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from icapnet.errors import IcapnetError
from icapnet.layout import FEATURES_DIR, read_json

PART_GLOB = "manifest.part-*-of-*.json"


def part_name(index: int, count: int) -> str:
    """The manifest part of worker ``index`` (0-based) of ``count``."""
    return f"manifest.part-{index:04d}-of-{count:04d}.json"


def check_worker(index: int | None, count: int) -> None:
    if count < 1:
        raise IcapnetError(f"--num-workers: must be >= 1, got {count}")
    if index is not None and not 0 <= index < count:
        raise IcapnetError(f"--worker-index: must be in 0..{count - 1}, got {index}")


def select_shards(plan: dict[str, dict[str, Any]], index: int, count: int
                  ) -> dict[str, dict[str, Any]]:
    """The shards of worker ``index``: every ``count``-th of the plan, from position ``index``.

    Round robin, not contiguous blocks: the plan is ordered train, val, test, so blocks would
    give one worker all the (smaller) test shards."""
    return {name: shard for k, (name, shard) in enumerate(plan.items()) if k % count == index}


def read_parts(root: Path, count: int) -> tuple[list[dict[str, Any]], list[int]]:
    """(complete parts, indices of the parts not complete yet)."""
    parts, waiting = [], []
    for index in range(count):
        path = root / part_name(index, count)
        part = read_json(path) if path.is_file() else None
        if isinstance(part, dict) and part.get("complete"):
            parts.append(part)
        else:
            waiting.append(index)
    return parts, waiting


def merge_parts(root: Path, plan: dict[str, dict[str, Any]], parts: list[dict[str, Any]],
                base: dict[str, Any]) -> dict[str, Any]:
    """One (not yet complete) manifest from complete parts; every problem is an IcapnetError.

    ``base`` holds the settings every part must share (backbone, layer, weights, dataset...).
    """
    for part in parts:
        # data_dir may differ: each machine reads the images from its own copy.
        diffs = [k for k, v in base.items() if k not in ("feature_shape", "complete", "data_dir")
                 and part.get(k) != v]
        if diffs:
            raise IcapnetError(f"{root}: a manifest part was built with other settings "
                               f"({', '.join(diffs)}); rebuild it with the same flags")
    shapes = {tuple(p["feature_shape"]) for p in parts if p.get("feature_shape")}
    if len(shapes) > 1:
        raise IcapnetError(f"{root}: the parts hold features of different shapes {sorted(shapes)}")

    owner: dict[str, int] = {}  # shard -> part
    found: dict[str, str] = {}  # image -> where it was recorded
    for k, part in enumerate(parts):
        for name in part["shards"]:
            if name in owner:
                raise IcapnetError(f"{root}: shard {name} is in two manifest parts")
            owner[name] = k
        for image_id in [*part["images"], *part["skipped"]]:
            if image_id in found:
                raise IcapnetError(f"{root}: image {image_id} is in two places "
                                   f"({found[image_id]} and part {k})")
            found[image_id] = f"part {k}"
    missing_shards = [name for name in plan if name not in owner]
    if missing_shards or len(owner) != len(plan):
        extra = sorted(set(owner) - set(plan))
        raise IcapnetError(f"{root}: the parts do not cover the shard plan (missing "
                           f"{missing_shards[:3]}, unplanned {extra[:3]}); rebuild with the "
                           "same --shard-size and --num-workers")
    planned = {image_id for shard in plan.values() for image_id in shard["images"]}
    absent = sorted(planned - set(found))
    if absent or len(found) != len(planned):
        raise IcapnetError(f"{root}: {len(absent)} planned image(s) in no part (e.g. "
                           f"{absent[:3]}) or images outside the plan")

    manifest = {**base, "images": {}, "shards": {}, "skipped": {}, "complete": False,
                "feature_shape": list(shapes.pop()) if shapes else None}
    for name in plan:  # plan order, as a one-process build records them
        part = parts[owner[name]]
        info = part["shards"][name]
        path = root / FEATURES_DIR / name
        if not path.is_file() or path.stat().st_size != info["bytes"]:
            raise IcapnetError(f"{path}: feature shard missing or of another size than its "
                               "manifest part records; rebuild that worker's part")
        manifest["shards"][name] = info
        for image_id in info["written"]:
            manifest["images"][image_id] = part["images"][image_id]
        for image_id in info["images"]:
            if image_id in part["skipped"]:
                manifest["skipped"][image_id] = part["skipped"][image_id]
    return manifest


def remove_parts(root: Path) -> None:
    for path in root.glob(PART_GLOB):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


__all__ = ["PART_GLOB", "check_worker", "merge_parts", "part_name", "read_parts",
           "remove_parts", "select_shards"]
