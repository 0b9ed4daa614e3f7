import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from icapnet.data.datasets import CaptionDataset, load_dataset, split_by_image
from icapnet.errors import IcapnetError


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (120, 30, 200)).save(path)


def _check_splits(ds: CaptionDataset) -> None:
    seen = [i for ids in ds.splits.values() for i in ids]
    assert len(seen) == len(set(seen)), "splits overlap"
    assert set(seen) == set(ds.images) == set(ds.captions)
    for ids in ds.splits.values():
        assert ids == sorted(ids)
    for image_id, path in ds.images.items():
        assert path.is_file() and path.name == Path(image_id).name


def _kaggle(root: Path, n: int = 20, missing: int = 0) -> Path:
    lines = ["image,caption"]
    for i in range(n):
        name = f"{1000 + i}_abc.jpg"
        if i >= missing:
            _image(root / "Images" / name)
        lines += [
            f"{name},A dog runs in the park .",
            f'{name},"A dog, brown and white, says ""woof"" ."',
            f"{name},A child in a pink dress , climbing up stairs .",
        ]
    (root / "captions.txt").write_text("\n".join(lines) + "\n")
    return root


def test_kaggle_layout_quotes_commas_and_random_split_by_image(tmp_path):
    ds = load_dataset("flickr8k", _kaggle(tmp_path), split="random")
    assert ds.name == "flickr8k" and len(ds.images) == 20
    caps = ds.captions["1000_abc.jpg"]
    assert caps == [
        "A dog runs in the park .",
        'A dog, brown and white, says "woof" .',
        "A child in a pink dress , climbing up stairs .",
    ]
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 16, "val": 2, "test": 2}
    assert ds.split_info["source"] == "random 80/10/10 by image (seed 0)"
    _check_splits(ds)
    again = load_dataset("flickr8k", tmp_path, split="random")
    assert again.splits == ds.splits
    other = load_dataset("flickr8k", tmp_path, split="random", seed=1)
    assert other.splits != ds.splits
    assert other.split_info["source"] == "random 80/10/10 by image (seed 1)"


def test_made_up_names_are_in_no_official_list(tmp_path):
    """The default for flickr8k is the official split; other data must ask for random."""
    with pytest.raises(IcapnetError, match=r"captions\.txt: none of the 20 images with "
                       r"captions is in the official \(package data\) split; .*--split random"):
        load_dataset("flickr8k", _kaggle(tmp_path))
    with pytest.raises(IcapnetError, match=r"^--seed 3: the official Flickr8k split is fixed"):
        load_dataset("flickr8k", tmp_path, seed=3)
    with pytest.raises(IcapnetError, match="--split sideways: unknown"):
        load_dataset("flickr8k", tmp_path, split="sideways")


