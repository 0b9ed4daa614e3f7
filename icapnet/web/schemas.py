"""The shapes of the JSON API, for FastAPI's validation and the OpenAPI page at /docs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from icapnet.config import DEFAULT_BEAM
from icapnet.web.upload import format_size

MAX_CANDIDATES = 5  # beam captions listed in a response (and on the page)
FIGURE_FORMATS = {"png": "image/png", "gif": "image/gif"}


class CandidateResponse(BaseModel):
    caption: str
    score: float = Field(description="Log-probability (length-normalised for beam > 1).")


class CaptionResponse(BaseModel):
    caption: str = Field(description="The sentence the model wrote.")
    words: list[str] = Field(description="The caption's words, one per attention map.")
    score: float = Field(
        description="Log-probability of the caption (length-normalised for beam > 1)."
    )
    attention: list[list[list[float]]] = Field(
        description="Attention over the g x g image regions for each word: [T][g][g]."
    )
    end_attention: list[list[float]] | None = Field(
        default=None,
        description="Attention of the step that wrote <end> ([g][g]); null if the caption "
        "was cut at the maximum length.",
    )
    candidates: list[CandidateResponse] = Field(
        default_factory=list,
        description=f"The beam's best captions, best first (at most {MAX_CANDIDATES}); the "
        "first is this caption.",
    )
    beam_size: int
    elapsed_ms: float = Field(description="Time spent captioning on the server.")


class ErrorResponse(BaseModel):
    detail: str = Field(description="One-line explanation of what was wrong with the request.")


class HealthResponse(BaseModel):
    status: str
    model: str
    version: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed upload: missing, empty or not a file."},
    413: {"model": ErrorResponse, "description": "Upload larger than the server's limit."},
    415: {"model": ErrorResponse, "description": "Not multipart/form-data, or not an image."},
    422: {"model": ErrorResponse, "description": "Corrupt image, or a form field out of range."},
}


def request_body_schema(
    max_upload_bytes: int, max_beam_size: int, figure: bool = False
) -> dict[str, Any]:
    properties: dict[str, Any] = {
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
            "default": min(DEFAULT_BEAM, max_beam_size),
            "description": "Beam width; 1 is greedy decoding.",
        },
    }
    if figure:
        properties["format"] = {
            "type": "string",
            "enum": list(FIGURE_FORMATS),
            "default": "png",
            "description": "png: every word side by side; gif: one word per frame.",
        }
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["image"], "properties": properties}
            }
        },
    }
