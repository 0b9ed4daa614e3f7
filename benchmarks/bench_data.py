"""Caption sets and random-feature caches for the speed benchmarks (no backbone run needed).

Speed does not depend on what the region features contain, only on their shape and on the
captions (how many, how long, how large the vocabulary). So the speed benchmarks write a
feature cache in the documented layout with random float16 features and REAL caption sets:

* ``synthetic``: the captions of the synthetic scenes (``icapnet.data.synthetic``: 1-3
  objects, five phrasings each), the data of the quality benchmark and the demo;
* ``flickr8k``: the 6,000 official training images of Flickr8k with their 30,000 captions
  from ``../shared/data/flickr8k/Flickr8k.token.txt`` (real length distribution and
  vocabulary). When that file is absent a stand-in is generated from the length histogram
  recorded below and made-up words, and the caller is told so.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLICKR8K_DIR = ROOT.parent / "shared" / "data" / "flickr8k"
TOKEN_FILE = "Flickr8k.token.txt"
TRAIN_LIST = "Flickr_8k.trainImages.txt"
# Words per normalised caption of the 30,000 Flickr8k training captions (mean 10.8, longest 37),
# measured from Flickr8k.token.txt; used only when that file is missing.
FLICKR8K_LENGTHS = {
    2: 15, 3: 125, 4: 340, 5: 854, 6: 1948, 7: 2501, 8: 2917, 9: 3318, 10: 3310, 11: 3134,
    12: 2772, 13: 2332, 14: 1864, 15: 1339, 16: 979, 17: 683, 18: 518, 19: 369, 20: 213,
    21: 138, 22: 105, 23: 80, 24: 51, 25: 36, 26: 19, 27: 10, 28: 9, 29: 8, 30: 5, 31: 3,
    32: 2, 33: 2, 37: 1,
}
FLICKR8K_VOCAB = 2538  # words seen >= 5 times in the training captions, with the 4 specials


def synthetic_captions(num_images: int, seed: int = 0) -> dict[str, list[str]]:
    """image_id -> the five captions of a random scene, as ``describe_scene`` writes them.

    Only the objects' kinds matter for the words, so no pixels are drawn: 1-3 objects, each
    a random shape / colour / size, as ``render_scene`` picks them.
    """
    from icapnet.data.synthetic import COLORS, SHAPES, SIZES, SceneObject, describe_scene

    rng = np.random.default_rng(seed)
    out = {}
    for i in range(num_images):
        count = int(rng.integers(1, 4))
        objects = [
            SceneObject(SHAPES[int(rng.integers(len(SHAPES)))],
                        list(COLORS)[int(rng.integers(len(COLORS)))],
                        list(SIZES)[int(rng.integers(len(SIZES)))], (10 * k, 0, 10 * k + 5, 5))
            for k in range(count)
        ]
        out[f"scene_{i:05d}.jpg"] = describe_scene(objects)
    return out


def flickr8k_captions(data_dir: Path = FLICKR8K_DIR, seed: int = 0
                      ) -> tuple[dict[str, list[str]], str]:
    """(image_id -> captions of the 6,000 training images, where they came from)."""
    tokens, train = data_dir / TOKEN_FILE, data_dir / TRAIN_LIST
    if tokens.is_file() and train.is_file():
        wanted = {line.strip() for line in train.read_text().splitlines() if line.strip()}
        out: dict[str, list[str]] = {}
        for line in tokens.read_text(encoding="utf-8").splitlines():
            name, _, caption = line.partition("\t")
            image_id = name.split("#")[0]
            if image_id in wanted and caption.strip():
                out.setdefault(image_id, []).append(caption)
        return out, f"real Flickr8k training captions ({tokens})"
    return _flickr8k_stand_in(seed), (f"STAND-IN: {tokens} not found, captions generated from "
                                      "the recorded Flickr8k length histogram and made-up words")


def _flickr8k_stand_in(seed: int) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    lengths = np.array(list(FLICKR8K_LENGTHS))
    probs = np.array(list(FLICKR8K_LENGTHS.values()), float)
    probs /= probs.sum()
    words = [f"w{k}" for k in range(FLICKR8K_VOCAB - 4)]
    zipf = 1.0 / np.arange(1, len(words) + 1)
    zipf /= zipf.sum()
    return {
        f"{i:010d}.jpg": [" ".join(rng.choice(words, size=int(n), p=zipf))
                          for n in rng.choice(lengths, size=5, p=probs)]
        for i in range(6000)
    }


def write_random_cache(root: Path, captions: dict[str, dict[str, list[str]]],
                       feature_shape: tuple[int, int] = (196, 512), shard_size: int = 256,
                       min_count: int = 5, seed: int = 0) -> Path:
    """A complete feature cache at ``root`` (random float16 features) for ``captions``.

    ``captions`` is ``{split: {image_id: [captions]}}``. Features are |N(0, 1)| like ReLU
    outputs. Reuses ``root`` when it already holds exactly these captions and shape.
    """
    import tensorflow as tf

    from icapnet.config import RANDOM_BACKBONE
    from icapnet.data.cache import serialize_record
    from icapnet.data.text import Vocabulary, normalize_caption

    root = Path(root)
    stamp = {"captions": _digest(captions), "shape": list(feature_shape)}
    if (root / "bench.json").is_file() and json.loads((root / "bench.json").read_text()) == stamp:
        _complete_manifest(root)  # caches written before open_cache validated every field
        return root
    rng = np.random.default_rng(seed)
    (root / "features").mkdir(parents=True, exist_ok=True)
    manifest = {"backbone": "vgg16", "layer": "block5_conv3", "weights": "none",
                "random_init": RANDOM_BACKBONE, "image_size": 224, "dtype": "float16",
                "feature_shape": list(feature_shape), "dataset": "benchmark", "images": {},
                "shards": {}, "skipped": {}, "complete": True}
    clean = {split: {i: [normalize_caption(c) for c in caps] for i, caps in per.items()}
             for split, per in captions.items()}
    for split, per_image in clean.items():
        ids = sorted(per_image)
        for start in range(0, len(ids), shard_size):
            shard = f"{split}-{start // shard_size:05d}.tfrecord"
            chunk = ids[start:start + shard_size]
            with tf.io.TFRecordWriter(str(root / "features" / shard)) as writer:
                for image_id in chunk:
                    feats = np.abs(rng.standard_normal(feature_shape, np.float32))
                    writer.write(serialize_record(image_id, feats.astype(np.float16)))
                    manifest["images"][image_id] = {"split": split, "shard": shard, "sha1": "0"}
            manifest["shards"][shard] = {"split": split, "count": len(chunk), "written": chunk}
    (root / "manifest.json").write_text(json.dumps(manifest))
    _complete_manifest(root)
    (root / "captions.json").write_text(json.dumps(clean))
    train = [c for caps in clean.get("train", {}).values() for c in caps]
    Vocabulary.build(train, min_count=min_count).save(root / "vocab.json")
    (root / "bench.json").write_text(json.dumps(stamp))
    return root


def _complete_manifest(root: Path) -> None:
    """Fill in what ``open_cache`` validates: each shard's image list and its size."""
    manifest = json.loads((root / "manifest.json").read_text())
    for name, info in manifest["shards"].items():
        info.setdefault("images", list(info["written"]))
        info["bytes"] = (root / "features" / name).stat().st_size
    (root / "manifest.json").write_text(json.dumps(manifest))


def _digest(captions: dict) -> str:
    import hashlib

    return hashlib.sha1(json.dumps(captions, sort_keys=True).encode()).hexdigest()


def length_histogram(captions: dict[str, list[str]]) -> Counter:
    """Words per normalised caption -> count."""
    from icapnet.data.text import normalize_caption

    return Counter(len(normalize_caption(c).split()) for caps in captions.values() for c in caps)
