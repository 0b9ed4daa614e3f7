"""Readers for the caption datasets users actually have, all returning one CaptionDataset.

Supported (``load_dataset(name, data_dir, **options)``):

- ``flickr8k``: the Kaggle layout (``Images/`` + ``captions.txt``, CSV ``image,caption``) or
  the original release (``Flicker8k_Dataset/`` + ``Flickr8k.token.txt`` with lines
  ``name.jpg#N<TAB>caption``; the text files may also sit in a ``Flickr8k_text/`` subfolder).
  Every layout gets the official 6000/1000/1000 split (``icapnet.data.splits``: split files
  beside the data, else the lists shipped with icapnet); ``split="random"`` asks for a
  seeded 80/10/10 split by image instead.
- ``karpathy``: ``dataset_flickr8k.json`` / ``dataset_coco.json`` (Karpathy's splits).
- ``coco``: ``annotations/captions_train2017.json`` (train) and ``captions_val2017.json``
  (split in half, by image, into val and test), images in ``train2017/`` and ``val2017/``.
- ``synthetic``: the Kaggle layout plus ``boxes.json`` (see ``icapnet.data.synthetic``);
  seeded 80/10/10 split by image.

Listed images missing on disk are skipped and counted in one log line (with the split's
source); a dataset with no usable image is an error, as is a malformed line.

(Over 400 lines because the four readers share one finishing step and one set of checks;
each reader is a short section.)
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from icapnet.data.splits import (
    SPLITS,
    assign_splits,
    flickr8k_split,
    report_split,
    split_by_image,
)
from icapnet.data.text import normalize_caption
from icapnet.errors import IcapnetError

log = logging.getLogger(__name__)

DATASETS = ("flickr8k", "karpathy", "coco", "synthetic")

_KAGGLE_CAPTIONS = "captions.txt"
_KAGGLE_IMAGES = "Images"
_ORIGINAL_IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset")
_TOKEN_FILE = "Flickr8k.token.txt"
# The token file names 2258277193_586949ec62.jpg as "2258277193_586949ec62.jpg.1#0..4" (a typo
# for "...jpg#0..4"); no release ships that photo and no split list names it, so once the name
# is repaired it is dropped without a warning (it is not a missing image of the user's).
_NUMBERED_JPG = re.compile(r"^(.+\.jpe?g)\.\d+$", re.IGNORECASE)
_PUBLISHED_WITHOUT_PHOTO = frozenset({"2258277193_586949ec62.jpg"})
_TEXT_SUBDIRS = ("", "Flickr8k_text")
_KARPATHY_FILES = ("dataset_flickr8k.json", "dataset_coco.json")
_KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


@dataclass
class CaptionDataset:
    """Images, their raw captions and a train/val/test split, whatever the source layout."""

    name: str
    root: Path
    images: dict[str, Path]  # image_id -> file (only images that exist on disk)
    captions: dict[str, list[str]]  # image_id -> raw captions
    splits: dict[str, list[str]]  # "train" / "val" / "test" -> image ids (sorted, disjoint)
    boxes: dict[str, list[dict]] | None = None  # synthetic only: boxes in pixels
    split_info: dict[str, Any] | None = None  # SplitRecord.to_dict(): source, sizes, missing

    @property
    def num_captions(self) -> int:
        return sum(len(c) for c in self.captions.values())

    def summary(self) -> str:
        sizes = ", ".join(f"{s} {len(self.splits.get(s, []))}" for s in SPLITS)
        return (
            f"{self.name} at {self.root}: {len(self.images)} images, "
            f"{self.num_captions} captions ({sizes})"
        )


def load_dataset(name: str, data_dir: str | Path, **options: Any) -> CaptionDataset:
    """Read dataset ``name`` from ``data_dir``.

    Options: ``split`` (flickr8k: "official", the default, or "random"; synthetic: "random");
    ``seed`` (int, default 0) for a random split and COCO's val/test halves (flickr8k refuses
    it with the official split, which is fixed); ``images_dir`` (karpathy/coco: where the
    image files are); ``json_file`` (karpathy: which JSON to use when the folder holds
    several). Options set to None are ignored, so CLIs can pass their flags through.
    """
    data_dir = Path(data_dir).expanduser()
    readers = {
        "flickr8k": _load_flickr8k,
        "karpathy": _load_karpathy,
        "coco": _load_coco,
        "synthetic": _load_synthetic,
    }
    if name not in readers:
        raise IcapnetError(f"{data_dir}: unknown dataset '{name}' (choose {', '.join(DATASETS)})")
    if not data_dir.exists():
        raise IcapnetError(f"{data_dir}: data folder not found")
    options = {k: v for k, v in options.items() if v is not None}  # None = "not given"
    try:
        return readers[name](data_dir, **options)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        raise IcapnetError(f"{data_dir}: option not supported for '{name}' ({err})") from err


# --------------------------------------------------------------------------------- helpers


def _safe_id(raw: str, path: Path, lineno: int | str) -> str:
    """Image id as a clean relative POSIX path; rejects absolute paths and '..'."""
    image_id = raw.strip().strip('"').replace("\\", "/")
    parts = PurePosixPath(image_id).parts
    if not image_id or image_id.startswith("/") or ".." in parts:
        raise IcapnetError(f"{path}:{lineno}: malformed image name {raw!r}")
    return image_id


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise IcapnetError(f"{path}: not UTF-8 text ({err})") from err
    except OSError as err:
        raise IcapnetError(f"{path}: cannot read ({err.strerror or err})") from err


def _read_json(path: Path) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise IcapnetError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err


def _finish(
    name: str,
    root: Path,
    images_dir: Path,
    listed: dict[str, list[str]],
    splits: dict[str, list[str]] | None,
    source: Path,
    split_source: str,
    seed: int = 0,
) -> CaptionDataset:
    """Drop missing images and empty captions, split, log the split once, check what is left.

    ``splits`` None means a seeded random split (``split_source`` "random"); otherwise
    images with captions that no list names are left out (and counted in the split line).
    """
    images: dict[str, Path] = {}
    captions: dict[str, list[str]] = {}
    no_file = no_caption = empty = 0
    for image_id in sorted(listed):
        kept = [c.strip() for c in listed[image_id] if normalize_caption(c)]
        empty += len(listed[image_id]) - len(kept)
        path = images_dir / image_id
        if not path.is_file():
            if image_id in _PUBLISHED_WITHOUT_PHOTO:
                log.debug("%s: %s has captions but was never published with a photo; skipped",
                          source, image_id)
            else:
                no_file += 1
            continue
        if not kept:
            no_caption += 1
            continue
        images[image_id] = path
        captions[image_id] = kept
    if empty:
        log.warning("%s: dropped %d empty caption(s)", source, empty)
    if no_caption:
        log.warning("%s: skipped %d image(s) with no non-empty caption", source, no_caption)
    if not images:
        raise IcapnetError(
            f"{images_dir}: no usable images ({len(listed)} listed in {source}, none found)"
        )
    splits, record = assign_splits(images, splits, split_source, seed, missing_unsplit=no_file)
    kept_ids = {i for ids in splits.values() for i in ids}
    if not kept_ids:
        hint = "; for other data in this layout use --split random" if name == "flickr8k" else ""
        raise IcapnetError(
            f"{source}: none of the {len(images)} images with captions is in the "
            f"{record.source} split{hint}"
        )
    images = {i: p for i, p in images.items() if i in kept_ids}
    captions = {i: c for i, c in captions.items() if i in kept_ids}
    report_split(record, images_dir, name)
    ds = CaptionDataset(name=name, root=root, images=images, captions=captions, splits=splits,
                        split_info=record.to_dict())
    log.info("%s", ds.summary())
    return ds


# ------------------------------------------------------------------------------- flickr8k


def _parse_kaggle_captions(path: Path) -> dict[str, list[str]]:
    """``image,caption`` CSV. Captions may hold commas (quoted or not) and quotes."""
    listed: dict[str, list[str]] = {}
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        if lineno == 1 and line.replace(" ", "").lower() == "image,caption":
            continue
        name, sep, rest = line.partition(",")
        if not sep or not name.strip():
            raise IcapnetError(f"{path}:{lineno}: malformed line (expected 'image,caption')")
        caption = rest.strip()
        if caption.startswith('"'):
            try:
                fields = next(csv.reader([caption], strict=True))
            except csv.Error:
                fields = []
            if len(fields) == 1:
                caption = fields[0]
        listed.setdefault(_safe_id(name, path, lineno), []).append(caption)
    return listed


def _parse_token_file(path: Path) -> dict[str, list[str]]:
    """Original release: ``name.jpg#N<TAB>caption`` per line."""
    listed: dict[str, list[str]] = {}
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        name, hash_, number = key.rpartition("#")
        if not tab or not hash_ or not name.strip() or not number.strip().isdigit():
            raise IcapnetError(
                f"{path}:{lineno}: malformed line (expected 'name.jpg#N<TAB>caption')"
            )
        image_id = _safe_id(name, path, lineno)
        numbered = _NUMBERED_JPG.match(image_id)
        if numbered:  # "x.jpg.1#0": a typo in the published file for "x.jpg#0"
            image_id = numbered.group(1)
        listed.setdefault(image_id, []).append(caption.strip())
    return listed


