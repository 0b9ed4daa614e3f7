"""Checks of a feature cache: the manifest's schema, and whether the shards are what it says.

Two levels, so every reader can afford the first:

* cheap, on every open (:func:`validate_manifest`, :func:`check_shard_files`): the manifest's
  schema and types, the fingerprints of its settings (an edited ``image_size`` or ``layer``),
  each shard's record count against its image list, its size in bytes against
  ``feature_shape`` (every record has the same layout, so a shard's size follows from its
  image ids and the shape) and against the file on disk. A truncated or overwritten shard,
  an edited ``feature_shape`` or a count that does not add up is one line naming the file and
  the field, before anything is read.
* full (:func:`verify_shard`; ``prepare`` before reusing a shard, ``prepare --verify``): read
  every record (TFRecord CRCs), check the count, the image ids in order and each record's
  feature size, and the shard's sha256 recorded when it was written.

The functions take paths and plain dicts (no cache object), so they work on any folder a
reader can open.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from icapnet import fs
from icapnet.config import changed_fields, field_fingerprints
from icapnet.errors import IcapnetError
from icapnet.layout import CACHE_CAPTIONS_FILE, FEATURES_DIR, MANIFEST_FILE, VOCAB_FILE, read_json

CACHE_DTYPE = "float16"
CACHE_VERSION = 1
# What the features depend on; their fingerprints are recorded when the cache is written.
SETTINGS = ("backbone", "layer", "weights", "random_init", "weights_sha1", "image_size",
            "dtype", "backbone_dtype", "feature_shape")
_SHARD_NAME = re.compile(r"^[A-Za-z0-9_]+-\d{5,}\.tfrecord$")
_TFRECORD_FRAMING = 16  # length (8) + its CRC (4) + data CRC (4)


def settings_fingerprints(manifest: dict[str, Any]) -> dict[str, str]:
    """Fingerprints of the settings the features depend on (what ``prepare`` records)."""
    return field_fingerprints({k: manifest[k] for k in SETTINGS if k in manifest})


# --------------------------------------------------------------------------- schema


def _kind(value: Any) -> str:
    return type(value).__name__ if value is not None else "null"


class _Checker:
    """Collects the first problem as ``{manifest}: {field}: {problem}``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, field: str, problem: str) -> None:
        raise IcapnetError(f"{self.path}: {field}: {problem} (restore the file, or delete it "
                           "and re-run prepare to rebuild the cache)")

    def get(self, obj: dict, key: str, field: str, kind: type | tuple[type, ...],
            required: bool = True) -> Any:
        if key not in obj:
            if required:
                self.fail(field, "missing")
            return None
        value = obj[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join("an integer" if k is int else "a string" if k is str else
                                "a list" if k is list else "an object" if k is dict else
                                "true/false" if k is bool else k.__name__ for k in kinds)
            self.fail(field, f"expected {names}, got {_kind(value)} {value!r:.40}")
        return value


def validate_manifest(manifest: Any, path: str | Path) -> dict[str, Any]:
    """The manifest of a cache, checked for schema, types and internal consistency.

    Raises an IcapnetError naming ``path`` and the field (``shards.train-00000.tfrecord.count``).
    """
    c = _Checker(fs.path(path))
    if not isinstance(manifest, dict):
        raise IcapnetError(f"{path}: not an icapnet feature-cache manifest (expected a JSON "
                           f"object, got {_kind(manifest)})")
    version = c.get(manifest, "version", "version", int, required=False)
    if version is not None and version > CACHE_VERSION:
        c.fail("version", f"{version} is newer than this icapnet reads ({CACHE_VERSION})")
    for key in ("backbone", "layer", "weights", "dtype"):
        c.get(manifest, key, key, str)
    for key in ("random_init", "weights_sha1", "backbone_dtype", "dataset", "data_dir",
                "finished_at"):
        c.get(manifest, key, key, str, required=False)
    if manifest["dtype"] != CACHE_DTYPE:
        c.fail("dtype", f"{manifest['dtype']!r} (this icapnet writes and reads {CACHE_DTYPE})")
    if c.get(manifest, "image_size", "image_size", int) < 1:
        c.fail("image_size", f"must be >= 1, got {manifest['image_size']}")
    complete = c.get(manifest, "complete", "complete", bool)
    shape = manifest.get("feature_shape")
    if shape is not None or complete or manifest.get("shards"):
        shape = c.get(manifest, "feature_shape", "feature_shape", list)
        if len(shape) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1
                                      for n in shape):
            c.fail("feature_shape", f"expected [regions, channels] (two integers >= 1), "
                   f"got {shape!r:.40}")
    if manifest.get("split") is not None:
        c.get(manifest, "split", "split", dict)
    skipped = c.get(manifest, "skipped", "skipped", dict, required=False) or {}
    for image_id, reason in skipped.items():
        if not isinstance(reason, str):
            c.fail(f"skipped.{image_id}", f"expected a string, got {_kind(reason)}")
    images = c.get(manifest, "images", "images", dict)
    for image_id, entry in images.items():
        field = f"images.{image_id}"
        if not isinstance(entry, dict):
            c.fail(field, f"expected an object, got {_kind(entry)}")
        for key in ("split", "shard", "sha1"):
            c.get(entry, key, f"{field}.{key}", str)
    shards = c.get(manifest, "shards", "shards", dict)
    for name, info in shards.items():
        _check_shard_entry(c, name, info, images, shape)
    for image_id, entry in images.items():
        if entry["shard"] not in shards:
            c.fail(f"images.{image_id}.shard", f"{entry['shard']!r} is not in 'shards'")
    recorded = c.get(manifest, "fingerprints", "fingerprints", dict, required=False)
    if recorded is not None:
        changed = changed_fields(settings_fingerprints(manifest), recorded)
        if changed:
            c.fail(changed[0], f"{manifest.get(changed[0])!r} differs from the value the "
                   "cache was built with (its fingerprint does not match)")
    return manifest


