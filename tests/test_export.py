"""SavedModel export: round trip in a fresh process without icapnet, same captions as Python."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from icapnet.config import DEFAULT_BEAM
from icapnet.errors import run_cli
from icapnet.export import EXPORT_INFO_FILE, main
from icapnet.inference.predictor import Predictor

# Runs in a fresh interpreter: only TensorFlow, never icapnet.
_LOADER = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    export_dir, png_dir = sys.argv[1], sys.argv[2]
    from pathlib import Path
    loaded = tf.saved_model.load(export_dir)
    data = tf.constant([p.read_bytes() for p in sorted(Path(png_dir).glob("*.png"))])
    out = {}
    for name, kwargs in (("default", {}), ("beam", {"beam_size": tf.constant(2)})):
        res = {k: v.numpy() for k, v in loaded.caption(data, **kwargs).items()}
        out[name] = {k: v.tolist() for k, v in res.items() if k not in ("captions", "words")}
        out[name]["captions"] = [c.decode() for c in res["captions"]]
        out[name]["words"] = [[w.decode() for w in row] for row in res["words"]]
    sig = loaded.signatures["caption_with_options"]
    short = sig(images=data, beam_size=tf.constant(1), max_length=tf.constant(2))
    out["short_lengths"] = short["lengths"].numpy().tolist()
    out["serving_default"] = [
        c.decode() for c in loaded.signatures["serving_default"](images=data)["captions"].numpy()
    ]
    out["icapnet_imported"] = any(m.split(".")[0] == "icapnet" for m in sys.modules)
    print(json.dumps(out))
    """
)


def _png_copies(images: list[Path], out: Path) -> list[bytes]:
    from PIL import Image

    out.mkdir()
    blobs = []
    for n, path in enumerate(images):
        buf = io.BytesIO()
        Image.open(path).convert("RGB").save(buf, format="PNG")
        (out / f"{n:02d}.png").write_bytes(buf.getvalue())
        blobs.append(buf.getvalue())
    # A grayscale PNG exercises the channel handling inside the graph.
    buf = io.BytesIO()
    Image.open(images[0]).convert("L").save(buf, format="PNG")
    (out / f"{len(images):02d}.png").write_bytes(buf.getvalue())
    blobs.append(buf.getvalue())
    return blobs


def test_export_round_trip_without_icapnet(
    tiny_model_dir: Path, sample_images: list[Path], tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    before = sorted(p.name for p in model_dir.iterdir())
    export_dir = tmp_path / "export"
    assert main(["--model", str(model_dir), "--out", str(export_dir)]) == 0
    assert sorted(p.name for p in model_dir.iterdir()) == before  # the model dir is untouched
    assert (export_dir / "saved_model.pb").is_file()
    info = json.loads((export_dir / "assets.extra" / EXPORT_INFO_FILE).read_text())
    assert info["default_beam_size"] == DEFAULT_BEAM  # the CLIs' default, baked in
    assert not list(tmp_path.glob(".export*")), "temporary export folder left behind"

    blobs = _png_copies(sample_images, tmp_path / "png")
    proc = subprocess.run(
        [sys.executable, "-c", _LOADER, str(export_dir), str(tmp_path / "png")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["icapnet_imported"] is False

    predictor = Predictor.from_dir(model_dir)
    for name, beam in (("default", DEFAULT_BEAM), ("beam", 2)):
        expected = [predictor.caption_bytes(b, beam_size=beam) for b in blobs]
        out = got[name]
        assert out["captions"] == [r.caption for r in expected]
        np.testing.assert_allclose(out["scores"], [r.score for r in expected], atol=1e-3)
        attention = np.asarray(out["attention"], np.float32)
        for i, r in enumerate(expected):
            n = len(r.words)
            assert out["lengths"][i] == n
            assert out["words"][i][:n] == r.words and set(out["words"][i][n:]) <= {""}
            np.testing.assert_allclose(attention[i, :n], r.attention, atol=1e-3)
            assert (attention[i, n:] == 0).all()
    assert got["serving_default"] == got["default"]["captions"]
    assert max(got["short_lengths"]) <= 2


def test_export_cli_errors_name_the_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no-model"
    code = run_cli(main, ["--model", str(missing), "--out", str(tmp_path / "out")])
    assert code != 0
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and str(missing) in errors[0]
    assert not (tmp_path / "out").exists()


def test_export_of_an_lstm_no_attention_model(
    tiny_backbone: str, sample_images: list[Path], tmp_path: Path
) -> None:
    """The packed LSTM state [h; c] (initialised from the mean region) and the uniform
    (mean-pooled) attention go through the exported graph as through the Python decoders:
    same captions, scores and maps, and so do the feature normalisation's moving statistics.
    (The round trip above covers GRU + Bahdanau.)"""
    import keras
    import tensorflow as tf

    from icapnet.config import Config, ModelConfig
    from icapnet.data.text import Vocabulary
    from icapnet.export import export_saved_model
    from icapnet.model.backbone import feature_config_for
    from icapnet.model.store import build_captioner, save_model_dir

    vocab = Vocabulary([*Vocabulary.SPECIALS, "red", "blue", "circle", "square", "a", "and"])
    config = Config(
        features=dataclasses.replace(feature_config_for(tiny_backbone, "none"),
                                     num_regions=16, feature_dim=10),
        model=ModelConfig(vocab_size=len(vocab), embedding_dim=8, units=12, attention_units=6,
                          dropout=0.0, state_dropout=0.0, decoder="lstm", attention="none",
                          num_regions=16, feature_dim=10, max_length=6),
    )
    keras.utils.set_random_seed(3)
    model = build_captioner(config)
    kernel, bias = model.decoder.fc2.get_weights()  # peaked logits: no near-ties to flip
    bias[Vocabulary.end_id] -= 3.0  # and captions of a few words, not just <end>
    model.decoder.fc2.set_weights([kernel * 4.0, bias])
    rng = np.random.default_rng(3)  # feature_norm (the default) with statistics to carry
    model.encoder.norm.moving_mean.assign(rng.normal(size=10).astype(np.float32))
    model.encoder.norm.moving_variance.assign(rng.uniform(0.5, 2.0, size=10).astype(np.float32))
    model_dir = save_model_dir(tmp_path / "model", model, vocab, config)
    export_dir = export_saved_model(model_dir, tmp_path / "export")

    blobs = _png_copies(sample_images[:2], tmp_path / "png")
    loaded = tf.saved_model.load(str(export_dir))
    predictor = Predictor.from_dir(model_dir)
    words = 0
    for beam in (1, 3):
        out = {k: v.numpy() for k, v in
               loaded.caption(tf.constant(blobs), beam_size=tf.constant(beam)).items()}
        for i, data in enumerate(blobs):
            expected = predictor.caption_bytes(data, beam_size=beam)
            n = len(expected.words)
            assert out["captions"][i].decode() == expected.caption, (beam, i)
            assert out["lengths"][i] == n
            words += n
            np.testing.assert_allclose(out["scores"][i], expected.score, atol=1e-4)
            np.testing.assert_allclose(out["attention"][i, :n], expected.attention, atol=1e-4)
    assert words >= 4  # real captions, not just <end>
    # uniform maps: the mean-pooled baseline looks everywhere
    np.testing.assert_allclose(out["attention"][0, :n], 1 / 16, atol=1e-6)
