"""Shared fixtures: a tiny trained captioner on synthetic scenes, and a few image paths.

``tiny_model_dir`` is built once per test session (~25 s on 2 busy CPU cores): 12
synthetic scenes, their VGG16 features (weights "none", deterministic; 112 px input, so a
7x7 = 49-region grid, 4x cheaper than 224), and a 16/32-unit GRU captioner trained on one
caption per scene until it reproduces them, saved with ``save_model_dir``. Its greedy
captions are real sentences from the synthetic grammar, not noise.
"""

from __future__ import annotations

import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TINY_SCENES = 12
TINY_MAX_LENGTH = 20
TINY_IMAGE_SIZE = 112  # VGG16 block5_conv3 -> 7x7 regions
TINY_TRAIN_STEPS = 90


@pytest.fixture(scope="session")
def synthetic_scenes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic scenes (Kaggle layout: Images/*.jpg + captions.txt + boxes.json)."""
    from icapnet.data.synthetic import generate_scenes

    return generate_scenes(
        tmp_path_factory.mktemp("scenes") / "synthetic", TINY_SCENES, seed=0, progress=False
    )


@pytest.fixture(scope="session")
def sample_images(synthetic_scenes_dir: Path) -> list[Path]:
    """Three JPEG paths from the synthetic scenes the tiny model was trained on."""
    return sorted((synthetic_scenes_dir / "Images").glob("*.jpg"))[:3]


def _tiny_cnn(include_top=False, weights=None, input_shape=(16, 16, 3)):
    import keras

    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="conv_a")(inputs)
    x = keras.layers.Conv2D(10, 3, strides=2, padding="same", name="conv_b")(x)
    return keras.Model(inputs, x)


@pytest.fixture(scope="session")
def tiny_backbone() -> str:
    """Registers "tiny": two strided convs, 16 px in, a 4x4 grid of 10 channels out. For
    tests where the backbone is only plumbing (fine-tuning, export), VGG16 would cost most
    of their time."""
    from icapnet.model.backbone import BACKBONES, Backbone, register_backbone

    register_backbone(Backbone("tiny", _tiny_cnn, "conv_b", lambda x: x / 127.5 - 1.0, 16))
    yield "tiny"
    BACKBONES.pop("tiny", None)


@pytest.fixture(scope="session")
def tiny_model_dir(
    synthetic_scenes_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A model directory (config.json, vocab.json, weights) of a tiny trained model."""
    import csv

    import keras
    import numpy as np
    import tensorflow as tf

    from icapnet.config import Config, DataConfig, FeatureConfig, ModelConfig, TrainConfig
    from icapnet.data.images import load_image
    from icapnet.data.text import Vocabulary
    from icapnet.model.backbone import build_feature_extractor, extract_features
    from icapnet.model.store import build_captioner, save_model_dir

    keras.utils.set_random_seed(0)
    with open(synthetic_scenes_dir / "captions.txt", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    vocab = Vocabulary.build([row["caption"] for row in rows], min_count=1)
    first: dict[str, str] = {}  # one phrasing per scene: learnable in a few seconds
    for row in rows:
        first.setdefault(row["image"], row["caption"])
    image_ids = sorted(first)

    grid = TINY_IMAGE_SIZE // 16
    feature_cfg = FeatureConfig(weights="none", image_size=TINY_IMAGE_SIZE, num_regions=grid**2)
    extractor = build_feature_extractor(feature_cfg)
    images = [load_image(synthetic_scenes_dir / "Images" / i) for i in image_ids]
    features = extract_features(extractor, images, batch_size=len(images))

    encoded = [vocab.encode(first[i]) for i in image_ids]
    captions = np.zeros((len(encoded), max(map(len, encoded))), np.int32)
    for n, ids in enumerate(encoded):
        captions[n, : len(ids)] = ids

    config = Config(
        features=feature_cfg,
        model=ModelConfig(
            vocab_size=len(vocab),
            embedding_dim=16,
            units=32,
            attention_units=16,
            dropout=0.0,
            state_dropout=0.0,
            # Batch normalisation's moving statistics need more than 12 steps to settle; the
            # tiny model standardises its features itself (below), folded into the weights.
            feature_norm=False,
            num_regions=grid**2,
            max_length=TINY_MAX_LENGTH,
        ),
        train=TrainConfig(batch_size=12, learning_rate=1e-2, epochs=1, attention_penalty=0.0),
        data=DataConfig(dataset="synthetic", data_dir=str(synthetic_scenes_dir), min_count=1),
    )
    # Random-weight VGG16 features are uncentred and sparse (ReLU): a 12-step tiny model learns
    # them far more reliably standardised. Train on standardised features,
    # then fold the standardisation into the first layer, so the saved model takes raw
    # features like any other (Predictor and export need no special case).
    mean, std = float(np.mean(features)), float(np.std(features)) or 1.0
    model = build_captioner(config)
    model.compile(optimizer=keras.optimizers.Adam(config.train.learning_rate), jit_compile=False)
    # One epoch of repeated full batches: per-epoch overhead would dominate 1-step epochs.
    batches = tf.data.Dataset.from_tensors(((features - mean) / std, captions))
    model.fit(batches.repeat(TINY_TRAIN_STEPS), epochs=1, shuffle=False, verbose=0)
    _fold_standardization(model.encoder.dense, mean, std)
    return save_model_dir(tmp_path_factory.mktemp("models") / "tiny", model, vocab, config)


class LocalHTTPServer:
    """Tiny HTTP server on 127.0.0.1 with Range support and fault injection."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.paths: list[str] = []  # every request, in order
        self.ranges: list[str | None] = []
        self.ignore_range = False
        self.cut_first_response_at: int | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.paths.append(self.path)
                data = server.files.get(self.path.lstrip("/"))
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and not server.ignore_range:
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_first_response_at is not None:
                    cut, server.cut_first_response_at = server.cut_first_response_at, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch):
    """A LocalHTTPServer on 127.0.0.1 (no download retry delays while it runs)."""
    from icapnet.data import download

    monkeypatch.setattr(download, "RETRY_DELAY_S", 0.0)
    srv = LocalHTTPServer()
    yield srv
    srv.close()


def _fold_standardization(dense, mean: float, std: float) -> None:
    """Make ``dense`` (trained on ``(x - mean) / std``) take raw ``x``: same outputs.

    ``W' = W / std`` and ``b' = b - (mean / std) * sum_in(W)`` give ``W'x + b' = W (x - mean)
    / std + b``.
    """
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel / std, bias - (mean / std) * kernel.sum(axis=0)])


@pytest.fixture
def model_cache(tmp_path, monkeypatch) -> Path:
    """An empty model cache (``ICAPNET_CACHE``) for packaged and downloaded models."""
    from icapnet.model import hub

    cache = tmp_path / "icapnet-cache"
    monkeypatch.setenv(hub.CACHE_ENV, str(cache))
    return cache / "models"