def _load_flickr8k(
    data_dir: Path, seed: int | None = None, split: str = "official"
) -> CaptionDataset:
    if split == "official" and seed is not None:
        raise IcapnetError(
            f"--seed {seed}: the official Flickr8k split is fixed; add --split random "
            "(split='random') for a seeded 80/10/10 split"
        )
    return _read_flickr8k(data_dir, "flickr8k", split, seed or 0)


def _read_flickr8k(data_dir: Path, name: str, split: str, seed: int) -> CaptionDataset:
    kaggle_csv = data_dir / _KAGGLE_CAPTIONS
    has_original = any((data_dir / d).is_dir() for d in _ORIGINAL_IMAGE_DIRS)
    text_dirs = [data_dir / d for d in _TEXT_SUBDIRS]
    if kaggle_csv.is_file() and ((data_dir / _KAGGLE_IMAGES).is_dir() or not has_original):
        source, images_dir = kaggle_csv, data_dir / _KAGGLE_IMAGES
        listed = _parse_kaggle_captions(kaggle_csv)
    else:
        images_dir = next(
            (data_dir / d for d in _ORIGINAL_IMAGE_DIRS if (data_dir / d).is_dir()), None
        )
        text_dir = next((d for d in text_dirs if (d / _TOKEN_FILE).is_file()), None)
        if images_dir is None or text_dir is None:
            raise IcapnetError(
                f"{data_dir}: not a Flickr8k folder (expected Images/ + captions.txt, or "
                f"Flicker8k_Dataset/ + Flickr8k.token.txt); run 'python -m icapnet.download'"
            )
        source = text_dir / _TOKEN_FILE
        listed = _parse_token_file(source)
    if name == "flickr8k":
        splits, split_source = flickr8k_split(text_dirs, split)
    else:  # synthetic scenes: no official split
        splits, split_source = None, "random"
    return _finish(name, data_dir, images_dir, listed, splits, source, split_source, seed)