def _check_shard_entry(c: _Checker, name: str, info: Any, images: dict,
                       shape: list[int] | None) -> None:
    field = f"shards.{name}"
    if not _SHARD_NAME.match(name):
        c.fail(field, "not a shard file name (expected like train-00000.tfrecord)")
    if not isinstance(info, dict):
        c.fail(field, f"expected an object, got {_kind(info)}")
    split = c.get(info, "split", f"{field}.split", str)
    for key in ("images", "written"):
        ids = c.get(info, key, f"{field}.{key}", list)
        if not all(isinstance(i, str) for i in ids):
            c.fail(f"{field}.{key}", "expected a list of image ids")
    count = c.get(info, "count", f"{field}.count", int)
    size = c.get(info, "bytes", f"{field}.bytes", int)
    c.get(info, "sha256", f"{field}.sha256", str, required=False)
    written = info["written"]
    if count != len(written):
        c.fail(f"{field}.count", f"{count}, but 'written' lists {len(written)} images")
    for image_id in written:
        entry = images.get(image_id)
        if entry is None or entry["shard"] != name or entry["split"] != split:
            c.fail(f"images.{image_id}", f"missing or not pointing at shard {name} ({split})")
    if shape is not None and size != shard_bytes(written, shape):
        c.fail("feature_shape", f"{shape} does not match the size of {name} ({size} bytes "
               f"for {count} records; {shard_bytes(written, shape)} expected)")


@functools.lru_cache(maxsize=256)
def _record_bytes(id_bytes: int, feature_bytes: int) -> int:
    """On-disk size of one record (serialize_record's Example plus TFRecord framing)."""
    import tensorflow as tf

    example = tf.train.Example(features=tf.train.Features(feature={
        "image_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x" * id_bytes])),
        "features": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[bytes(feature_bytes)])),
    }))
    return example.ByteSize() + _TFRECORD_FRAMING


def shard_bytes(image_ids: Iterable[str], feature_shape: Iterable[int]) -> int:
    """Size of a shard holding ``image_ids`` with float16 features of ``feature_shape``."""
    regions, channels = feature_shape
    feature_bytes = int(regions) * int(channels) * 2
    return sum(_record_bytes(len(i.encode("utf-8")), feature_bytes) for i in image_ids)


# --------------------------------------------------------------------------- shard files


def shard_path(root: str | Path, name: str) -> Path:
    return fs.path(root) / FEATURES_DIR / name


def check_shard_files(root: str | Path, manifest: dict[str, Any],
                      names: Iterable[str] | None = None) -> None:
    """Each recorded shard exists with the recorded size (one ``stat`` per shard)."""
    for name in sorted(manifest["shards"] if names is None else names):
        problem = shard_size_problem(shard_path(root, name), manifest["shards"][name]["bytes"])
        if problem:
            raise IcapnetError(f"{shard_path(root, name)}: {problem}; re-run prepare to "
                               "rebuild it")


def shard_size_problem(path: Path, expected: int) -> str | None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "feature shard missing"
    if size != expected:
        what = "truncated" if size < expected else "longer than written"
        return f"feature shard {what} ({size} bytes, the manifest records {expected})"
    return None


