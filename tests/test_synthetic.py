import csv
import itertools
import json

import numpy as np
import pytest
from PIL import Image

from icapnet.data.datasets import load_dataset
from icapnet.data.synthetic import (
    COLORS,
    SHAPES,
    SceneObject,
    describe_scene,
    ensure_scenes,
    generate_scenes,
    render_scene,
)
from icapnet.data.text import Vocabulary, normalize_caption
from icapnet.errors import IcapnetError


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return generate_scenes(tmp_path_factory.mktemp("syn") / "scenes", 40, seed=7, progress=False)


def test_same_seed_gives_byte_identical_files(tmp_path, scenes):
    again = generate_scenes(tmp_path / "again", 40, seed=7, progress=False)
    for name in ("captions.txt", "boxes.json"):
        assert (again / name).read_bytes() == (scenes / name).read_bytes()
    files = sorted(p.name for p in (scenes / "Images").iterdir())
    assert len(files) == 40
    for name in files:
        assert (again / "Images" / name).read_bytes() == (scenes / "Images" / name).read_bytes()
    other = generate_scenes(tmp_path / "other", 5, seed=8, progress=False)
    assert (other / "boxes.json").read_bytes() != (scenes / "boxes.json").read_bytes()
    # scene i depends only on (seed, i): a shorter run is a prefix of a longer one
    prefix = generate_scenes(tmp_path / "prefix", 3, seed=7, progress=False)
    for i in range(3):
        name = f"scene_{i:05d}.jpg"
        assert (prefix / "Images" / name).read_bytes() == (scenes / "Images" / name).read_bytes()


def test_layout_is_kaggle_and_reads_back_with_boxes(scenes):
    with open(scenes / "captions.txt", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "caption"] and len(rows) == 1 + 40 * 5
    ds = load_dataset("synthetic", scenes)
    assert ds.name == "synthetic" and len(ds.images) == 40
    assert all(len(c) == 5 for c in ds.captions.values())
    assert set(ds.boxes) == set(ds.images)
    assert sorted(i for ids in ds.splits.values() for i in ids) == sorted(ds.images)
    with Image.open(ds.images["scene_00000.jpg"]) as im:
        assert im.size == (224, 224) and im.format == "JPEG" and im.mode == "RGB"


def test_boxes_are_in_image_separated_left_to_right_and_match_pixels(scenes):
    boxes = json.loads((scenes / "boxes.json").read_text())
    counts = set()
    for image_id, objects in boxes.items():
        counts.add(len(objects))
        centers = [(o["box"][0] + o["box"][2]) / 2 for o in objects]
        assert centers == sorted(centers)
        assert all(b - a >= 0.2 * 224 for a, b in itertools.pairwise(centers))
        for o in objects:
            x0, y0, x1, y1 = o["box"]
            assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
            side = x1 - x0
            assert (40 <= side <= 55) if o["size"] == "small" else (70 <= side <= 90)
            assert o["shape"] in SHAPES and o["color"] in COLORS
            # the object's colour dominates the centre of its box
            with Image.open(scenes / "Images" / image_id) as im:
                px = np.asarray(im.convert("RGB"), dtype=float)
            cy, cx = (y0 + y1) // 2 + (y1 - y0) // 6, (x0 + x1) // 2
            patch = px[cy - 3 : cy + 4, cx - 3 : cx + 4].reshape(-1, 3).mean(0)
            assert np.abs(patch - np.array(COLORS[o["color"]])).max() < 45, (image_id, o)
        # non-overlapping
        for i, a in enumerate(objects):
            for b in objects[i + 1 :]:
                A, B = a["box"], b["box"]
                assert A[2] <= B[0] or B[2] <= A[0] or A[3] <= B[1] or B[3] <= A[1]
    assert counts == {1, 2, 3}


def test_captions_are_a_function_of_content_and_name_objects_left_to_right():
    left = SceneObject("circle", "red", "large", (10, 10, 90, 90))
    right = SceneObject("square", "blue", "small", (150, 100, 195, 145))
    caps = describe_scene([right, left])
    assert len(caps) == 5 and len(set(caps)) == 5
    assert caps == describe_scene([left, right])
    assert "a large red circle to the left of a small blue square" in caps
    for c in caps:
        assert c.index("red circle") < c.index("blue square")
    single = describe_scene([left])
    assert "a large red circle" in single and "there is a large red circle" in single


def test_vocabulary_is_small_and_every_word_frequent(scenes):
    ds = load_dataset("synthetic", scenes)
    captions = [c for cs in ds.captions.values() for c in cs]
    vocab = Vocabulary.build(captions, min_count=5)
    words = {w for c in captions for w in normalize_caption(c).split()}
    assert words <= set(vocab.words)  # min_count 5 keeps everything at 40 scenes
    assert len(vocab) < 45


def test_render_is_deterministic_per_rng():
    a, oa = render_scene(np.random.default_rng([1, 2]))
    b, ob = render_scene(np.random.default_rng([1, 2]))
    assert oa == ob and np.array_equal(np.asarray(a), np.asarray(b))


def test_refuses_to_overwrite_unrelated_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(IcapnetError, match="not a synthetic dataset"):
        generate_scenes(tmp_path, 2, progress=False)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_ensure_scenes_reuses_matching_folder_and_regenerates_otherwise(tmp_path):
    out = ensure_scenes(tmp_path / "s", 3, seed=1, progress=False)
    stamp = (out / "captions.txt").stat().st_mtime_ns
    assert ensure_scenes(out, 3, seed=1) == out
    assert (out / "captions.txt").stat().st_mtime_ns == stamp
    ensure_scenes(out, 4, seed=1, progress=False)
    assert len(list((out / "Images").iterdir())) == 4
