"""The web app's JSON API on the tiny trained model: captions, info, OpenAPI and bad input."""

from __future__ import annotations

import io
import json
import math
import shutil
import threading
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
    expected = predictor.caption_bytes(jpeg, beam_size=1)
    assert body["caption"] == expected.caption and body["words"] == expected.words
    assert body["words"], "the tiny model writes real sentences"
    assert body["score"] == pytest.approx(expected.score, abs=1e-4)
    assert body["beam_size"] == 1
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


def test_health_and_info(client, tiny_model_dir) -> None:
    from icapnet.config import Config
    from icapnet.data.text import Vocabulary

    health = client.get("/api/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["model"] == tiny_model_dir.name

    info = client.get("/api/info").json()
    config = Config.load(tiny_model_dir)
    assert info["name"] == tiny_model_dir.name
    assert info["vocab_size"] == len(Vocabulary.load(tiny_model_dir)) > 4
    assert info["data"]["dataset"] == "synthetic"
    assert info["data"]["data_dir"] == config.data.data_dir
    assert info["model"]["units"] == config.model.units
    assert info["backbone"]["grid"] == _grid(tiny_model_dir) > 1
    assert info["metrics_status"] == NOT_EVALUATED and info["metrics"] is None
    assert info["limits"] == {
        "max_upload_bytes": 10 * 1024 * 1024,
        "max_upload": "10 MB",
        "max_beam_size": 10,
    }


def test_info_reads_metrics_and_history(tiny_model_dir, tmp_path) -> None:
    model_dir = tmp_path / "evaluated"
    shutil.copytree(tiny_model_dir, model_dir)
    metrics = {"split": "test", "images": 3, "BLEU-4": 0.25, "nested": {"CIDEr": 1.5}}
    (model_dir / "metrics.json").write_text(json.dumps(metrics))
    (model_dir / "history.csv").write_text("epoch,loss,val_loss\n0,3.0,3.5\n1,2.0,2.5\n")
    info = model_info(model_dir)
    assert info["metrics"] == metrics and info["metrics_status"] == "evaluated"
    assert ["BLEU-4", 0.25] in info["metrics_table"]
    assert ["nested.CIDEr", 1.5] in info["metrics_table"]
    assert info["training"] == {"epochs": 2, "loss": 2.0, "val_loss": 2.5}
    (model_dir / "metrics.json").write_text("{broken")
    assert model_info(model_dir)["metrics_status"] == NOT_EVALUATED


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
    for asset in ("app.js", "style.css", "favicon.svg"):
        assert client.get(f"/static/{asset}").status_code == 200
    assert "://" not in page.text + client.get("/static/app.js").text  # no CDN: works offline


def test_concurrent_requests_are_serialised(predictor, tiny_model_dir, jpeg) -> None:
    """Parallel uploads to a real uvicorn server all succeed; the model never runs twice at once."""
    active, peak = 0, 0
    guard = threading.Lock()

    class Spy:
        def caption_bytes(self, data: bytes, **kwargs):
            nonlocal active, peak
            with guard:
                active += 1
                peak = max(peak, active)
            try:
                return predictor.caption_bytes(data, **kwargs)
            finally:
                with guard:
                    active -= 1

    png = _png(colour=(200, 40, 40))
    uploads = [jpeg, png, jpeg, b"not an image"]
    with serve_in_background(create_app(Spy(), tiny_model_dir)) as url:

        def send(data: bytes) -> httpx.Response:
            files = {"image": ("x", data, "application/octet-stream")}
            return httpx.post(
                f"{url}/api/caption", files=files, data={"beam_size": "2"}, timeout=60
            )

        with ThreadPoolExecutor(max_workers=len(uploads)) as pool:
            responses = list(pool.map(send, uploads))
        assert httpx.get(f"{url}/api/health").status_code == 200
    assert [r.status_code for r in responses] == [200, 200, 200, 415]
    assert responses[0].json() | {"elapsed_ms": 0} == responses[2].json() | {"elapsed_ms": 0}
    assert peak == 1


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
            }
            assert "got '5'" in _post(cli_client, _png(), beam_size="5").json()["detail"]
    finally:
        sock.close()
