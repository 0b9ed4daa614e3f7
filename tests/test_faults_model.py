"""A broken model directory and hostile decoding requests (issue 12, cases 6-9).

config.json is validated on load and names itself; vocab.json and the feature settings are
checked against fingerprints recorded at save time; beam size and caption length are bounded
in the CLIs, the Predictor, the web API and inside the exported graph; ``--attention-dir``
naming a file is one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from fault_tools import dead_pid, edit_json, error_line, temp_of, with_value

from icapnet import caption, export
from icapnet.config import MAX_BEAM_SIZE, MAX_CAPTION_LENGTH
from icapnet.errors import IcapnetError, run_cli
from icapnet.inference.decoding import max_beam_size


@pytest.fixture()
def model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


@pytest.fixture(scope="module")
def predictor(tiny_model_dir: Path):
    from icapnet.inference.predictor import Predictor

    return Predictor.from_dir(tiny_model_dir)


def _caption(model: Path, image: Path, *flags: str) -> int:
    return run_cli(caption.main, [str(image), "--model", str(model), *flags])


CONFIG_EDITS = [
    ("a list", lambda c: [1, 2], "expected a JSON object with the sections features, model, "
     "train, data, got list"),
    ("units a string", lambda c: with_value(c, "model/units", "abc"),
     "model.units: expected an integer, got 'abc'"),
    ("dropout a bool", lambda c: with_value(c, "model/dropout", True),
     "model.dropout: expected a number, got True"),
    ("section a list", lambda c: {**c, "train": []}, "train: expected an object, got list"),
    ("unknown setting", lambda c: with_value(c, "model/unit", 5), "model.unit: unknown setting"),
    ("unknown section", lambda c: {**c, "extra": {}}, "unknown section 'extra'"),
    ("dropout out of range", lambda c: with_value(c, "model/dropout", 1.5),
     "model.dropout: must be in [0, 1), got 1.5"),
    ("decoder unknown", lambda c: with_value(c, "model/decoder", "transformer"),
     "model.decoder: 'transformer' is not one of gru, lstm"),
    ("huge max_length", lambda c: with_value(c, "model/max_length", 10**9),
     f"model.max_length: must be <= {MAX_CAPTION_LENGTH}, got 1000000000"),
    ("huge image_size", lambda c: with_value(c, "features/image_size", 10**6),
     "features.image_size: must be in [1, 2048], got 1000000"),
    ("regions disagree", lambda c: with_value(c, "model/num_regions", 50),
     "model.num_regions 50 differs from features.num_regions 49"),
    ("image_size edited", lambda c: with_value(c, "features/image_size", 224),
     "features.image_size 224 is not the value the model was trained with (its fingerprint "
     "differs); restore it"),
    ("layer edited", lambda c: with_value(c, "features/layer", "block4_conv3"),
     "features.layer 'block4_conv3' is not the value the model was trained with"),
    ("not JSON", None, "not valid JSON"),
]


@pytest.mark.parametrize("edit,message", [(e, m) for _, e, m in CONFIG_EDITS],
                         ids=[name for name, _, _ in CONFIG_EDITS])
def test_broken_config_json_is_one_line_naming_it(edit, message: str, model: Path,
                                                  sample_images: list[Path], capsys) -> None:
    config = model / "config.json"
    if edit is None:
        config.write_text('{"model": {"units": 32,')
    else:
        edit_json(config, edit)
    assert _caption(model, sample_images[0]) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {config}: ") and message in line, line


def test_same_size_vocab_in_another_order_is_refused(model: Path, sample_images: list[Path],
                                                     capsys) -> None:
    vocab = model / "vocab.json"

    def swap(data):
        words = data["words"] if isinstance(data, dict) else data
        words[-1], words[-2] = words[-2], words[-1]
        return data

    edit_json(vocab, swap)
    assert _caption(model, sample_images[0]) == 2
    assert error_line(capsys.readouterr().err) == (
        f"error: {vocab}: not the vocabulary the model was trained with (same size, other "
        "words or order: its fingerprint in config.json differs)")


def test_fingerprints_are_recorded_and_a_model_without_them_still_loads(
        model: Path, sample_images: list[Path], capsys) -> None:
    config = model / "config.json"
    recorded = json.loads(config.read_text())["fingerprints"]
    assert set(recorded) == {"vocab", "features"} and "image_size" in recorded["features"]
    assert _caption(model, sample_images[0]) == 0
    captioned = capsys.readouterr().out
    # A model saved before fingerprints existed: loads, unchecked, same caption.
    edit_json(config, lambda c: {k: v for k, v in c.items() if k != "fingerprints"})
    assert _caption(model, sample_images[0]) == 0
    assert capsys.readouterr().out == captioned


@pytest.mark.parametrize("flags,message", [
    (["--max-length", "1000000000"], f"--max-length 1000000000: must be from 1 to "
     f"{MAX_CAPTION_LENGTH}"),
    (["--max-length", "0"], f"--max-length 0: must be from 1 to {MAX_CAPTION_LENGTH}"),
    (["--beam", "1000"], f"--beam 1000: must be from 1 to {MAX_BEAM_SIZE}"),
    (["--beam", "0"], f"--beam 0: must be from 1 to {MAX_BEAM_SIZE}"),
])
def test_decoding_flags_are_bounded_before_loading(flags, message, tmp_path: Path,
                                                   sample_images: list[Path], capsys) -> None:
    from icapnet import evaluate

    for main, argv in ((caption.main, [str(sample_images[0])]),
                       (evaluate.main, []),
                       (export.main, ["--out", str(tmp_path / "x")])):
        # --model does not exist: the flags are refused before anything is loaded
        assert run_cli(main, [*argv, "--model", str(tmp_path / "nope"), *flags]) == 2
        assert error_line(capsys.readouterr().err) == f"error: {message}"


def test_beam_wider_than_the_vocabulary_is_refused(model: Path, predictor,
                                                   sample_images: list[Path], capsys) -> None:
    vocab = len(predictor.vocab)
    limit = max_beam_size(vocab)
    assert limit == vocab - 3 < MAX_BEAM_SIZE  # <pad>, <start>, <unk> are never written
    assert _caption(model, sample_images[0], "--beam", str(limit + 1)) == 2
    assert error_line(capsys.readouterr().err) == (
        f"error: --beam {limit + 1}: must be from 1 to {limit}, the number of tokens this "
        "model can write")
    assert _caption(model, sample_images[0], "--beam", str(limit)) == 0


def test_predictor_bounds_beam_and_length(predictor, sample_images: list[Path]) -> None:
    from icapnet.data.images import load_image

    image = load_image(sample_images[0])
    for kwargs, message in (({"max_length": 10**9}, "max length 1000000000: must be from 1"),
                            ({"beam_size": 1000}, "beam size 1000: must be from 1 to"),
                            ({"beam_size": 0}, "beam size 0: must be from 1 to")):
        with pytest.raises(IcapnetError, match=message):
            predictor.caption_images([image], **kwargs)
    assert predictor.caption_images([image], max_length=MAX_CAPTION_LENGTH)[0].caption


def test_decoding_graphs_refuse_huge_lengths_without_allocating(predictor) -> None:
    """What the exported signature runs: an InvalidArgumentError, not std::bad_alloc."""
    from icapnet.inference.decoding import _compiled

    features = tf.zeros([1, 49, 512])
    fns = _compiled(predictor.model)
    for call in (lambda: fns["greedy"](features, tf.constant(2**31 - 1)),
                 lambda: fns["beam"](features, tf.constant(3), tf.constant(2**31 - 1),
                                     tf.constant(0.0)),
                 lambda: fns["beam"](features, tf.constant(10**6), tf.constant(5),
                                     tf.constant(0.0))):
        with pytest.raises(tf.errors.InvalidArgumentError, match="must be at most"):
            call()


def test_exported_model_refuses_out_of_bounds_requests(model: Path, predictor, tmp_path: Path,
                                                       sample_images: list[Path]) -> None:
    out = tmp_path / "exported"
    stale = [tmp_path / temp_of("exported", dead_pid()), tmp_path / temp_of("exported",
                                                                           dead_pid(), "old")]
    for folder in stale:  # what a killed export leaves (the new and the swapped-out folder)
        folder.mkdir()
        (folder / "saved_model.pb").write_bytes(b"partial")
    assert export.main(["--model", str(model), "--out", str(out)]) == 0
    assert not any(p.exists() for p in stale)
    loaded = tf.saved_model.load(str(out))
    sig = loaded.signatures["caption_with_options"]
    images = tf.constant([sample_images[0].read_bytes()])
    limit = max_beam_size(len(predictor.vocab))
    for beam, length in ((1, 2**31 - 1), (3, 2**31 - 1), (limit + 1, 5), (10**6, 5)):
        with pytest.raises(tf.errors.InvalidArgumentError, match="must be at most"):
            sig(images=images, beam_size=tf.constant(beam), max_length=tf.constant(length))
    # the process goes on serving
    done = sig(images=images, beam_size=tf.constant(limit), max_length=tf.constant(5))
    assert done["lengths"].numpy()[0] <= 5
    assert np.isfinite(done["scores"].numpy()).all()


def test_web_api_refuses_a_beam_the_model_cannot_fill(predictor, tiny_model_dir: Path,
                                                       sample_images: list[Path]) -> None:
    from fastapi.testclient import TestClient

    from icapnet.web import create_app

    limit = max_beam_size(len(predictor.vocab))
    with TestClient(create_app(predictor, tiny_model_dir, max_beam_size=MAX_BEAM_SIZE)) as client:
        files = {"image": ("a.jpg", sample_images[0].read_bytes(), "image/jpeg")}
        wide = client.post("/api/caption", files=files, data={"beam_size": str(limit + 1)})
        assert wide.status_code == 422
        assert f"must be from 1 to {limit}" in wide.json()["detail"]
        over = client.post("/api/caption", files=files,
                           data={"beam_size": str(MAX_BEAM_SIZE + 1)})
        assert over.status_code == 422
        assert client.post("/api/caption", files=files,
                           data={"beam_size": str(limit)}).status_code == 200


def test_attention_dir_naming_a_file_is_one_line(model: Path, sample_images: list[Path],
                                                 tmp_path: Path, capsys) -> None:
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"not a folder")
    assert _caption(model, sample_images[0], "--attention-dir", str(taken)) == 2
    assert error_line(capsys.readouterr().err) == (
        f"error: {taken}: --attention-dir names an existing file, not a folder")
    assert taken.read_bytes() == b"not a folder"
    below = taken / "sub"
    assert _caption(model, sample_images[0], "--attention-dir", str(below)) == 2
    assert error_line(capsys.readouterr().err).startswith(f"error: {below}: --attention-dir")
    fresh = tmp_path / "new" / "maps"
    assert _caption(model, sample_images[0], "--attention-dir", str(fresh)) == 0
    assert list(fresh.glob("*_attention.npz"))
