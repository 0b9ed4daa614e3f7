"""The web app's JSON API on the tiny trained model: captions, info, OpenAPI and bad input."""

from __future__ import annotations

import io
import json
import math
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from icapnet.errors import IcapnetError, run_cli
from icapnet.web import create_app
from icapnet.web.info import NOT_EVALUATED, model_info
from icapnet.web.server import serve_in_background


@pytest.fixture(scope="module")
def predictor(tiny_model_dir: Path):
    from icapnet.inference.predictor import Predictor

    return Predictor.from_dir(tiny_model_dir)


@pytest.fixture(scope="module")
def client(predictor, tiny_model_dir: Path) -> TestClient:
    with TestClient(create_app(predictor, tiny_model_dir)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def jpeg(sample_images: list[Path]) -> bytes:
    return sample_images[0].read_bytes()


def _png(size=(96, 64), colour=(30, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _noise_jpeg(size=(320, 240)) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _post(client: TestClient, data: bytes, name="photo.jpg", kind="image/jpeg", **fields):
    return client.post("/api/caption", files={"image": (name, data, kind)}, data=fields)


def _grid(model_dir: Path) -> int:
    from icapnet.config import Config

    return math.isqrt(Config.load(model_dir).features.num_regions)


def test_caption_matches_the_predictor(client, predictor, jpeg, tiny_model_dir) -> None:
    response = _post(client, jpeg)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"caption", "words", "score", "attention", "beam_size"}
    from icapnet.config import DEFAULT_BEAM

    expected = predictor.caption_bytes(jpeg)  # the same default beam as the API's
    assert body["caption"] == expected.caption and body["words"] == expected.words
    assert body["words"], "the tiny model writes real sentences"
    assert body["score"] == pytest.approx(expected.score, abs=1e-4)
    assert body["beam_size"] == DEFAULT_BEAM
    attention = np.asarray(body["attention"])
    grid = _grid(tiny_model_dir)
    assert attention.shape == (len(body["words"]), grid, grid)  # [T][g][g]
    np.testing.assert_allclose(attention.sum(axis=(1, 2)), 1.0, atol=1e-2)  # softmax over regions
    np.testing.assert_allclose(attention, expected.attention, atol=1e-4)


def test_beam_search_and_png(client, predictor) -> None:
    png = _png()
    response = _post(client, png, name="blue.png", kind="image/png", beam_size="2")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["beam_size"] == 2
    assert body["caption"] == " ".join(body["words"])
    assert len(body["attention"]) == len(body["words"])


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("text file", 415, "notes.txt: not an image"),
        ("random bytes", 415, "not an image"),
        ("truncated jpeg header", 422, "corrupt image"),
        ("truncated jpeg data", 422, "corrupt or truncated image"),
        ("empty", 400, "empty upload"),
        ("over the limit", 413, "upload too large: the limit is 10 MB"),
        ("beam 0", 422, "beam_size must be a whole number from 1 to 10, got '0'"),
        ("beam 11", 422, "got '11'"),
        ("beam abc", 422, "got 'abc'"),
        ("beam 2.5", 422, "got '2.5'"),
        ("beam -1", 422, "got '-1'"),
    ],
)
def test_bad_uploads_get_clear_4xx(client, jpeg, case, status, message) -> None:
    noise = _noise_jpeg()
    requests = {
        "text file": lambda: _post(client, b"hello, not a photo\n", "notes.txt", "text/plain"),
        "random bytes": lambda: _post(client, bytes(range(256)) * 8, "x.jpg"),
        "truncated jpeg header": lambda: _post(client, jpeg[:40], "cut.jpg"),
        "truncated jpeg data": lambda: _post(client, noise[: len(noise) // 2], "half.jpg"),
        "empty": lambda: _post(client, b"", "empty.jpg"),
        "over the limit": lambda: _post(client, jpeg + b"\0" * (10 * 1024 * 1024), "big.jpg"),
        "beam 0": lambda: _post(client, jpeg, beam_size="0"),
        "beam 11": lambda: _post(client, jpeg, beam_size="11"),
        "beam abc": lambda: _post(client, jpeg, beam_size="abc"),
        "beam 2.5": lambda: _post(client, jpeg, beam_size="2.5"),
        "beam -1": lambda: _post(client, jpeg, beam_size="-1"),
    }
    response = requests[case]()
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert message in detail and "\n" not in detail
    assert client.get("/api/health").status_code == 200  # ... and the server keeps serving


def test_malformed_requests(client, jpeg) -> None:
    cases = [
        (client.post("/api/caption", data={"beam_size": "2"}), 415, "multipart/form-data"),
        (client.post("/api/caption", json={"image": "x"}), 415, "application/json"),
        (
            client.post("/api/caption", files={"photo": ("a.jpg", jpeg, "image/jpeg")}),
            400,
            "no 'image' file",
        ),
        (
            client.post(
                "/api/caption", data={"image": "abc"}, files={"x": ("x.jpg", b"1", "image/jpeg")}
            ),
            400,
            "'image' must be a file upload",
        ),
        (
            client.post(
                "/api/caption", content=b"abc", headers={"content-type": "multipart/form-data"}
            ),
            400,
            "malformed multipart",
        ),
    ]
    for response, status, message in cases:
        assert response.status_code == status, response.text
        assert message in response.json()["detail"]
    assert client.post("/api/caption").status_code == 415
    assert client.get("/api/caption").status_code == 405


def test_size_limit_is_checked_while_streaming(predictor, tiny_model_dir, jpeg) -> None:
    """A chunked body (no Content-Length) is cut off once it passes the limit."""
    limit = len(jpeg) + 100
    app = create_app(predictor, tiny_model_dir, max_upload_bytes=limit)
    sent = []
    boundary = "icapnet-boundary"

    def body():
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        for _ in range(1024):  # 64 MB if the server read it all
            sent.append(1)
            yield b"\0" * 65536

    received = 0

    async def counting_app(scope, receive, send):
        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        await app(scope, counted_receive, send)

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    with serve_in_background(counting_app) as url:
        try:
            response = httpx.post(f"{url}/api/caption", content=body(), headers=headers, timeout=60)
        except httpx.TransportError:
            pass  # the server answered 413 and hung up while we were still sending
        else:
            assert response.status_code == 413
            assert "upload too large" in response.json()["detail"]
        assert received < limit + 256 * 1024, "the app read far past the limit"
        assert len(sent) < 1024, "the server drained the whole oversized body"
        assert httpx.get(f"{url}/api/health").status_code == 200

    with TestClient(app) as small:
        # A file one byte over the (configurable) limit is refused; one under it is captioned.
        too_big = _post(small, jpeg + b"\0" * 101)
        assert too_big.status_code == 413
        assert too_big.json()["detail"] == f"upload too large: the limit is {limit / 1024:.3g} KB"
        assert _post(small, jpeg + b"\0" * 100).status_code == 200


def test_too_many_pixels_is_refused_before_decoding(client, monkeypatch) -> None:
    from icapnet.web import app as web_app

    monkeypatch.setattr(web_app, "MAX_PIXELS", 96 * 64 - 1)
    response = _post(client, _png(size=(96, 64)), "huge.png", "image/png")
    assert response.status_code == 413
    assert (
        response.json()["detail"]
        == "huge.png: image is 96x64 pixels; the limit is 0.006143 megapixels"
    )


def test_declared_length_over_limit_is_refused_before_reading(client) -> None:
    response = client.post(
        "/api/caption",
        content=b"",
        headers={
            "content-type": "multipart/form-data; boundary=x",
            "content-length": str(50 * 1024 * 1024),
        },
    )
    assert response.status_code == 413


def _strings(value):
    """Every string inside a JSON value (keys excluded)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def test_health_and_info(client, tiny_model_dir) -> None:
    from icapnet.config import Config
    from icapnet.data.text import Vocabulary

    health = client.get("/api/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["model"] == tiny_model_dir.name

    info = client.get("/api/info").json()
    config = Config.load(tiny_model_dir)
    assert info["name"] == tiny_model_dir.name
    assert info["vocab_size"] == info["vocabulary"]["size"] == len(Vocabulary.load(tiny_model_dir))
    assert info["vocabulary"]["min_count"] == config.data.min_count == 1
    assert info["training_data"] == {
        "dataset": "synthetic",
        "folder": Path(config.data.data_dir).name,  # a name, not the server's path
        "backbone_weights": "none",
    }
    assert info["model"]["units"] == config.model.units
    assert info["backbone"]["grid"] == _grid(tiny_model_dir) > 1
    assert info["metrics_status"] == NOT_EVALUATED and info["metrics"] is None
    assert info["metrics_summary"] is None
    assert info["limits"] == {
        "max_upload_bytes": 10 * 1024 * 1024,
        "max_upload": "10 MB",
        "max_beam_size": 10,
        "default_beam_size": 3,
        "max_candidates": 5,
    }


def test_info_shows_names_not_server_paths(tiny_model_dir, tmp_path) -> None:
    """Issue 12 #11: /api/info must not reveal where the server keeps its files."""
    from icapnet.config import Config

    model_dir = tmp_path / "private" / "shared-model"
    shutil.copytree(tiny_model_dir, model_dir)
    config = Config.load(model_dir)
    config.data.cache_dir = str(tmp_path / "private" / "cache")
    config.features.weights = str(tmp_path / "private" / "vgg16.weights.h5")
    config.save(model_dir)
    metrics = {"test": {"beam1": {"BLEU-1": 0.5, "cache": str(tmp_path / "private" / "cache"),
                                  "results": "results_test_beam1.json"}}}
    (model_dir / "metrics.json").write_text(json.dumps(metrics))
    with TestClient(create_app(_NoModel(), model_dir)) as app_client:
        info = app_client.get("/api/info").json()
    text = json.dumps(info)
    assert str(tmp_path) not in text and "private" not in text
    assert not [s for s in _strings(info) if s.startswith(("/", "~")) or "\\" in s]
    assert info["name"] == "shared-model"
    assert info["backbone"]["weights"] == "vgg16.weights.h5"
    assert info["training_data"]["backbone_weights"] == "vgg16.weights.h5"
    assert info["metrics"]["test"]["beam1"]["cache"] == "cache"


def test_info_training_data_carries_every_provenance_field() -> None:
    """Fields other branches add to config.json's data section appear without code changes."""
    import dataclasses

    from icapnet.config import Config, DataConfig, FeatureConfig
    from icapnet.web.info import training_data

    @dataclasses.dataclass
    class LaterDataConfig(DataConfig):  # what issue 11 adds to the data section
        split: str = "official"
        num_images: int = 6000
        synthetic: bool = False

    config = Config(features=FeatureConfig(weights="imagenet"),
                    data=LaterDataConfig(dataset="flickr8k", data_dir="/d/f8k", cache_dir="/c"))
    assert training_data(config) == {
        "dataset": "flickr8k", "split": "official", "num_images": 6000, "synthetic": False,
        "folder": "f8k", "backbone_weights": "imagenet"}


def test_info_reads_metrics_and_history(tiny_model_dir, tmp_path) -> None:
    model_dir = tmp_path / "evaluated"
    shutil.copytree(tiny_model_dir, model_dir)
    scores = {"BLEU-1": 0.6, "BLEU-2": 0.4, "BLEU-3": 0.3, "BLEU-4": 0.2, "coco_Bleu_4": 0.21,
              "METEOR": 0.19, "ROUGE_L": 0.45, "CIDEr": 0.5, "num_images": 3}
    metrics = {
        "test": {"beam3": {**scores, "BLEU-4": 0.25, "beam": 3},
                 "beam1": {**scores, "beam": 1, "evaluated_at": "2026-01-01T00:00:00"}},
        "val": {"beam1": {"BLEU-4": 0.9}},
    }
    (model_dir / "metrics.json").write_text(json.dumps(metrics))
    (model_dir / "history.csv").write_text("epoch,loss,val_loss\n0,3.0,3.5\n1,2.0,2.5\n")
    info = model_info(model_dir)
    assert info["metrics"] == metrics and info["metrics_status"] == "evaluated"
    summary = info["metrics_summary"]
    assert summary["split"] == "test" and summary["num_images"] == 3
    assert [c["label"] for c in summary["columns"]] == ["greedy", "beam 3"]  # greedy first
    assert [r["metric"] for r in summary["rows"]] == [
        "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]
    assert summary["rows"][3]["values"] == [0.2, 0.25]
    assert info["training"] == {"epochs": 2, "loss": 2.0, "val_loss": 2.5}
    # Only val evaluated, and only nltk BLEU: the table shrinks to what exists.
    (model_dir / "metrics.json").write_text(json.dumps({"val": {"beam1": {"BLEU-4": 0.9}}}))
    small = model_info(model_dir)["metrics_summary"]
    assert small["split"] == "val" and small["rows"] == [{"metric": "BLEU-4", "values": [0.9]}]
    (model_dir / "metrics.json").write_text("{broken")
    assert model_info(model_dir)["metrics_status"] == NOT_EVALUATED


class _NoModel:
    """A predictor for tests that never caption."""

    def caption_images(self, images, **kwargs):
        raise AssertionError("not expected to caption")


def test_openapi_and_page(client) -> None:
    spec = client.get("/openapi.json")
    assert spec.status_code == 200
    spec = spec.json()
    assert spec["openapi"].startswith("3.")
    assert {"/api/caption", "/api/health", "/api/info"} <= set(spec["paths"])
    post = spec["paths"]["/api/caption"]["post"]
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["image"] and form["properties"]["image"]["format"] == "binary"
    assert form["properties"]["beam_size"]["maximum"] == 10
    assert {"200", "400", "413", "415", "422"} <= set(post["responses"])
    schema = spec["components"]["schemas"]["CaptionResponse"]
    assert {"caption", "words", "score", "attention", "beam_size"} <= set(schema["required"])
    assert client.get("/docs").status_code == 200

    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for needle in ('id="file-input"', 'id="caption-button"', 'id="beam-size"', "/static/app.js"):
        assert needle in page.text
    scripts = ("heatmap.js", "info.js", "downloads.js", "app.js")
    for asset in (*scripts, "style.css", "favicon.svg"):
        assert client.get(f"/static/{asset}").status_code == 200
        assert f"/static/{asset}" in page.text
    code = page.text + "".join(client.get(f"/static/{name}").text for name in scripts)
    assert "://" not in code  # no CDN: works offline


class _Overlap:
    """Counts how many calls of the wrapped functions run at the same time."""

    def __init__(self, delay: float = 0.0) -> None:
        self.active = self.peak = self.calls = 0
        self.delay = delay
        self.guard = threading.Lock()

    def wrap(self, fn):
        def counted(*args, **kwargs):
            with self.guard:
                self.active += 1
                self.calls += 1
                self.peak = max(self.peak, self.active)
            try:
                if self.delay:
                    time.sleep(self.delay)
                return fn(*args, **kwargs)
            finally:
                with self.guard:
                    self.active -= 1

        return counted


def test_one_lock_keeps_the_model_to_one_call_at_a_time(
    predictor, tiny_model_dir, jpeg, monkeypatch
) -> None:
    """Parallel uploads to a real uvicorn server all succeed, and TensorFlow (backbone and
    decoder) never runs twice at once: the Predictor's lock alone guards it (issue 14)."""
    from icapnet.inference import predictor as predictor_module

    model_calls = _Overlap()
    extractor = predictor.extractor
    monkeypatch.setattr(predictor, "extractor", model_calls.wrap(extractor))
    monkeypatch.setattr(predictor_module, "decode", model_calls.wrap(predictor_module.decode))
    monkeypatch.setattr(predictor_module, "beam_candidates",
                        model_calls.wrap(predictor_module.beam_candidates))

    png = _png(colour=(200, 40, 40))
    uploads = [jpeg, png, jpeg, b"not an image", png, jpeg]
    with serve_in_background(create_app(predictor, tiny_model_dir)) as url:

        def send(data: bytes) -> httpx.Response:
            files = {"image": ("x", data, "application/octet-stream")}
            return httpx.post(
                f"{url}/api/caption", files=files, data={"beam_size": "2"}, timeout=60
            )

        with ThreadPoolExecutor(max_workers=len(uploads)) as pool:
            responses = list(pool.map(send, uploads))
        assert httpx.get(f"{url}/api/health").status_code == 200
    assert [r.status_code for r in responses] == [200, 200, 200, 415, 200, 200]
    assert responses[0].json() | {"elapsed_ms": 0} == responses[2].json() | {"elapsed_ms": 0}
    assert model_calls.calls >= 10 and model_calls.peak == 1


def test_decodes_run_in_parallel_but_bounded(predictor, tiny_model_dir, jpeg, monkeypatch):
    """Issue 12 #10: at most MAX_CONCURRENT_DECODES uploads are decoded at once."""
    from icapnet.web import app as web_app

    decodes = _Overlap(delay=0.3)
    monkeypatch.setattr(web_app, "load_image_bytes", decodes.wrap(web_app.load_image_bytes))
    with serve_in_background(create_app(predictor, tiny_model_dir)) as url:

        def send(_: int) -> int:
            files = {"image": ("x.jpg", jpeg, "image/jpeg")}
            return httpx.post(f"{url}/api/caption", files=files, timeout=60).status_code

        with ThreadPoolExecutor(max_workers=6) as pool:
            codes = list(pool.map(send, range(6)))
    assert codes == [200] * 6 and decodes.calls == 6
    assert decodes.peak == web_app.MAX_CONCURRENT_DECODES == 2


def test_uploads_are_decoded_at_reduced_size(client, monkeypatch) -> None:
    """A large photo reaches the model (and the figure) no larger than DECODE_MAX_SIDE."""
    from icapnet.web import app as web_app

    seen = []
    original = web_app.load_image_bytes

    def spy(data, name, max_side=None):
        image = original(data, name, max_side)
        seen.append((max_side, image.shape))
        return image

    monkeypatch.setattr(web_app, "load_image_bytes", spy)
    response = _post(client, _png(size=(3000, 1500)), "wide.png", "image/png")
    assert response.status_code == 200, response.text
    assert seen == [(1024, (512, 1024, 3))]


def test_nosniff_on_every_response(client, jpeg) -> None:
    """Issue 12 #11: browsers must not guess content types, for pages, files, JSON or errors."""
    responses = [
        client.get("/"), client.get("/api/info"), client.get("/api/health"),
        client.get("/static/app.js"), client.get("/docs"), client.get("/openapi.json"),
        client.get("/nope"), client.get("/api/examples"), client.get("/api/examples/nope"),
        _post(client, jpeg), _post(client, b"text", "a.txt", "text/plain"),
        client.post("/api/caption", content=b"", headers={
            "content-type": "multipart/form-data; boundary=x",
            "content-length": str(50 * 1024 * 1024)}),
    ]
    assert [r.headers.get("x-content-type-options") for r in responses] == ["nosniff"] * len(
        responses), [(r.request.url.path, r.status_code) for r in responses]


def test_unexpected_errors_are_500_with_nosniff(tiny_model_dir, jpeg) -> None:
    class Broken:
        def caption_images(self, images, **kwargs):
            raise RuntimeError("boom")

    with TestClient(create_app(Broken(), tiny_model_dir), raise_server_exceptions=False) as bad:
        response = _post(bad, jpeg)
    assert response.status_code == 500
    assert response.json()["detail"] == "internal error: RuntimeError; see the server log"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_end_attention_and_beam_candidates(client, predictor, jpeg, tiny_model_dir) -> None:
    from icapnet.data.images import load_image_bytes

    body = _post(client, jpeg, beam_size="3").json()
    expected = predictor.caption_images([load_image_bytes(jpeg)], beam_size=3,
                                        num_candidates=3)[0]
    grid = _grid(tiny_model_dir)
    end = np.asarray(body["end_attention"])
    assert end.shape == (grid, grid) and end.sum() == pytest.approx(1.0, abs=1e-2)
    np.testing.assert_allclose(end, expected.end_attention, atol=1e-4)
    candidates = body["candidates"]
    assert [c["caption"] for c in candidates] == [c.caption for c in expected.candidates]
    assert candidates[0]["caption"] == body["caption"]
    assert candidates[0]["score"] == pytest.approx(body["score"], abs=1e-5)
    scores = [c["score"] for c in candidates]
    assert scores == sorted(scores, reverse=True) and 1 <= len(candidates) <= 3
    greedy = _post(client, jpeg, beam_size="1").json()
    assert [c["caption"] for c in greedy["candidates"]] == [greedy["caption"]]


def test_attention_figure_download(client, jpeg) -> None:
    """The page's PNG/GIF download: the same renderer as the CLI, as an attachment."""
    body = _post(client, jpeg).json()
    png = client.post("/api/attention", files={"image": ("my photo.jpg", jpeg, "image/jpeg")})
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png"
    assert png.headers["content-disposition"] == 'attachment; filename="my_photo_attention.png"'
    with Image.open(io.BytesIO(png.content)) as figure:
        assert figure.info["Caption"] == body["caption"]
        assert figure.info["Panels"] == str(len(body["words"]) + 2)  # photo, words, <end>
    gif = client.post("/api/attention", files={"image": ("a.jpg", jpeg, "image/jpeg")},
                      data={"format": "GIF", "beam_size": "2"})
    assert gif.status_code == 200 and gif.headers["content-type"] == "image/gif"
    with Image.open(io.BytesIO(gif.content)) as frames:
        assert frames.is_animated and frames.n_frames >= 3
    bad = client.post("/api/attention", files={"image": ("a.jpg", jpeg, "image/jpeg")},
                      data={"format": "bmp"})
    assert bad.status_code == 422
    assert bad.json()["detail"] == "format must be one of png, gif, got 'bmp'"


def test_examples(client, tiny_model_dir, tmp_path) -> None:
    listed = client.get("/api/examples").json()["examples"]
    assert [e["name"] for e in listed] == [f"scene-{i}.jpg" for i in range(1, 5)]  # synthetic
    photo = client.get(listed[0]["url"])
    assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(photo.content)) as image:
        assert image.size == (224, 224)
    assert _post(client, photo.content, "scene-1.jpg").status_code == 200
    assert client.get("/api/examples/nope.jpg").status_code == 404
    assert client.get("/api/examples/..%2Fconfig.json").status_code == 404

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "b.png").write_bytes(_png())
    (folder / "a.jpg").write_bytes(_noise_jpeg())
    (folder / "notes.txt").write_text("not an example")
    with TestClient(create_app(_NoModel(), tiny_model_dir, examples_dir=folder)) as own:
        names = [e["name"] for e in own.get("/api/examples").json()["examples"]]
        assert names == ["a.jpg", "b.png"]
        assert own.get("/api/examples/b.png").headers["content-type"] == "image/png"
    other = tmp_path / "flickr-model"
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["data"]["dataset"] = "flickr8k"
    (other / "config.json").write_text(json.dumps(config))
    with TestClient(create_app(_NoModel(), other)) as none:
        assert none.get("/api/examples").json() == {"examples": []}


def test_cli_errors_are_one_line(tmp_path, capsys) -> None:
    from icapnet import serve

    assert run_cli(serve.main, ["--model", str(tmp_path / "missing")]) == 2
    assert "missing: model directory not found" in capsys.readouterr().err
    with pytest.raises(IcapnetError, match="not a model directory"):
        serve.main(["--model", str(tmp_path)])
    with pytest.raises(IcapnetError, match="--max-upload-mb"):
        serve.main(["--max-upload-mb", "0"])
    busy = serve.bind_socket("127.0.0.1", 0)
    try:
        port = busy.getsockname()[1]
        with pytest.raises(IcapnetError, match=f"127.0.0.1:{port}: cannot listen"):
            serve.bind_socket("127.0.0.1", port)
    finally:
        busy.close()


def test_cli_without_any_model(tmp_path, monkeypatch, capsys) -> None:
    from icapnet import serve

    monkeypatch.chdir(tmp_path)
    assert run_cli(serve.main, []) == 2
    assert "saved_models: no trained model found" in capsys.readouterr().err


def test_cli_loads_the_model_and_serves_it(tiny_model_dir, monkeypatch, capsys) -> None:
    """``main`` wires model, limits and a bound socket into uvicorn (run() itself is stubbed)."""
    import uvicorn

    from icapnet import serve

    served = {}

    def fake_run(self, sockets=None):
        served["app"], served["sockets"] = self.config.app, sockets

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    argv = ["--model", str(tiny_model_dir), "--port", "0", "--max-upload-mb", "0.5"]
    assert serve.main([*argv, "--max-beam-size", "4", "--no-warmup"]) == 0
    (sock,) = served["sockets"]
    try:
        port = sock.getsockname()[1]
        assert (
            f"serving {tiny_model_dir.name} on http://127.0.0.1:{port}/" in capsys.readouterr().out
        )
        with TestClient(served["app"]) as cli_client:
            limits = cli_client.get("/api/info").json()["limits"]
            assert limits == {
                "max_upload_bytes": 524288,
                "max_upload": "512 KB",
                "max_beam_size": 4,
                "default_beam_size": 3,
                "max_candidates": 5,
            }
            assert "got '5'" in _post(cli_client, _png(), beam_size="5").json()["detail"]
    finally:
        sock.close()


def test_page_may_be_framed_only_where_allowed(tiny_model_dir) -> None:
    """The page refuses other sites' frames; the notebook lets Colab's port proxy show it."""
    from icapnet.web.app import COLAB_FRAME_ANCESTORS

    with TestClient(create_app(_NoModel(), tiny_model_dir)) as plain:
        assert "frame-ancestors 'none'" in plain.get("/").headers["content-security-policy"]
    framed = create_app(_NoModel(), tiny_model_dir, frame_ancestors=COLAB_FRAME_ANCESTORS)
    with TestClient(framed) as colab:
        csp = colab.get("/").headers["content-security-policy"]
    assert "frame-ancestors https://colab.research.google.com https://*.googleusercontent.com" \
        in csp and "'none'" not in csp.split("frame-ancestors")[1]


def test_info_shows_the_split_sentence_without_paths() -> None:
    """Issue 11: the split's source is a sentence ("random 80/10/10 ..."), not a path; a
    folder inside it is shown by name only."""
    from icapnet.config import Config, DataConfig
    from icapnet.web.info import training_data

    def shown(split: str) -> str:
        return training_data(Config(data=DataConfig(dataset="flickr8k", split=split)))["split"]

    assert shown("random 80/10/10 by image (seed 3)") == "random 80/10/10 by image (seed 3)"
    assert shown("official (package data)") == "official (package data)"
    assert shown("split files beside the data (differ from the official lists): "
                 "/home/me/private/f8k/Flickr8k_text") == (
        "split files beside the data (differ from the official lists): Flickr8k_text")
