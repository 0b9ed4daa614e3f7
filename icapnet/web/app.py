"""The FastAPI app: a one-page captioning UI plus the JSON API it uses.

The model is loaded once by the caller and handed in (``create_app(predictor, model_dir)``),
so tests can serve a tiny model and the CLI a real one. Captioning runs in a worker thread
behind a lock: the event loop keeps answering (health, info, static files) while a photo is
being captioned, and the TensorFlow model never sees two calls at once.
"""

from __future__ import annotations

import io
import logging
import math
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field

from icapnet import __version__
from icapnet.errors import IcapnetError
from icapnet.layout import read_metrics
from icapnet.web.info import model_info
from icapnet.web.upload import UploadError, format_size, parse_int_field, read_image_upload

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_BEAM_SIZE = 10
MAX_PIXELS = 64_000_000  # a 64-megapixel photo decodes to ~200 MB of RGB
_PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
log = logging.getLogger("icapnet.serve")


class CaptionPredictor(Protocol):
    """What the app needs from ``icapnet.inference.predictor.Predictor``."""

    def caption_bytes(
        self, data: bytes, beam_size: int = 1, max_length: int | None = None
    ) -> Any: ...


class CaptionResponse(BaseModel):
    caption: str = Field(description="The sentence the model wrote.")
    words: list[str] = Field(description="The caption's words, one per attention map.")
    score: float = Field(
        description="Log-probability of the caption (length-normalised for beam > 1)."
    )
    attention: list[list[list[float]]] = Field(
        description="Attention over the g x g image regions for each decoding step: [T][g][g]."
    )
    beam_size: int
    elapsed_ms: float = Field(description="Time spent captioning on the server.")


class ErrorResponse(BaseModel):
    detail: str = Field(description="One-line explanation of what was wrong with the request.")


class HealthResponse(BaseModel):
    status: str
    model: str
    version: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed upload: missing, empty or not a file."},
    413: {"model": ErrorResponse, "description": "Upload larger than the server's limit."},
    415: {"model": ErrorResponse, "description": "Not multipart/form-data, or not an image."},
    422: {"model": ErrorResponse, "description": "Corrupt image, or beam_size out of range."},
}


def create_app(
    predictor: CaptionPredictor,
    model_dir: str | Path,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_beam_size: int = DEFAULT_MAX_BEAM_SIZE,
) -> FastAPI:
    """Build the web app around an already-loaded predictor and the directory it came from."""
    model_dir = Path(model_dir)
    info = model_info(model_dir)  # fail at startup, not on the first visitor, if it is broken
    lock = threading.Lock()
    app = FastAPI(
        title="icapnet",
        version=__version__,
        description=(
            "Caption a photo and see where the model looked for each word. "
            f"Serving model '{info['name']}'."
        ),
    )
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
            {"detail": f"internal error: {type(err).__name__}; see the server log"}, status_code=500
        )

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            headers={"Content-Security-Policy": _PAGE_CSP, "Cache-Control": "no-cache"},
        )

    @app.get("/api/health", response_model=HealthResponse, tags=["service"])
    async def health() -> dict[str, str]:
        """Liveness check: the model is loaded and the server answers."""
        return {"status": "ok", "model": info["name"], "version": __version__}

    @app.get("/api/info", tags=["service"])
    async def get_info() -> dict[str, Any]:
        """The served model: architecture, training data, vocabulary size and test metrics."""
        metrics = read_metrics(model_dir)  # re-read: evaluation may finish while serving
        fresh = model_info(model_dir) if metrics != info["metrics"] else info
        return {
            **fresh,
            "limits": {
                "max_upload_bytes": max_upload_bytes,
                "max_upload": format_size(max_upload_bytes),
                "max_beam_size": max_beam_size,
            },
        }

    @app.post(
        "/api/caption",
        response_model=CaptionResponse,
        responses=_ERRORS,
        tags=["captioning"],
        openapi_extra={"requestBody": _request_body_schema(max_upload_bytes, max_beam_size)},
    )
    async def caption(request: Request) -> dict[str, Any]:
        """Caption an uploaded photo (multipart field ``image``, optional ``beam_size``)."""
        upload = await read_image_upload(request, max_upload_bytes)
        beam_size = parse_int_field(upload.fields, "beam_size", 1, 1, max_beam_size)
        _check_is_image(upload.data, upload.filename)

        def run() -> Any:
            with lock:
                return predictor.caption_bytes(upload.data, beam_size=beam_size)

        started = time.perf_counter()
        try:
            result = await to_thread.run_sync(run)
        except IcapnetError as err:
            raise UploadError(422, _name_upload(str(err), upload.filename)) from None
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        return _result_json(result, beam_size, elapsed_ms)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _check_is_image(data: bytes, filename: str) -> None:
    """Tell "not an image at all" (415) apart from "an image we cannot decode" (422) cheaply.

    Only the header is parsed here; the predictor decodes the pixels and reports corruption.
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


def _name_upload(message: str, filename: str) -> str:
    """Predictor errors name the bytes "<upload>"; the user knows their file by its name."""
    for placeholder in ("<upload>", "<bytes>"):
        if message.startswith(placeholder):
            return filename + message[len(placeholder) :]
    return f"{filename}: {message}"


def _result_json(result: Any, beam_size: int, elapsed_ms: float) -> dict[str, Any]:
    attention = np.asarray(result.attention, dtype=np.float32)
    if attention.ndim == 2:  # [T, R] with R a square number of regions
        side = math.isqrt(attention.shape[1])
        attention = attention.reshape(attention.shape[0], side, side)
    attention = np.nan_to_num(attention, nan=0.0, posinf=0.0, neginf=0.0)
    score = float(result.score)
    return {
        "caption": str(result.caption),
        "words": [str(word) for word in result.words],
        "score": score if math.isfinite(score) else -1e30,  # JSON has no infinities
        "attention": np.round(attention, 5).tolist(),
        "beam_size": beam_size,
        "elapsed_ms": round(elapsed_ms, 1),
    }


def _request_body_schema(max_upload_bytes: int, max_beam_size: int) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "binary",
                            "description": (
                                "The photo (JPEG, PNG, GIF, BMP, WebP or TIFF), at most "
                                f"{format_size(max_upload_bytes)}."
                            ),
                        },
                        "beam_size": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": max_beam_size,
                            "default": 1,
                            "description": "Beam width; 1 is greedy decoding.",
                        },
                    },
                }
            }
        },
    }