def _load_synthetic(data_dir: Path, seed: int = 0, split: str = "random") -> CaptionDataset:
    from icapnet.data.synthetic import BOXES_FILE  # light import; keeps module order simple

    if split != "random":
        raise IcapnetError(f"--split {split}: synthetic scenes have only a random split")

    boxes_file = data_dir / BOXES_FILE
    if not boxes_file.is_file():
        raise IcapnetError(
            f"{boxes_file}: not found; generate scenes with icapnet.data.synthetic.generate_scenes"
        )
    ds = _read_flickr8k(data_dir, "synthetic", "random", seed)
    raw = _read_json(boxes_file)
    if not isinstance(raw, dict):
        raise IcapnetError(f"{boxes_file}: expected an object mapping image ids to boxes")
    boxes: dict[str, list[dict]] = {}
    for image_id in ds.images:
        objects = raw.get(image_id)
        if not isinstance(objects, list) or not all(_valid_box(o) for o in objects):
            raise IcapnetError(f"{boxes_file}: missing or malformed boxes for {image_id}")
        boxes[image_id] = objects
    ds.boxes = boxes
    return ds


def _valid_box(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and {"shape", "color", "size", "box"} <= set(obj)
        and isinstance(obj["box"], list)
        and len(obj["box"]) == 4
        and all(isinstance(v, int | float) for v in obj["box"])
    )


# ------------------------------------------------------------------------------- karpathy


def _find_karpathy_json(data_dir: Path, json_file: str | Path | None) -> Path:
    if json_file is not None:
        path = Path(json_file)
        path = path if path.is_absolute() or path.exists() else data_dir / path
        if not path.is_file():
            raise IcapnetError(f"{path}: Karpathy split JSON not found")
        return path
    if data_dir.is_file():
        return data_dir
    found = [data_dir / f for f in _KARPATHY_FILES if (data_dir / f).is_file()]
    if not found:
        raise IcapnetError(f"{data_dir}: no {' or '.join(_KARPATHY_FILES)} found")
    if len(found) > 1:
        raise IcapnetError(
            f"{data_dir}: holds {', '.join(p.name for p in found)}; pass json_file to choose one"
        )
    return found[0]


def _default_karpathy_images(root: Path, raw: dict) -> Path:
    if raw.get("dataset") == "coco" or any("filepath" in i for i in raw.get("images", [])[:1]):
        return root
    for d in (_KAGGLE_IMAGES, *_ORIGINAL_IMAGE_DIRS, "images"):
        if (root / d).is_dir():
            return root / d
    return root


