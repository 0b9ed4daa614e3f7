"""The official Flickr8k split from any layout, read from real-format files.

``tests/data/flickr8k/`` holds verbatim excerpts of the published ``captions.txt`` (Kaggle)
and ``Flickr8k.token.txt`` (with its bogus ``.jpg.1`` entry) and 5 real photos (see its
README). The last test reads the full shared files when ``../shared`` is there.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from fnmatch import fnmatch
from pathlib import Path

import pytest
from PIL import Image

from icapnet.data import splits as S
from icapnet.data.datasets import _parse_token_file, load_dataset
from icapnet.errors import IcapnetError, run_cli

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "tests" / "data" / "flickr8k"
SHARED = ROOT.parent / "shared" / "data" / "flickr8k"
BOGUS = "2258277193_586949ec62.jpg"
# Published md5s of the split lists (Flickr8k_text.zip; /work/shared/README.md).
PUBLISHED_MD5 = {
    "Flickr_8k.trainImages.txt": "cfaa3c7cf0e98c3db5331ae3e084d0ad",
    "Flickr_8k.devImages.txt": "d4348c27e43a7a7c667fc1e1af1a17ca",
    "Flickr_8k.testImages.txt": "80b71e57cb3e4187f4b8068489fbc74a",
}
# Names from the excerpts that have no real photo here: 3 official test images, 2 in no list.
EXTRA_TEST = ["1056338697_4f7d7ce270.jpg", "106490881_5a2dd9b7bd.jpg",
              "1082379191_ec1e53f996.jpg"]
EXTRA_UNLISTED = ["1643915227_9f48068772.jpg", "1797554350_20998753c0.jpg"]


def _placeholder(path: Path) -> None:
    Image.new("RGB", (16, 12), (90, 140, 60)).save(path)


def _layout(root: Path, kind: str) -> tuple[Path, Path]:
    """A Flickr8k folder from the real excerpts; returns (data dir, images dir)."""
    images = root / ("Images" if kind == "kaggle" else "Flicker8k_Dataset")
    shutil.copytree(REAL / "Images", images)
    for name in EXTRA_TEST + EXTRA_UNLISTED:
        _placeholder(images / name)
    if kind == "kaggle":
        shutil.copy(REAL / "captions.txt", root / "captions.txt")
    else:
        (root / "Flickr8k_text").mkdir()
        shutil.copy(REAL / "Flickr8k.token.txt", root / "Flickr8k_text" / "Flickr8k.token.txt")
    return root, images


def _expected(present: set[str]) -> dict[str, list[str]]:
    return {s: sorted(set(ids) & present) for s, ids in S.official_flickr8k_split().items()}


def _split_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "split: " in r.getMessage()]


def test_package_split_lists_are_the_published_files():
    folder = ROOT / "icapnet" / "data" / "official_splits" / "flickr8k"
    for name, md5 in PUBLISHED_MD5.items():
        assert hashlib.md5((folder / name).read_bytes()).hexdigest() == md5, name
    official = S.official_flickr8k_split()
    assert {s: len(v) for s, v in official.items()} == {"train": 6000, "val": 1000, "test": 1000}
    assert len(set().union(*official.values())) == 8000  # disjoint
    # ...and they are shipped: pyproject's package-data covers them.
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["icapnet"]
    for name in PUBLISHED_MD5:
        rel = f"data/official_splits/flickr8k/{name}"
        assert any(fnmatch(rel, p) for p in patterns), rel


@pytest.mark.parametrize("kind", ["kaggle", "original"])
def test_any_layout_without_split_files_gets_the_official_membership(tmp_path, caplog, kind):
    data_dir, images = _layout(tmp_path, kind)
    with caplog.at_level(logging.DEBUG, logger="icapnet"):
        ds = load_dataset("flickr8k", data_dir)
    present = {p.name for p in images.iterdir()}
    expected = _expected(present)
    assert ds.splits == expected
    assert {s: len(v) for s, v in ds.splits.items()} == {"train": 3, "val": 2, "test": 3}
    assert set(ds.images) == set().union(*expected.values())  # unlisted ones left out
    assert not set(EXTRA_UNLISTED) & set(ds.images)
    # Captions, CSV-quoted ones included, as published.
    assert ds.captions["103205630_682ca7285b.jpg"][3] == (
        "Two men , standing on an ice , looking into something covered with a blue tarp .")
    assert len(ds.captions["1034276567_49bb87c51c.jpg"]) == 5
    # The split is logged once: its source, what is missing, what is left out.
    lines = _split_lines(caplog)
    assert len(lines) == 1
    text = lines[0].getMessage()
    assert "split: official (package data): train 3, val 2, test 3 images" in text
    assert "7992 listed image(s) missing" in text and "(train 5997, val 998, test 997)" in text
    assert "2 image(s) with captions are in no split list: left out" in text
    assert ds.split_info == {"source": "official (package data)",
                             "sizes": {"train": 3, "val": 2, "test": 3},
                             "missing": {"train": 5997, "val": 998, "test": 997},
                             "unlisted": 2}
    # The token file's bogus entry never worries the user.
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING and r is not lines[0]]
    assert loud == []
    assert BOGUS not in caplog.text.replace(f"{BOGUS} has captions but", "")
    again = load_dataset("flickr8k", data_dir)  # same data, same process: not logged again
    assert again.splits == ds.splits and len(_split_lines(caplog)) == 1


def test_both_layouts_read_the_same_captions(tmp_path):
    kaggle = load_dataset("flickr8k", _layout(tmp_path / "k", "kaggle")[0])
    original = load_dataset("flickr8k", _layout(tmp_path / "o", "original")[0])
    assert kaggle.splits == original.splits
    assert kaggle.captions == original.captions


def test_bogus_token_entry_is_repaired_not_dropped():
    listed = _parse_token_file(REAL / "Flickr8k.token.txt")
    assert f"{BOGUS}.1" not in listed
    assert listed[BOGUS] == [
        "people waiting for the subway",
        "Some people looking out windows in a large building .",
        "Three people are waiting on a train platform .",
        "Three people standing at a station .",
        "two woman and one man standing near train tracks .",
    ]
    assert len(listed) == 55  # 54 images of the excerpt + the repaired one


def test_split_files_beside_the_data_win(tmp_path, caplog):
    data_dir, _ = _layout(tmp_path, "kaggle")
    text = data_dir / "Flickr8k_text"
    text.mkdir()
    official = ROOT / "icapnet" / "data" / "official_splits" / "flickr8k"
    for name in PUBLISHED_MD5:
        shutil.copy(official / name, text / name)
    assert load_dataset("flickr8k", data_dir).split_info["source"] == (
        "official (split files beside the data)")
    # Edited lists are used as they are, with a warning that they are not the official ones.
    moved = "1034276567_49bb87c51c.jpg"  # a dev image, moved to test
    dev = (text / "Flickr_8k.devImages.txt").read_text().replace(f"{moved}\n", "")
    (text / "Flickr_8k.devImages.txt").write_text(dev)
    with open(text / "Flickr_8k.testImages.txt", "a") as handle:
        handle.write(f"{moved}\n")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("flickr8k", data_dir)
    assert moved in ds.splits["test"] and moved not in ds.splits["val"]
    assert ds.split_info["source"].startswith("split files beside the data (differ from the "
                                              "official lists)")
    assert "differ from the official Flickr8k lists" in caplog.text
    # Only some of the three files: ignored (with a warning), package data used.
    (text / "Flickr_8k.testImages.txt").unlink()
    ds = load_dataset("flickr8k", data_dir)
    assert ds.split_info["source"] == "official (package data)"
    assert moved in ds.splits["val"]


def test_random_split_is_explicit_and_seeded(tmp_path):
    data_dir, images = _layout(tmp_path, "kaggle")
    ds = load_dataset("flickr8k", data_dir, split="random", seed=5)
    assert set(ds.images) == {p.name for p in images.iterdir()}  # unlisted ones are kept
    assert ds.split_info["source"] == "random 80/10/10 by image (seed 5)"
    assert load_dataset("flickr8k", data_dir, split="random", seed=5).splits == ds.splits
    with pytest.raises(IcapnetError, match="option not supported for 'karpathy'"):
        load_dataset("karpathy", data_dir, split="random")


def test_prepare_records_the_split_in_the_cache_manifest(tmp_path, capsys):
    from icapnet.data.cache import open_cache
    from icapnet.prepare import main

    data_dir, _ = _layout(tmp_path / "data", "kaggle")
    out = tmp_path / "cache"
    argv = ["--dataset", "flickr8k", "--data-dir", str(data_dir), "--out", str(out),
            "--weights", "none", "--image-size", "32", "--min-count", "1", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert ("split     official (package data); 7992 listed image(s) missing; "
            "2 in no list, left out") in printed
    manifest = open_cache(out).manifest
    assert manifest["split"]["source"] == "official (package data)"
    assert manifest["split"]["sizes"] == {"train": 3, "val": 2, "test": 3}
    assert sorted(manifest["images"]) == sorted(
        i for ids in _expected(set(manifest["images"])).values() for i in ids)
    # --seed alone would silently do nothing: refused in one line.
    assert run_cli(main, [*argv, "--seed", "3"]) == 2
    assert "--seed 3: the official Flickr8k split is fixed" in capsys.readouterr().err
    random_out = tmp_path / "cache-random"
    assert main([*argv[:5], str(random_out), *argv[6:], "--split", "random", "--seed", "3"]) == 0
    assert open_cache(random_out).manifest["split"]["source"] == (
        "random 80/10/10 by image (seed 3)")


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/flickr8k not present (data)")
@pytest.mark.parametrize("kind", ["kaggle", "original"])
def test_full_published_files_give_the_full_official_split(tmp_path, caplog, kind):
    """Every image of the full captions files (empty placeholder files: the reader checks
    presence only) -> exactly 6000/1000/1000, 91 left out, no warning at all."""
    if kind == "kaggle":
        images = tmp_path / "Images"
        shutil.copy(SHARED / "captions.txt", tmp_path / "captions.txt")
        names = {line.split(",", 1)[0]
                 for line in (SHARED / "captions.txt").read_text().splitlines()[1:]}
    else:
        images = tmp_path / "Flicker8k_Dataset"
        shutil.copy(SHARED / "Flickr8k.token.txt", tmp_path / "Flickr8k.token.txt")
        names = set(_parse_token_file(SHARED / "Flickr8k.token.txt")) - {BOGUS}
    assert len(names) == 8091
    images.mkdir()
    for name in names:
        (images / name).touch()
    with caplog.at_level(logging.INFO, logger="icapnet"):
        ds = load_dataset("flickr8k", tmp_path)
    assert ds.splits == {s: sorted(v) for s, v in S.official_flickr8k_split().items()}
    assert ds.split_info == {"source": "official (package data)",
                             "sizes": {"train": 6000, "val": 1000, "test": 1000},
                             "missing": {"train": 0, "val": 0, "test": 0}, "unlisted": 91}
    assert ds.num_captions == 40000
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert len(_split_lines(caplog)) == 1
