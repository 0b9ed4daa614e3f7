"""Predictor on the tiny trained model: paths, bytes, arrays, bad files, batching, threads."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from icapnet.data.images import load_image
from icapnet.data.text import normalize_caption
from icapnet.errors import IcapnetError
from icapnet.inference.decoding import _compiled
from icapnet.inference.predictor import CaptionResult, Predictor


@pytest.fixture(scope="module")
def predictor(tiny_model_dir: Path) -> Predictor:
    return Predictor.from_dir(tiny_model_dir)


def _first_captions(scenes: Path) -> dict[str, str]:
    first: dict[str, str] = {}
    with open(scenes / "captions.txt", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            first.setdefault(row["image"], normalize_caption(row["caption"]))
    return first


def test_caption_paths_reports_bad_files_in_place(
    predictor: Predictor, sample_images: list[Path], synthetic_scenes_dir: Path, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(sample_images[0].read_bytes()[:300])
    missing = tmp_path / "missing.png"
    paths = [sample_images[0], corrupt, sample_images[1], missing, sample_images[2]]
    results = predictor.caption_paths(paths)
    assert len(results) == 5
    assert isinstance(results[1], IcapnetError) and str(corrupt) in str(results[1])
    assert isinstance(results[3], IcapnetError) and str(missing) in str(results[3])
    good = [results[0], results[2], results[4]]
    assert all(isinstance(r, CaptionResult) for r in good)
    grid = predictor.config.features.image_size // 16
    for result in good:
        assert result.caption == " ".join(result.words) and result.words
        assert all(w in predictor.vocab for w in result.words)
        assert result.attention.shape == (len(result.words), grid, grid)
        np.testing.assert_allclose(result.attention.sum(axis=(1, 2)), 1.0, atol=1e-4)
        assert result.score < 0
    # The tiny model memorised its training captions: its greedy captions are real ones.
    truth = _first_captions(synthetic_scenes_dir)
    matches = sum(r.caption == truth[p.name] for r, p in zip(good, sample_images, strict=True))
    assert matches >= 2, [r.caption for r in good]


def test_bytes_arrays_and_paths_agree(predictor: Predictor, sample_images: list[Path]) -> None:
    from PIL import Image

    path = sample_images[1]
    by_path = predictor.caption_paths([path])[0]
    by_array = predictor.caption_images([load_image(path)])[0]
    buf = io.BytesIO()
    Image.open(path).save(buf, format="PNG")
    by_bytes = predictor.caption_bytes(buf.getvalue())
    assert by_path.caption == by_array.caption == by_bytes.caption
    np.testing.assert_allclose(by_path.attention, by_array.attention, atol=1e-6)
    with pytest.raises(IcapnetError, match=r"upload\.bin"):
        predictor.caption_bytes(b"definitely not an image", name="upload.bin")


def test_batching_and_sizes_do_not_change_captions(
    predictor: Predictor, sample_images: list[Path]
) -> None:
    images = [load_image(p) for p in sample_images]
    images.append(np.ascontiguousarray(images[0][:150, :200]))  # another size and aspect
    batched = predictor.caption_images(images)
    for image, result in zip(images, batched, strict=True):
        alone = predictor.caption_images([image])[0]
        assert alone.caption == result.caption
        assert alone.score == pytest.approx(result.score, abs=1e-4)
    beam = predictor.caption_images(images, beam_size=3)
    assert all(b.score >= g.score - 1e-4 for b, g in zip(beam, batched, strict=True))
    short = predictor.caption_images(images[:1], max_length=2)[0]
    assert len(short.words) <= 2


def test_concurrent_callers_get_consistent_results(
    predictor: Predictor, sample_images: list[Path]
) -> None:
    expected = [r.caption for r in predictor.caption_paths(sample_images)]
    seen: list[list[str]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            seen.append([r.caption for r in predictor.caption_paths(sample_images)])
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert seen == [expected] * 3


def test_bad_arguments_and_model_dirs(predictor: Predictor, tmp_path: Path) -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(IcapnetError, match="beam size"):
        predictor.caption_images([image], beam_size=0)
    with pytest.raises(IcapnetError, match="HxWx3"):
        predictor.caption_images([np.zeros((32, 32), np.uint8)])
    assert predictor.caption_images([]) == []
    with pytest.raises(IcapnetError, match=re.escape(str(tmp_path / "nope"))):
        Predictor.from_dir(tmp_path / "nope")


def test_model_made_with_an_older_random_backbone_is_refused(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    shutil.copytree(tiny_model_dir, old)
    raw = json.loads((old / "config.json").read_text())
    # As written before the recipe (and fingerprints) were recorded.
    del raw["features"]["random_init"], raw["fingerprints"]
    (old / "config.json").write_text(json.dumps(raw))
    with pytest.raises(IcapnetError, match=re.escape(str(old)) + ".*he-normal.*re-run prepare"):
        Predictor.from_dir(old)
    # Asking for this version's random backbone explicitly is allowed.
    assert Predictor.from_dir(old, feature_weights="none").caption_images(
        [np.zeros((32, 32, 3), np.uint8)])[0].caption


def test_model_saved_before_feature_norm_loads_without_it(
    tiny_model_dir: Path, tmp_path: Path, sample_images: list[Path]
) -> None:
    """A config.json without model.feature_norm (written before it existed) describes weights
    without the normalisation layer: it loads with it off and captions as before."""
    old = tmp_path / "old"
    shutil.copytree(tiny_model_dir, old)
    raw = json.loads((old / "config.json").read_text())
    assert raw["model"].pop("feature_norm") is False
    (old / "config.json").write_text(json.dumps(raw))
    images = [load_image(p) for p in sample_images[:2]]
    then, now = Predictor.from_dir(old), Predictor.from_dir(tiny_model_dir)
    assert not then.model.model_config.feature_norm
    assert ([r.caption for r in then.caption_images(images)]
            == [r.caption for r in now.caption_images(images)])


def test_end_attention_and_beam_candidates(predictor: Predictor, sample_images: list[Path]) -> None:
    """The <end> step's map comes along; asking for candidates does not change the caption."""
    from icapnet.inference.decoding import END_ID

    images = [load_image(p) for p in sample_images]
    feats = predictor.extract(images)
    raw = predictor.decode_features(feats, beam_size=1)
    greedy = predictor.caption_features(feats, beam_size=1)
    for i, res in enumerate(greedy):
        n = len(res.words)
        assert raw.tokens[i, n] == END_ID, "the tiny model ends its captions"
        grid = res.attention.shape[-1]
        np.testing.assert_allclose(res.end_attention, raw.attention[i, n].reshape(grid, grid))
        assert [c.caption for c in res.candidates] == [res.caption]
    plain = predictor.caption_images(images, beam_size=3)
    ranked = predictor.caption_images(images, beam_size=3, num_candidates=3)
    for one, many in zip(plain, ranked, strict=True):
        assert many.caption == one.caption and many.score == pytest.approx(one.score, abs=1e-5)
        np.testing.assert_allclose(many.attention, one.attention, atol=1e-6)
        np.testing.assert_allclose(many.end_attention, one.end_attention, atol=1e-6)
        assert 1 <= len(many.candidates) <= 3
        assert many.candidates[0].caption == many.caption
        scores = [c.score for c in many.candidates]
        assert scores == sorted(scores, reverse=True)
        assert len({c.caption for c in many.candidates}) == len(many.candidates)
    assert any(len(r.candidates) > 1 for r in ranked)


@pytest.mark.parametrize("beam", [1, 2])
def test_decode_graph_traced_in_a_thread_gives_the_same_captions(
    predictor: Predictor, tiny_model_dir: Path, sample_images: list[Path], beam: int
) -> None:
    """The cold-start path (caption CLI): the decode graph is traced while VGG16 loads."""
    images = [load_image(p) for p in sample_images]
    cold = Predictor.from_dir(tiny_model_dir, trace_beam=beam)
    assert cold._tracing is not None  # started in from_dir ...
    got = cold.caption_images(images, beam_size=beam)
    assert cold._tracing is None  # ... and joined before the first decode
    # the thread's graph is the one the caption ran (its warm-up run did not trace another)
    used = _compiled(cold.model)["greedy" if beam == 1 else "beam"]
    assert used.experimental_get_tracing_count() == 1
    want = predictor.caption_images(images, beam_size=beam)
    assert [r.caption for r in got] == [r.caption for r in want]
    np.testing.assert_allclose([r.score for r in got], [r.score for r in want], atol=1e-5)
