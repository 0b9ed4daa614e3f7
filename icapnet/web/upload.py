"""Read one multipart image upload without ever holding more than the size limit.

Frameworks usually spool the whole request body before a handler sees it, so a 5 GB upload
would fill the disk before being refused. Here the body is counted while it streams: a
declared Content-Length over the limit is refused before reading anything, and a body that
turns out larger (chunked, or lying headers) is cut off as soon as it passes the limit.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

# Room for the multipart boundaries, part headers and the small form fields.
MULTIPART_OVERHEAD = 64 * 1024
_INTEGER = re.compile(r"\s*\+?\d{1,6}\s*")


class UploadError(Exception):
    """A request the client must fix; carries the HTTP status and a one-line message."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass
class Upload:
    filename: str
    content_type: str
    data: bytes
    fields: dict[str, str]


def format_size(num_bytes: int) -> str:
    """Human size for messages: 10 MB, 512 KB, 37 bytes."""
    if num_bytes >= 1024 * 1024:
        return f"{num_bytes / (1024 * 1024):.3g} MB"
    if num_bytes >= 1024:
        return f"{num_bytes / 1024:.3g} KB"
    return f"{num_bytes} bytes"


def too_large(max_bytes: int) -> UploadError:
    return UploadError(413, f"upload too large: the limit is {format_size(max_bytes)}")


async def read_image_upload(request: Request, max_bytes: int, field: str = "image") -> Upload:
    """Parse ``multipart/form-data`` with one file ``field`` of at most ``max_bytes`` bytes."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UploadError(
            415,
            f"expected a multipart/form-data request with an '{field}' file field, "
            f"got {content_type or 'no content type'}",
        )
    max_body = max_bytes + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_body:
        raise too_large(max_bytes)

    async def limited_body() -> AsyncGenerator[bytes, None]:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_body:
                raise too_large(max_bytes)
            yield chunk

    parser = MultiPartParser(
        request.headers, limited_body(), max_files=2, max_fields=16, max_part_size=8 * 1024
    )
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise UploadError(400, f"malformed multipart upload: {err.message}") from None

    try:
        return await _collect(form.multi_items(), field, max_bytes)
    finally:
        await form.close()


async def _collect(items: list[tuple[str, str | UploadFile]], field: str, max_bytes: int) -> Upload:
    files = [value for key, value in items if key == field]
    if not files:
        raise UploadError(400, f"no '{field}' file in the upload: send the photo as '{field}'")
    if len(files) > 1:
        raise UploadError(400, f"send exactly one '{field}' file, got {len(files)}")
    upload = files[0]
    if isinstance(upload, str):
        raise UploadError(400, f"'{field}' must be a file upload, not a text field")
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    filename = (upload.filename or "upload").replace("\n", " ").strip()[:200] or "upload"
    if not data:
        raise UploadError(400, f"{filename}: empty upload (0 bytes)")
    fields = {key: value for key, value in items if isinstance(value, str) and key != field}
    return Upload(filename, upload.content_type or "", data, fields)


def parse_int_field(fields: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer form field in [low, high]; anything else is the client's error (422)."""
    raw = fields.get(name)
    if raw is None or raw.strip() == "":
        return default
    if not _INTEGER.fullmatch(raw) or not low <= int(raw) <= high:
        shown = raw if len(raw) <= 20 else raw[:20] + "..."
        raise UploadError(422, f"{name} must be a whole number from {low} to {high}, got '{shown}'")
    return int(raw)


def parse_choice_field(fields: dict[str, str], name: str, default: str, choices: tuple) -> str:
    """A text form field that must be one of ``choices`` (case-insensitive); else 422."""
    raw = fields.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        shown = raw if len(raw) <= 20 else raw[:20] + "..."
        raise UploadError(422, f"{name} must be one of {', '.join(choices)}, got '{shown}'")
    return value