def _load_karpathy(
    data_dir: Path,
    seed: int = 0,
    images_dir: str | Path | None = None,
    json_file: str | Path | None = None,
) -> CaptionDataset:
    """Karpathy JSON: images[].filename (+ filepath for COCO), split, sentences[].raw."""
    del seed  # the JSON carries its own split
    path = _find_karpathy_json(data_dir, json_file)
    root = path.parent
    raw = _read_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("images"), list):
        raise IcapnetError(f"{path}: expected a Karpathy split JSON with an 'images' list")
    img_dir = Path(images_dir).expanduser() if images_dir else _default_karpathy_images(root, raw)
    listed: dict[str, list[str]] = {}
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    for k, entry in enumerate(raw["images"]):
        where = f"images[{k}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            raise IcapnetError(f"{path}: {where} has no 'filename'")
        rel = entry["filename"]
        if isinstance(entry.get("filepath"), str) and entry["filepath"]:
            rel = f"{entry['filepath']}/{rel}"
        image_id = _safe_id(rel, path, where)
        split = _KARPATHY_SPLITS.get(entry.get("split", ""))
        if split is None:
            raise IcapnetError(f"{path}: {where} has unknown split {entry.get('split')!r}")
        sentences = entry.get("sentences")
        if not isinstance(sentences, list) or not all(
            isinstance(s, dict) and isinstance(s.get("raw"), str) for s in sentences
        ):
            raise IcapnetError(f"{path}: {where} needs 'sentences' with 'raw' text")
        listed.setdefault(image_id, []).extend(s["raw"] for s in sentences)
        splits[split].append(image_id)
    return _finish("karpathy", root, img_dir, listed, _dedupe_splits(splits, path), path,
                   f"karpathy JSON ({path.name})")


def _dedupe_splits(splits: dict[str, list[str]], path: Path) -> dict[str, list[str]]:
    seen: dict[str, str] = {}
    for split, ids in splits.items():
        for image_id in ids:
            if seen.setdefault(image_id, split) != split:
                raise IcapnetError(f"{path}: {image_id} is in both {seen[image_id]} and {split}")
    return splits


# ----------------------------------------------------------------------------------- coco


def _find_coco_file(data_dir: Path, part: str) -> Path | None:
    for folder in (data_dir / "annotations", data_dir):
        for year in ("2017", "2014"):
            path = folder / f"captions_{part}{year}.json"
            if path.is_file():
                return path
    return None


def _parse_coco(path: Path, folder: str) -> dict[str, list[str]]:
    raw = _read_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("images"), list):
        raise IcapnetError(f"{path}: expected COCO captions JSON with 'images' and 'annotations'")
    names: dict[Any, str] = {}
    for k, img in enumerate(raw["images"]):
        if (
            not isinstance(img, dict)
            or "id" not in img
            or not isinstance(img.get("file_name"), str)
        ):
            raise IcapnetError(f"{path}: images[{k}] needs 'id' and 'file_name'")
        names[img["id"]] = _safe_id(f"{folder}/{img['file_name']}", path, f"images[{k}]")
    listed: dict[str, list[str]] = {n: [] for n in names.values()}
    for k, ann in enumerate(raw.get("annotations", [])):
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str):
            raise IcapnetError(f"{path}: annotations[{k}] needs 'image_id' and 'caption'")
        if ann.get("image_id") not in names:
            raise IcapnetError(
                f"{path}: annotations[{k}] refers to unknown image {ann.get('image_id')}"
            )
        listed[names[ann["image_id"]]].append(ann["caption"])
    return listed


def _load_coco(
    data_dir: Path, seed: int = 0, images_dir: str | Path | None = None
) -> CaptionDataset:
    """COCO captions: train file -> train; val file -> half val, half test (by image, seeded)."""
    train_file = _find_coco_file(data_dir, "train")
    val_file = _find_coco_file(data_dir, "val")
    if train_file is None and val_file is None:
        raise IcapnetError(
            f"{data_dir}: no annotations/captions_train2017.json or captions_val2017.json found"
        )
    listed: dict[str, list[str]] = {}
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    img_dir = Path(images_dir).expanduser() if images_dir else data_dir
    if train_file is not None:
        part = _parse_coco(train_file, train_file.stem.replace("captions_", ""))
        listed.update(part)
        splits["train"] = sorted(part)
    if val_file is not None:
        part = _parse_coco(val_file, val_file.stem.replace("captions_", ""))
        listed.update(part)
        available = sorted(i for i in part if (img_dir / i).is_file())
        random.Random(seed).shuffle(available)
        half = (len(available) + 1) // 2
        splits["val"], splits["test"] = sorted(available[:half]), sorted(available[half:])
    source = train_file or val_file
    assert source is not None
    how = f"coco: {train_file.name if train_file else 'no train file'} -> train"
    if val_file is not None:
        how += f", {val_file.name} halved by image into val/test (seed {seed})"
    return _finish("coco", data_dir, img_dir, listed, splits, source, how, seed)


__all__ = ["DATASETS", "SPLITS", "CaptionDataset", "load_dataset", "split_by_image"]
