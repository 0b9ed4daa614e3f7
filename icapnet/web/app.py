"""The FastAPI app: a one-page captioning UI plus the JSON API it uses.

The model is loaded once by the caller and handed in (``create_app(predictor, model_dir)``),
so tests can serve a tiny model and the CLI a real one.

Threads, locks and memory. Work runs in worker threads so the event loop keeps answering
(health, info, static files). Uploads are decoded at most ``MAX_CONCURRENT_DECODES`` at a
time and at reduced size (the model needs 224 x 224, figures at most 640 px), so a burst of
8000 x 8000 photos cannot take gigabytes, and what a large decode freed is handed back to
the operating system. The TensorFlow model is guarded by one lock, the Predictor's own: the
app adds none. Figures are drawn one at a time (matplotlib is not thread-safe).
"""

from __future__ import annotations

import io
import logging
import math
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
import numpy as np
from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image, UnidentifiedImageError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from icapnet import __version__
from icapnet.config import DEFAULT_BEAM
from icapnet.data.images import load_image_bytes
from icapnet.errors import IcapnetError
from icapnet.web.examples import Example, find_examples
from icapnet.web.info import model_info, read_metrics
from icapnet.web.memory import release_freed_memory
from icapnet.web.schemas import (
    ERRORS,
    FIGURE_FORMATS,
    MAX_CANDIDATES,
    CaptionResponse,
    ErrorResponse,
    HealthResponse,
    request_body_schema,
)
from icapnet.web.upload import (
    UploadError,
    format_size,
    parse_choice_field,
    parse_int_field,
    read_image_upload,
)

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_BEAM_SIZE = 10
MAX_PIXELS = 64_000_000  # a 64-megapixel PNG still decodes to ~200 MB inside Pillow
DECODE_MAX_SIDE = 1024  # uploads are decoded no larger than this (long side)
MAX_CONCURRENT_DECODES = 2
_PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors {ancestors}"
)
# Where Colab shows a kernel port inside the notebook (serve_kernel_port_as_iframe): the
# notebook page and its output frames.
COLAB_FRAME_ANCESTORS = ("https://colab.research.google.com", "https://*.googleusercontent.com")
_NOSNIFF = (b"x-content-type-options", b"nosniff")
log = logging.getLogger("icapnet.serve")


class CaptionPredictor(Protocol):
    """What the app needs from ``icapnet.inference.predictor.Predictor``."""

    def caption_images(
        self, images: list[np.ndarray], beam_size: int = DEFAULT_BEAM,
        max_length: int | None = None, length_penalty: float = 0.0, num_candidates: int = 1,
    ) -> list[Any]: ...


