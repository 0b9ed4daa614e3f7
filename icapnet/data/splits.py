"""Which images go to train / val / test, and a record of where that decision came from.

Test scores are only comparable with published Flickr8k figures on the official split
(``Flickr_8k.{train,dev,test}Images.txt``: 6000 / 1000 / 1000 image names). Kaggle's layout
ships no split files, so the lists are package data here (``official_splits/flickr8k/``,
byte-identical to the published files; md5s in DEVELOPERS.md) and every Flickr8k layout gets
them. Split files beside the data still win when all three are there (someone who edited them
meant it); a warning says when they differ from the official lists.

A seeded 80/10/10 split **by image** is an explicit choice (``split="random"``), and the
default for data that has no official split (synthetic scenes).

The chosen split is described by a small record (``SplitRecord.to_dict``) stored in the
feature cache's manifest, and logged once per process as one line: its source, how many
listed images are missing, and how many images on disk are in no list (they are left out).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from icapnet.errors import IcapnetError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_CHOICES = ("official", "random")
FLICKR8K_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
PACKAGE_SOURCE = "official (package data)"
BESIDE_SOURCE = "official (split files beside the data)"
CUSTOM_SOURCE = "split files beside the data (differ from the official lists)"
_REPORTED: set[tuple] = set()  # split lines already logged in this process


def split_by_image(image_ids: Iterable[str], seed: int = 0) -> dict[str, list[str]]:
    """Deterministic 80/10/10 split of images (never of captions), each list sorted.

    With 3+ images val and test get at least one image each, so tiny datasets still evaluate.
    """
    ids = sorted(set(image_ids))
    random.Random(seed).shuffle(ids)
    n = len(ids)
    n_val = max(1, round(0.1 * n)) if n >= 3 else 0
    n_test = max(1, round(0.1 * n)) if n >= 3 else 0
    val, test, train = ids[:n_val], ids[n_val : n_val + n_test], ids[n_val + n_test :]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def random_source(seed: int) -> str:
    return f"random 80/10/10 by image (seed {seed})"


def _parse_list(text: str, where: str, split: str, seen: dict[str, str]) -> list[str]:
    ids = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name.startswith("/") or ".." in name.replace("\\", "/").split("/"):
            raise IcapnetError(f"{where}:{lineno}: malformed image name {name!r}")
        if name in seen:
            raise IcapnetError(f"{where}:{lineno}: {name} is also in the {seen[name]} split")
        seen[name] = split
        ids.append(name)
    return ids


@lru_cache(maxsize=1)
def _official_lists() -> tuple[tuple[str, tuple[str, ...]], ...]:
    folder = resources.files("icapnet.data").joinpath("official_splits", "flickr8k")
    seen: dict[str, str] = {}
    out = []
    for split, name in FLICKR8K_SPLIT_FILES.items():
        text = folder.joinpath(name).read_text(encoding="utf-8")
        out.append((split, tuple(_parse_list(text, f"icapnet/data/{name}", split, seen))))
    return tuple(out)


def official_flickr8k_split() -> dict[str, list[str]]:
    """The official Flickr8k split shipped with icapnet: {"train": 6000, "val", "test": 1000}."""
    return {split: list(ids) for split, ids in _official_lists()}


def read_split_files(folder: Path) -> dict[str, list[str]] | None:
    """The three Flickr8k split lists in ``folder``, or None unless all three are there."""
    paths = {s: folder / f for s, f in FLICKR8K_SPLIT_FILES.items()}
    present = [p.name for p in paths.values() if p.is_file()]
    if len(present) < len(paths):
        if present:
            log.warning("%s: only %s of the three split files found; ignoring them",
                        folder, ", ".join(present))
        return None
    seen: dict[str, str] = {}
    splits = {}
    for split, path in paths.items():
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            raise IcapnetError(f"{path}: cannot read ({err})") from err
        splits[split] = _parse_list(text, str(path), split, seen)
    return splits


def flickr8k_split(
    folders: Sequence[Path], split: str = "official"
) -> tuple[dict[str, list[str]] | None, str]:
    """(split lists or None for a random split, source) for a Flickr8k folder.

    ``folders`` are where split files may sit beside the data, first match wins; without
    them the package's official lists are used.
    """
    if split not in SPLIT_CHOICES:
        raise IcapnetError(f"--split {split}: unknown (choose {', '.join(SPLIT_CHOICES)})")
    if split == "random":
        return None, "random"
    for folder in folders:
        beside = read_split_files(folder)
        if beside is None:
            continue
        official = official_flickr8k_split()
        if {s: set(v) for s, v in beside.items()} == {s: set(v) for s, v in official.items()}:
            return beside, BESIDE_SOURCE
        log.warning("%s: these split files differ from the official Flickr8k lists; using "
                    "them (delete them to get the official split)", folder)
        return beside, f"{CUSTOM_SOURCE}: {folder}"
    return official_flickr8k_split(), PACKAGE_SOURCE


@dataclass
class SplitRecord:
    """Where a split came from and what it lost; stored in the feature cache manifest."""

    source: str
    sizes: dict[str, int]  # images used per split
    missing: dict[str, int] = field(default_factory=dict)  # listed, but no usable image here
    unlisted: int = 0  # usable images in no split list: left out

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "sizes": dict(self.sizes), "missing": dict(self.missing),
                "unlisted": self.unlisted}

    def line(self, where: str) -> str:
        sizes = ", ".join(f"{s} {n}" for s, n in self.sizes.items())
        text = f"split: {self.source}: {sizes} images"
        lost = sum(self.missing.values())
        if lost:
            per = ", ".join(f"{s} {n}" for s, n in self.missing.items() if n and s != "all")
            text += f"; {lost} listed image(s) missing under {where}" + (f" ({per})" if per else "")
        else:
            text += "; no listed image missing"
        if self.unlisted:
            text += f"; {self.unlisted} image(s) with captions are in no split list: left out"
        return text


def assign_splits(
    usable: Iterable[str],
    splits: Mapping[str, Sequence[str]] | None,
    source: str,
    seed: int = 0,
    missing_unsplit: int = 0,
) -> tuple[dict[str, list[str]], SplitRecord]:
    """Restrict ``splits`` to the usable images (or split them at random when None).

    ``missing_unsplit``: for a random split, how many images the captions name without a
    usable file (there is no list to attribute them to).
    """
    usable = set(usable)
    if splits is None:
        out = split_by_image(usable, seed)
        source = random_source(seed) if source == "random" else source
        missing = {"all": missing_unsplit} if missing_unsplit else {}
        return out, SplitRecord(source, {s: len(out[s]) for s in SPLITS}, missing)
    out = {s: sorted(i for i in set(splits.get(s, ())) if i in usable) for s in SPLITS}
    missing = {s: len(set(splits.get(s, ()))) - len(out[s]) for s in SPLITS}
    listed = {i for ids in splits.values() for i in ids}
    record = SplitRecord(source, {s: len(out[s]) for s in SPLITS}, missing,
                         len(usable - listed))
    return out, record


def report_split(record: SplitRecord, where: Path | str, dataset: str) -> None:
    """Log the split line once per process (warning when listed images are missing)."""
    key = (dataset, str(where), record.source, tuple(record.sizes.items()),
           tuple(record.missing.items()), record.unlisted)
    if key in _REPORTED:
        return
    _REPORTED.add(key)
    level = logging.WARNING if sum(record.missing.values()) else logging.INFO
    log.log(level, "%s %s", dataset, record.line(str(where)))


__all__ = [
    "FLICKR8K_SPLIT_FILES", "SPLITS", "SPLIT_CHOICES", "SplitRecord", "assign_splits",
    "flickr8k_split", "official_flickr8k_split", "read_split_files", "report_split",
    "split_by_image",
]