def test_missing_images_are_skipped_and_counted(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("flickr8k", _kaggle(tmp_path, n=6, missing=2), split="random")
    assert sorted(ds.images) == [f"{1000 + i}_abc.jpg" for i in range(2, 6)]
    assert "2 listed image(s) missing under" in caplog.text
    assert ds.split_info["missing"] == {"all": 2}
    _check_splits(ds)


def test_zero_usable_images_is_an_error(tmp_path):
    _kaggle(tmp_path, n=3, missing=3)
    with pytest.raises(IcapnetError, match="no usable images"):
        load_dataset("flickr8k", tmp_path, split="random")


def test_empty_captions_dropped_with_warning(tmp_path, caplog):
    _image(tmp_path / "Images" / "a.jpg")
    _image(tmp_path / "Images" / "b.jpg")
    (tmp_path / "captions.txt").write_text("image,caption\na.jpg,A cat .\na.jpg, . \nb.jpg,!!\n")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("flickr8k", tmp_path, split="random")
    assert ds.captions == {"a.jpg": ["A cat ."]}
    assert "dropped 2 empty caption" in caplog.text


def test_kaggle_malformed_line_names_file_and_line(tmp_path):
    _kaggle(tmp_path, n=2)
    with open(tmp_path / "captions.txt", "a") as f:
        f.write("this line has no comma\n")
    with pytest.raises(IcapnetError, match=r"captions\.txt:8: malformed line"):
        load_dataset("flickr8k", tmp_path)


def _original(root: Path, text_dir: str = "Flickr8k_text", split_files: bool = True) -> Path:
    names = [f"{2000 + i}_x.jpg" for i in range(10)]
    for name in names[:-1]:  # the last one is listed but missing
        _image(root / "Flicker8k_Dataset" / name)
    text = root / text_dir
    text.mkdir(parents=True, exist_ok=True)
    token = [f"{n}#{k}\tA man , rides a bike #{k} ." for n in names for k in range(5)]
    (text / "Flickr8k.token.txt").write_text("\n".join(token) + "\n")
    if split_files:
        (text / "Flickr_8k.trainImages.txt").write_text("\n".join(names[:6]) + "\n")
        (text / "Flickr_8k.devImages.txt").write_text("\n".join(names[6:8]) + "\n")
        (text / "Flickr_8k.testImages.txt").write_text("\n".join(names[8:]) + "\n")
    return root


@pytest.mark.parametrize("text_dir", ["Flickr8k_text", ""])
def test_original_layout_split_files_beside_the_data_win(tmp_path, text_dir, caplog):
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("flickr8k", _original(tmp_path, text_dir))
    assert "differ from the official Flickr8k lists" in caplog.text
    assert ds.split_info["source"].startswith("split files beside the data (differ from")
    assert ds.split_info["missing"] == {"train": 0, "val": 0, "test": 1}
    assert ds.splits["train"] == [f"{2000 + i}_x.jpg" for i in range(6)]
    assert ds.splits["val"] == ["2006_x.jpg", "2007_x.jpg"]
    assert ds.splits["test"] == ["2008_x.jpg"]  # 2009 is missing on disk
    assert len(ds.captions["2000_x.jpg"]) == 5
    assert ds.captions["2000_x.jpg"][1] == "A man , rides a bike #1 ."
    _check_splits(ds)


def test_original_layout_random_split(tmp_path):
    ds = load_dataset("flickr8k", _original(tmp_path, split_files=False), split="random")
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 7, "val": 1, "test": 1}
    _check_splits(ds)


def test_token_file_malformed_line(tmp_path):
    _original(tmp_path)
    token = tmp_path / "Flickr8k_text" / "Flickr8k.token.txt"
    lines = token.read_text().splitlines()
    lines[2] = "2000_x.jpg A caption without the tab"
    token.write_text("\n".join(lines) + "\n")
    with pytest.raises(IcapnetError, match=r"Flickr8k\.token\.txt:3: malformed line"):
        load_dataset("flickr8k", tmp_path)


def test_image_in_two_split_files_is_an_error(tmp_path):
    _original(tmp_path)
    with open(tmp_path / "Flickr8k_text" / "Flickr_8k.testImages.txt", "a") as f:
        f.write("2000_x.jpg\n")
    with pytest.raises(IcapnetError, match=r"testImages\.txt:3: 2000_x\.jpg is also in the train"):
        load_dataset("flickr8k", tmp_path)


def test_not_a_flickr8k_folder(tmp_path):
    with pytest.raises(IcapnetError, match="not a Flickr8k folder"):
        load_dataset("flickr8k", tmp_path)
    with pytest.raises(IcapnetError, match="unknown dataset"):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(IcapnetError, match="not found"):
        load_dataset("flickr8k", tmp_path / "nope")


def _karpathy_entry(filename, split, filepath=None):
    entry = {
        "filename": filename,
        "split": split,
        "sentences": [{"raw": f"A photo of {filename} ."}, {"raw": "Another caption ."}],
    }
    if filepath:
        entry["filepath"] = filepath
    return entry


def test_karpathy_flickr8k_json(tmp_path):
    splits = ["train", "restval", "val", "test", "train"]
    for i in range(5):
        _image(tmp_path / "Images" / f"k{i}.jpg")
    data = {
        "dataset": "flickr8k",
        "images": [_karpathy_entry(f"k{i}.jpg", s) for i, s in enumerate(splits)],
    }
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps(data))
    ds = load_dataset("karpathy", tmp_path)
    assert ds.splits == {
        "train": ["k0.jpg", "k1.jpg", "k4.jpg"],
        "val": ["k2.jpg"],
        "test": ["k3.jpg"],
    }
    assert ds.captions["k0.jpg"] == ["A photo of k0.jpg .", "Another caption ."]
    _check_splits(ds)


