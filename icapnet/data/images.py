"""Robust image loading: whatever photo a user has becomes an HxWx3 uint8 RGB array.

Cameras and the web produce JPEG/PNG/GIF/BMP/WebP in many modes (grayscale, palette,
transparent, CMYK, 16-bit) with EXIF rotation flags. Training and captioning must see the
same pixels, so both go through :func:`load_image` / :func:`load_image_bytes`. No TensorFlow
here: the web server and dataset tools import it.

``max_side`` decodes a large photo at reduced size for callers that never need more (the
web server: the model sees 224 x 224, the figures at most 640 px). JPEGs are decoded
directly at 1/2 .. 1/8 scale (DCT scaling, ``Image.draft``); other formats are decoded by
Pillow and shrunk in Pillow's own memory (``Image.thumbnail``: an integer ``reduce`` then a
filtered resize), so a full-size HxWx3 array is never made.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from icapnet.errors import IcapnetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
_TRANSPARENT_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def load_image(path: str | Path, max_side: int | None = None) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB with EXIF orientation applied.

    Raises IcapnetError("{path}: ...") for missing, empty, truncated or non-image files so a
    caller can report the path and move on. ``max_side``: see the module docstring.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IcapnetError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise IcapnetError(f"{path}: is a directory, not an image") from None
    except OSError as err:
        raise IcapnetError(f"{path}: cannot read file ({err.strerror or err})") from None
    return load_image_bytes(data, str(path), max_side)


def load_image_bytes(
    data: bytes, name: str = "<upload>", max_side: int | None = None
) -> np.ndarray:
    """Decode image ``data`` (e.g. an upload); ``name`` is used in error messages.

    With ``max_side`` the result's long side is at most ``max_side`` pixels (aspect kept).
    """
    if not data:
        raise IcapnetError(f"{name}: empty file, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Palette images with transparency" notes
            with Image.open(io.BytesIO(data)) as img:
                img.seek(0)  # first frame of animated GIF/WebP
                if max_side and max(img.size) > max_side:
                    img.draft(None, (max_side, max_side))  # JPEG: decode at 1/2..1/8 scale
                img.load()  # decode now so truncation surfaces here, not later
                if max_side and max(img.size) > max_side:
                    img = _shrink(img, max_side)
                img = _orient(img)
                rgb = to_rgb_array(img)
    except IcapnetError:
        raise
    except UnidentifiedImageError:
        raise IcapnetError(f"{name}: not a valid image (unrecognised format)") from None
    except Image.DecompressionBombError as err:
        raise IcapnetError(f"{name}: image too large ({err})") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as err:
        raise IcapnetError(f"{name}: corrupt or truncated image ({err})") from None
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise IcapnetError(f"{name}: image has no pixels")
    return rgb


def _shrink(img: Image.Image, max_side: int) -> Image.Image:
    """Scale a decoded image down to ``max_side`` in Pillow's memory, keeping EXIF for later.

    Palette and bilevel images only resize with nearest-neighbour, so they are first cut to
    about twice the target that way, converted, then filtered down like the others.
    """
    exif = img.info.get("exif")
    if img.mode in ("P", "1"):
        scale = min(1.0, 2 * max_side / max(img.size))
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        coarse = img.resize(size, Image.Resampling.NEAREST)
        transparent = coarse.mode == "P" and "transparency" in coarse.info
        img = coarse.convert("RGBA" if transparent else "RGB" if coarse.mode == "P" else "L")
    elif img.mode in _SIXTEEN_BIT_MODES and img.mode != "I":
        img = img.convert("I")  # resize filters work on 32-bit integers, not on I;16
    img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC, reducing_gap=2.0)
    if exif is not None:
        img.info["exif"] = exif
    return img


def _orient(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation flag; a broken EXIF block must not lose the photo."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF data: keep the pixels as stored
        return img


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to HxWx3 uint8 RGB (transparency composited on white)."""
    mode = img.mode
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _TRANSPARENT_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    elif mode in _SIXTEEN_BIT_MODES or mode == "F":
        img = Image.fromarray(_to_uint8(np.asarray(img)), mode="L")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale 16-bit / 32-bit / float grayscale to 0..255 (Pillow would just clip at 255)."""
    is_float = values.dtype.kind == "f"
    values = np.nan_to_num(values.astype(np.float64))
    top = float(values.max()) if values.size else 0.0
    if is_float and top <= 1.0:
        values = values * 255.0
    elif top > 255.0:
        values = values / 257.0  # 65535 -> 255
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` has an image extension we can decode (used when scanning folders)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