def file_sha256(path: str | Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with fs.path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_records(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """(image_id, raw float16 feature bytes) of every record, in file order.

    A record whose CRC does not match raises ``tf.errors.DataLossError``.
    """
    import tensorflow as tf

    for raw in tf.data.TFRecordDataset(str(path)):
        fields = tf.train.Example.FromString(raw.numpy()).features.feature
        yield (fields["image_id"].bytes_list.value[0].decode("utf-8"),
               fields["features"].bytes_list.value[0])


def tf_reason(err: Exception) -> str:
    """TensorFlow's reason without its op-name decoration (``corrupted record at 4182``)."""
    text = getattr(err, "message", None) or str(err)
    found = re.search(r"(?:corrupted|truncated) record at \d+", text)
    if found:
        return found[0]
    return re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:\w+\].*", "", text).splitlines()[0].strip()


def verify_shard(path: str | Path, info: dict[str, Any],
                 feature_shape: Iterable[int]) -> str | None:
    """What is wrong with one shard (None: it holds exactly what the manifest says).

    Size, every record's CRC, the image ids in order, each record's feature size, the record
    count and the sha256 (when recorded).
    """
    import tensorflow as tf

    path = fs.path(path)
    problem = shard_size_problem(path, info["bytes"])
    if problem:
        return problem
    regions, channels = feature_shape
    feature_bytes = int(regions) * int(channels) * 2
    written = info["written"]
    count = 0
    try:
        for image_id, data in read_records(path):
            if count >= len(written):
                return f"more records than the {len(written)} the manifest records"
            if image_id != written[count]:
                return f"record {count} is {image_id!r}, the manifest says {written[count]!r}"
            if len(data) != feature_bytes:
                return (f"record {count} ({image_id}) has {len(data)} feature bytes, "
                        f"expected {feature_bytes} for {regions}x{channels} float16")
            count += 1
    except tf.errors.DataLossError as err:
        return (f"corrupt record after {count} good one{'s' * (count != 1)} "
                f"({tf_reason(err)})")
    except Exception as err:  # a record that is not an icapnet Example
        return f"unreadable record {count} ({type(err).__name__}: {err})"
    if count != len(written):
        return f"{count} records, the manifest records {len(written)} (truncated)"
    if info.get("sha256") and file_sha256(path) != info["sha256"]:
        return "content changed since it was written (sha256 differs from the manifest)"
    return None


def damaged_shards(root: str | Path, manifest: dict[str, Any],
                   names: Iterable[str] | None = None) -> dict[str, str]:
    """``{shard name: problem}`` for every damaged shard (all of them, or ``names``)."""
    shape = manifest["feature_shape"]
    found = {}
    for name in sorted(manifest["shards"] if names is None else names):
        problem = verify_shard(shard_path(root, name), manifest["shards"][name], shape)
        if problem:
            found[name] = problem
    return found


def corrupt_data_error(root: str | Path, manifest: dict[str, Any], splits: Iterable[str],
                       err: Exception) -> IcapnetError:
    """What a reader says when TensorFlow reports lost data: which shard, and why.

    TensorFlow's DataLossError names a byte offset but not the file, so the shards of the
    splits being read are verified to find it.
    """
    wanted = set(splits)
    names = [n for n, info in manifest["shards"].items() if info["split"] in wanted]
    damaged = damaged_shards(root, manifest, names)
    if damaged:
        name, problem = next(iter(damaged.items()))
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        return IcapnetError(f"{shard_path(root, name)}: {problem}{more}; re-run prepare to "
                            "rebuild it")
    return IcapnetError(f"{root}: feature data could not be read ({tf_reason(err)}); "
                        "check it with prepare --verify")


def verify_cache(root: str | Path, source_images: Mapping[str, str | Path] | None = None
                 ) -> tuple[dict[str, Any], list[tuple[Path, str]]]:
    """What ``prepare --verify`` checks, without changing anything -> (manifest, problems).

    The manifest (schema, fingerprints, counts, sizes; a broken one raises), completeness,
    vocab.json and captions.json, every shard in full (:func:`verify_shard`) and, given the
    dataset's ``source_images`` (image id -> file), that each cached image's file still has
    the sha1 it had when its features were extracted.
    """
    from icapnet.data.text import Vocabulary

    root = fs.path(root)
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise IcapnetError(f"{root}: not a feature cache (no {MANIFEST_FILE})")
    manifest = validate_manifest(read_json(path), path)
    problems: list[tuple[Path, str]] = []
    if not manifest["complete"]:
        problems.append((root, "incomplete (prepare was interrupted); re-run prepare to finish"))
    else:
        try:
            Vocabulary.load(root / VOCAB_FILE)
            _check_captions(root / CACHE_CAPTIONS_FILE, manifest)
        except IcapnetError as err:
            where, _, problem = str(err).partition(": ")
            problems.append((Path(where), problem))
    for name, problem in damaged_shards(root, manifest).items():
        problems.append((shard_path(root, name), problem))
    if source_images is not None:
        for image_id, entry in sorted(manifest["images"].items()):
            file = source_images.get(image_id)
            if file is None or not Path(file).is_file():
                problems.append((shard_path(root, entry["shard"]),
                                 f"source image {image_id} not found in the dataset"))
            elif file_sha256(file, "sha1") != entry["sha1"]:
                problems.append((shard_path(root, entry["shard"]), f"source image {file} "
                                 "changed since its features were extracted"))
    return manifest, problems


def _check_captions(path: Path, manifest: dict[str, Any]) -> None:
    captions = read_json(path)
    if not isinstance(captions, dict) or not all(isinstance(v, dict) for v in captions.values()):
        raise IcapnetError(f"{path}: expected {{split: {{image_id: [captions]}}}}")
    for image_id, entry in manifest["images"].items():
        if image_id not in captions.get(entry["split"], {}):
            raise IcapnetError(f"{path}: no captions for {image_id} ({entry['split']})")


__all__ = ["CACHE_DTYPE", "CACHE_VERSION", "check_shard_files", "corrupt_data_error",
           "damaged_shards", "file_sha256", "settings_fingerprints", "shard_bytes",
           "validate_manifest", "verify_cache", "verify_shard"]