class NoSniff:
    """``X-Content-Type-Options: nosniff`` on every response: a browser must not guess that
    an uploaded or served file is HTML or script."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == _NOSNIFF[0] for name, _ in headers):
                    headers.append(_NOSNIFF)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_nosniff)


def create_app(
    predictor: CaptionPredictor,
    model_dir: str | Path,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_beam_size: int = DEFAULT_MAX_BEAM_SIZE,
    examples_dir: str | Path | None = None,
    frame_ancestors: Sequence[str] = (),
) -> FastAPI:
    """Build the web app around an already-loaded predictor and the directory it came from.

    The page refuses to be shown inside another site's frame unless its origin is in
    ``frame_ancestors`` (the notebook passes COLAB_FRAME_ANCESTORS).
    """
    page_csp = _PAGE_CSP.format(ancestors=" ".join(frame_ancestors) or "'none'")
    model_dir = Path(model_dir)
    info = model_info(model_dir)  # fail at startup, not on the first visitor, if it is broken
    examples = {ex.name: ex for ex in find_examples(
        model_dir, info["training_data"]["dataset"], examples_dir)}
    decode_limiter = anyio.CapacityLimiter(MAX_CONCURRENT_DECODES)
    render_lock = threading.Lock()
    app = FastAPIOffline(
        title="icapnet",
        version=__version__,
        description=(
            "Caption a photo and see where the model looked for each word. "
            f"Serving model '{info['name']}'."
        ),
        static_url="/static-docs",
        favicon_url="/static/favicon.svg",
    )
    app.add_middleware(NoSniff)
    app.state.predictor = predictor
    app.state.model_dir = model_dir

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, err: UploadError) -> JSONResponse:
        # A refused oversized body is not worth draining: ask uvicorn to drop the connection.
        headers = {"Connection": "close"} if err.status_code == 413 else None
        return JSONResponse({"detail": err.message}, status_code=err.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error while handling %s", request.url.path)
        return JSONResponse(
            {"detail": f"internal error: {type(err).__name__}; see the server log"},
            status_code=500,
            headers={"X-Content-Type-Options": "nosniff"},  # outside the middleware stack
        )

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            headers={"Content-Security-Policy": page_csp, "Cache-Control": "no-cache"},
        )

    @app.get("/api/health", response_model=HealthResponse, tags=["service"])
    async def health() -> dict[str, str]:
        """Liveness check: the model is loaded and the server answers."""
        return {"status": "ok", "model": info["name"], "version": __version__}

    metrics_at_start = read_metrics(model_dir)

    @app.get("/api/info", tags=["service"])
    async def get_info() -> dict[str, Any]:
        """The served model: architecture, training data, vocabulary and test metrics."""
        metrics = read_metrics(model_dir)  # re-read: evaluation may finish while serving
        fresh = info if metrics == metrics_at_start else model_info(model_dir)
        return {
            **fresh,
            "limits": {
                "max_upload_bytes": max_upload_bytes,
                "max_upload": format_size(max_upload_bytes),
                "max_beam_size": max_beam_size,
                "default_beam_size": min(DEFAULT_BEAM, max_beam_size),
                "max_candidates": MAX_CANDIDATES,
            },
        }

    @app.get("/api/examples", tags=["service"])
    async def list_examples() -> dict[str, Any]:
        """Example photos to try (URLs relative to this server)."""
        return {"examples": [{"name": name, "url": f"/api/examples/{name}"}
                             for name in examples]}

    @app.get("/api/examples/{name}", tags=["service"], response_class=Response,
             responses={200: {"content": {"image/*": {}}}, 404: {"model": ErrorResponse}})
    async def get_example(name: str) -> Response:
        """One example photo."""
        example: Example | None = examples.get(name)
        if example is None:
            return JSONResponse({"detail": f"{name}: no such example"}, status_code=404)
        return Response(example.data, media_type=example.content_type,
                        headers={"Cache-Control": "public, max-age=3600"})

    async def caption_upload(request: Request, figure: bool = False) -> _Captioned:
        """Read, check, decode (bounded) and caption one upload."""
        upload = await read_image_upload(request, max_upload_bytes)
        beam_size = parse_int_field(upload.fields, "beam_size",
                                    min(DEFAULT_BEAM, max_beam_size), 1, max_beam_size)
        fmt = parse_choice_field(upload.fields, "format", "png", tuple(FIGURE_FORMATS)) \
            if figure else ""
        _check_is_image(upload.data, upload.filename)

        def decode() -> np.ndarray:
            try:
                return load_image_bytes(upload.data, upload.filename, DECODE_MAX_SIDE)
            finally:
                release_freed_memory()

        started = time.perf_counter()
        try:
            image = await to_thread.run_sync(decode, limiter=decode_limiter)
        except IcapnetError as err:
            raise UploadError(422, str(err)) from None
        try:
            result = await to_thread.run_sync(
                lambda: predictor.caption_images(
                    [image], beam_size=beam_size, num_candidates=min(beam_size, MAX_CANDIDATES)
                )[0]
            )
        except IcapnetError as err:  # e.g. a beam wider than the model's vocabulary allows
            raise UploadError(422, str(err)) from None
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        return _Captioned(upload.filename, result, image, beam_size, elapsed_ms, fmt)

    @app.post(
        "/api/caption",
        response_model=CaptionResponse,
        responses=ERRORS,
        tags=["captioning"],
        openapi_extra={"requestBody": request_body_schema(max_upload_bytes, max_beam_size)},
    )
    async def caption(request: Request) -> dict[str, Any]:
        """Caption an uploaded photo (multipart field ``image``, optional ``beam_size``)."""
        done = await caption_upload(request)
        return _result_json(done.result, done.beam_size, done.elapsed_ms)

    @app.post(
        "/api/attention",
        response_class=Response,
        responses={
            200: {"content": {kind: {} for kind in FIGURE_FORMATS.values()},
                  "description": "The attention figure, as a file download."},
            **ERRORS,
        },
        tags=["captioning"],
        openapi_extra={
            "requestBody": request_body_schema(max_upload_bytes, max_beam_size, figure=True)
        },
    )
    async def attention(request: Request) -> Response:
        """Caption a photo and return the attention figure: the photo, one panel per word and
        ``<end>``, one colour scale (``format=png``), or an animated GIF (``format=gif``)."""
        done = await caption_upload(request, figure=True)
        result = done.result

        def render() -> bytes:
            from icapnet.plots import attention_gif, attention_png

            draw = attention_png if done.format == "png" else attention_gif
            with render_lock:
                return draw(done.image, result.words, result.attention, caption=result.caption,
                            end_attention=result.end_attention)

        if not result.words and result.end_attention is None:
            raise UploadError(422, f"{done.filename}: empty caption, nothing to draw")
        data = await to_thread.run_sync(render)
        fmt = done.format
        stem = Path(done.filename).stem or "photo"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80] or "photo"
        return Response(
            data,
            media_type=FIGURE_FORMATS[fmt],
            headers={"Content-Disposition": f'attachment; filename="{safe}_attention.{fmt}"'},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


@dataclass
class _Captioned:
    filename: str
    result: Any
    image: np.ndarray  # decoded at reduced size: what the figure shows
    beam_size: int
    elapsed_ms: float
    format: str  # figure format ("" for /api/caption)


def _check_is_image(data: bytes, filename: str) -> None:
    """Tell "not an image at all" (415) apart from "an image we cannot decode" (422) cheaply.

    Only the header is parsed here; the decoder reports corruption.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except UnidentifiedImageError:
        raise UploadError(
            415, f"{filename}: not an image (use JPEG, PNG, GIF, BMP, WebP or TIFF)"
        ) from None
    except Image.DecompressionBombError:
        raise UploadError(413, f"{filename}: image has too many pixels to caption safely") from None
    except Exception as err:  # header so broken that Pillow fails outright
        raise UploadError(422, f"{filename}: corrupt image ({err})") from None
    if width * height > MAX_PIXELS:  # decoding it would take gigabytes of memory
        raise UploadError(
            413,
            f"{filename}: image is {width}x{height} pixels; the limit is "
            f"{MAX_PIXELS / 1e6:g} megapixels",
        )


def _grid_json(maps: np.ndarray) -> list:
    """[.., R] or [.., g, g] float maps -> nested lists of [g][g] (finite, 5 decimals)."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape and math.isqrt(maps.shape[-1]) ** 2 == maps.shape[-1] and maps.ndim in (1, 2):
        side = math.isqrt(maps.shape[-1])
        maps = maps.reshape(*maps.shape[:-1], side, side)
    maps = np.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
    return np.round(maps, 5).tolist()


def _finite(score: float) -> float:
    score = float(score)
    return score if math.isfinite(score) else -1e30  # JSON has no infinities


def _result_json(result: Any, beam_size: int, elapsed_ms: float) -> dict[str, Any]:
    end = getattr(result, "end_attention", None)
    candidates = getattr(result, "candidates", None) or []
    return {
        "caption": str(result.caption),
        "words": [str(word) for word in result.words],
        "score": _finite(result.score),
        "attention": _grid_json(result.attention),
        "end_attention": None if end is None else _grid_json(end),
        "candidates": [{"caption": c.caption, "score": _finite(c.score)}
                       for c in candidates[:MAX_CANDIDATES]],
        "beam_size": beam_size,
        "elapsed_ms": round(elapsed_ms, 1),
    }