def test_karpathy_coco_json_with_images_dir(tmp_path):
    imgs = tmp_path / "coco_images"
    _image(imgs / "train2014" / "COCO_train2014_1.jpg")
    _image(imgs / "val2014" / "COCO_val2014_2.jpg")
    data = {
        "dataset": "coco",
        "images": [
            _karpathy_entry("COCO_train2014_1.jpg", "train", "train2014"),
            _karpathy_entry("COCO_val2014_2.jpg", "test", "val2014"),
            _karpathy_entry("COCO_val2014_3.jpg", "val", "val2014"),  # missing on disk
        ],
    }
    json_dir = tmp_path / "splits"
    json_dir.mkdir()
    (json_dir / "dataset_coco.json").write_text(json.dumps(data))
    ds = load_dataset("karpathy", json_dir, images_dir=imgs)
    assert ds.splits == {
        "train": ["train2014/COCO_train2014_1.jpg"],
        "val": [],
        "test": ["val2014/COCO_val2014_2.jpg"],
    }
    _check_splits(ds)


def test_karpathy_malformed_entry(tmp_path):
    data = {"images": [_karpathy_entry("a.jpg", "train"), {"split": "train"}]}
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps(data))
    with pytest.raises(
        IcapnetError, match=r"dataset_flickr8k\.json: images\[1\] has no 'filename'"
    ):
        load_dataset("karpathy", tmp_path)
    (tmp_path / "dataset_flickr8k.json").write_text('{"images": [\n  oops]}')
    with pytest.raises(IcapnetError, match=r"dataset_flickr8k\.json:2: not valid JSON"):
        load_dataset("karpathy", tmp_path)


def _coco_file(path: Path, folder: str, ids: list[int]) -> None:
    images = [{"id": i, "file_name": f"{i:012d}.jpg"} for i in ids]
    anns = [
        {"id": 10 * i + k, "image_id": i, "caption": f"Thing {i} number {k}."}
        for i in ids
        for k in range(2)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    for i in ids:
        _image(path.parent.parent / folder / f"{i:012d}.jpg")


def test_coco_train_and_val_halves(tmp_path):
    _coco_file(tmp_path / "annotations" / "captions_train2017.json", "train2017", [1, 2, 3])
    _coco_file(tmp_path / "annotations" / "captions_val2017.json", "val2017", list(range(10, 20)))
    ds = load_dataset("coco", tmp_path)
    assert ds.splits["train"] == [f"train2017/{i:012d}.jpg" for i in (1, 2, 3)]
    assert len(ds.splits["val"]) == 5 and len(ds.splits["test"]) == 5
    assert all(i.startswith("val2017/") for i in ds.splits["val"] + ds.splits["test"])
    assert ds.captions["train2017/000000000001.jpg"] == ["Thing 1 number 0.", "Thing 1 number 1."]
    _check_splits(ds)
    assert load_dataset("coco", tmp_path).splits == ds.splits


def test_coco_annotation_for_unknown_image(tmp_path):
    path = tmp_path / "annotations" / "captions_val2017.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"images": [], "annotations": [{"image_id": 5, "caption": "x"}]}))
    with pytest.raises(IcapnetError, match=r"captions_val2017\.json: annotations\[0\]"):
        load_dataset("coco", tmp_path)


def test_split_by_image_is_deterministic_and_complete():
    ids = [f"{i}.jpg" for i in range(100)]
    s = split_by_image(ids, seed=3)
    assert [len(s[k]) for k in ("train", "val", "test")] == [80, 10, 10]
    assert sorted(s["train"] + s["val"] + s["test"]) == sorted(ids)
    assert split_by_image(reversed(ids), seed=3) == s
    assert split_by_image(["a"], seed=0) == {"train": ["a"], "val": [], "test": []}
