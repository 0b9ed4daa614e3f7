"""Readers for the caption datasets users actually have, all returning one CaptionDataset.

Supported (``load_dataset(name, data_dir, **options)``):

- ``flickr8k``: the Kaggle layout (``Images/`` + ``captions.txt``, CSV ``image,caption``) or
  the original release (``Flicker8k_Dataset/`` + ``Flickr8k.token.txt`` with lines
  ``name.jpg#N<TAB>caption``, and ``Flickr_8k.{train,dev,test}Images.txt`` for the official
  6000/1000/1000 split; the text files may also sit in a ``Flickr8k_text/`` subfolder).
- ``karpathy``: ``dataset_flickr8k.json`` / ``dataset_coco.json`` (Karpathy's splits).
- ``coco``: ``annotations/captions_train2017.json`` (train) and ``captions_val2017.json``
  (split in half, by image, into val and test), images in ``train2017/`` and ``val2017/``.
- ``synthetic``: the Kaggle layout plus ``boxes.json`` (see ``icapnet.data.synthetic``).

Without official split files, images are split 80/10/10 **by image** with a seeded shuffle,
so no photo ever has captions in two splits. Listed images missing on disk are skipped (and
counted in the log); a dataset with no usable image is an error, as is a malformed line.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from icapnet.data.text import normalize_caption
from icapnet.errors import IcapnetError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DATASETS = ("flickr8k", "karpathy", "coco", "synthetic")

_KAGGLE_CAPTIONS = "captions.txt"
_KAGGLE_IMAGES = "Images"
_ORIGINAL_IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset")
_TOKEN_FILE = "Flickr8k.token.txt"
_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
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

    Options: ``seed`` (int, default 0) for the 80/10/10 fallback split (and COCO's val/test
    halves); ``images_dir`` (karpathy/coco: where the image files are); ``json_file``
    (karpathy: which JSON to use when the folder holds several). Options set to None are
    ignored, so CLIs can pass their flags through unconditionally.
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
    seed: int,
    source: Path,
) -> CaptionDataset:
    """Drop missing images and empty captions, split, and check something is left."""
    images: dict[str, Path] = {}
    captions: dict[str, list[str]] = {}
    missing = no_caption = empty = 0
    for image_id in sorted(listed):
        kept = [c.strip() for c in listed[image_id] if normalize_caption(c)]
        empty += len(listed[image_id]) - len(kept)
        path = images_dir / image_id
        if not path.is_file():
            missing += 1
            continue
        if not kept:
            no_caption += 1
            continue
        images[image_id] = path
        captions[image_id] = kept
    if missing:
        log.warning(
            "%s: %d of %d listed images are missing under %s; skipped",
            source,
            missing,
            len(listed),
            images_dir,
        )
    if empty:
        log.warning("%s: dropped %d empty caption(s)", source, empty)
    if no_caption:
        log.warning("%s: skipped %d image(s) with no non-empty caption", source, no_caption)
    if not images:
        raise IcapnetError(
            f"{images_dir}: no usable images ({len(listed)} listed in {source}, none found)"
        )
    if splits is None:
        splits = split_by_image(images, seed)
    else:
        unsplit = set(images) - {i for ids in splits.values() for i in ids}
        if unsplit:
            log.info("%s: %d image(s) are in no split file; left out", source, len(unsplit))
            for image_id in unsplit:
                del images[image_id], captions[image_id]
        splits = {s: sorted(i for i in set(splits.get(s, [])) if i in images) for s in SPLITS}
        if not any(splits.values()):
            raise IcapnetError(f"{source}: no usable image is in any split")
    ds = CaptionDataset(name=name, root=root, images=images, captions=captions, splits=splits)
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
        listed.setdefault(_safe_id(name, path, lineno), []).append(caption.strip())
    return listed


def _parse_split_files(text_dir: Path) -> dict[str, list[str]] | None:
    """Official Flickr8k split lists, or None when they are not all there."""
    paths = {s: text_dir / f for s, f in _SPLIT_FILES.items()}
    if not all(p.is_file() for p in paths.values()):
        present = [p.name for p in paths.values() if p.is_file()]
        if present:
            log.warning(
                "%s: only %s of the split files found; using an 80/10/10 split",
                text_dir,
                ", ".join(present),
            )
        return None
    splits: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for split, path in paths.items():
        ids = []
        for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            image_id = _safe_id(line, path, lineno)
            if image_id in seen:
                raise IcapnetError(
                    f"{path}:{lineno}: {image_id} is also in the {seen[image_id]} split"
                )
            seen[image_id] = split
            ids.append(image_id)
        splits[split] = ids
    return splits


def _load_flickr8k(data_dir: Path, seed: int = 0) -> CaptionDataset:
    return _read_flickr8k(data_dir, seed, "flickr8k")


def _read_flickr8k(data_dir: Path, seed: int, name: str) -> CaptionDataset:
    kaggle_csv = data_dir / _KAGGLE_CAPTIONS
    has_original = any((data_dir / d).is_dir() for d in _ORIGINAL_IMAGE_DIRS)
    if kaggle_csv.is_file() and ((data_dir / _KAGGLE_IMAGES).is_dir() or not has_original):
        listed = _parse_kaggle_captions(kaggle_csv)
        images_dir = data_dir / _KAGGLE_IMAGES
        # Kaggle ships no split files; use the official ones if the user has them beside it.
        splits = next(
            (
                _parse_split_files(data_dir / d)
                for d in _TEXT_SUBDIRS
                if (data_dir / d / _SPLIT_FILES["train"]).is_file()
            ),
            None,
        )
        return _finish(name, data_dir, images_dir, listed, splits, seed, kaggle_csv)
    images_dir = next((data_dir / d for d in _ORIGINAL_IMAGE_DIRS if (data_dir / d).is_dir()), None)
    text_dir = next(
        (data_dir / d for d in _TEXT_SUBDIRS if (data_dir / d / _TOKEN_FILE).is_file()), None
    )
    if images_dir is None or text_dir is None:
        raise IcapnetError(
            f"{data_dir}: not a Flickr8k folder (expected Images/ + captions.txt, or "
            f"Flicker8k_Dataset/ + Flickr8k.token.txt); run 'python -m icapnet.download'"
        )
    token_file = text_dir / _TOKEN_FILE
    listed = _parse_token_file(token_file)
    splits = _parse_split_files(text_dir)
    return _finish(name, data_dir, images_dir, listed, splits, seed, token_file)


def _load_synthetic(data_dir: Path, seed: int = 0) -> CaptionDataset:
    from icapnet.data.synthetic import BOXES_FILE  # light import; keeps module order simple

    boxes_file = data_dir / BOXES_FILE
    if not boxes_file.is_file():
        raise IcapnetError(
            f"{boxes_file}: not found; generate scenes with icapnet.data.synthetic.generate_scenes"
        )
    ds = _read_flickr8k(data_dir, seed, "synthetic")
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
    name = "karpathy"
    return _finish(name, root, img_dir, listed, _dedupe_splits(splits, path), 0, path)


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
    return _finish("coco", data_dir, img_dir, listed, splits, seed, source)


__all__ = ["DATASETS", "SPLITS", "CaptionDataset", "load_dataset", "split_by_image"]
