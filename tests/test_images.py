"""load_image: every format/mode a user may have becomes HxWx3 uint8 RGB, or a one-line error."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from icapnet.data.images import load_image, load_image_bytes
from icapnet.errors import IcapnetError

RED = (220, 30, 30)


def _save(img: Image.Image, path, **kw) -> object:
    img.save(path, **kw)
    return path


def _check_rgb(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert arr.dtype == np.uint8
    assert arr.shape == (*shape, 3)


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png"), ("BMP", "bmp"),
                                      ("WEBP", "webp"), ("GIF", "gif")])
def test_formats_decode_to_rgb(tmp_path, fmt, ext):
    path = _save(Image.new("RGB", (40, 30), RED), tmp_path / f"a.{ext}", format=fmt)
    arr = load_image(path)
    _check_rgb(arr, (30, 40))
    tolerance = 40 if fmt in {"JPEG", "WEBP", "GIF"} else 0
    assert np.abs(arr.reshape(-1, 3).mean(0) - RED).max() <= tolerance


def test_grayscale_becomes_three_equal_channels(tmp_path):
    path = _save(Image.new("L", (8, 6), 77), tmp_path / "g.png")
    arr = load_image(path)
    _check_rgb(arr, (6, 8))
    assert (arr == 77).all()


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 2), (0, 0, 255, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    arr = load_image(_save(rgba, tmp_path / "t.png"))
    assert tuple(arr[1, 3]) == (255, 255, 255)  # fully transparent -> white, not blue/black
    assert tuple(arr[0, 0]) == (0, 0, 255)
    assert 120 <= arr[0, 1, 0] <= 135  # half black over white is grey


def test_palette_with_transparency_and_la(tmp_path):
    pal = Image.new("P", (3, 3), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.info["transparency"] = 0
    arr = load_image(_save(pal, tmp_path / "p.png", transparency=0))
    assert tuple(arr[0, 0]) == (255, 255, 255)
    assert tuple(arr[1, 1]) == (255, 0, 0)
    la = load_image(_save(Image.new("LA", (2, 2), (0, 0)), tmp_path / "la.png"))
    assert (la == 255).all()


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    arr = load_image(path)
    assert arr[..., 0].mean() > 200 and arr[..., 2].mean() < 50


def test_cmyk_jpeg_and_16_bit_png(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    arr = load_image(_save(cmyk, tmp_path / "c.jpg", format="JPEG"))
    _check_rgb(arr, (8, 8))
    assert arr[..., 0].mean() > 200 and arr[..., 1].mean() < 60
    deep = Image.fromarray(np.array([[65535, 32896, 0, 0]], dtype=np.uint16))
    arr16 = load_image(_save(deep, tmp_path / "d.png"))
    _check_rgb(arr16, (1, 4))
    assert list(arr16[0, :3, 0]) == [255, 128, 0]  # scaled, not clipped to 255


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display = rotate 90 degrees clockwise
    path = _save(img, tmp_path / "rot.jpg", exif=exif, quality=95)
    arr = load_image(path)
    assert arr.shape == (40, 20, 3)  # portrait after rotation
    assert arr[:15, :, 0].mean() > 200  # the red left half is now on top
    assert arr[25:, :, 2].mean() > 200


@pytest.mark.parametrize("content,problem", [
    (b"", "empty"),
    (b"hello, I am text\n", "not a valid image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, ""),
])
def test_bad_files_raise_error_naming_the_path(tmp_path, content, problem):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(IcapnetError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and problem in message
    assert "\n" not in message


def test_truncated_jpeg_is_an_error(tmp_path):
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(IcapnetError, match=r"cut\.jpg: corrupt or truncated"):
        load_image(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(IcapnetError, match=r"nope\.jpg: file not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(IcapnetError, match="is a directory"):
        load_image(tmp_path)


def test_load_image_bytes_uses_the_given_name():
    buf = io.BytesIO()
    Image.new("RGB", (5, 7), RED).save(buf, "PNG")
    _check_rgb(load_image_bytes(buf.getvalue(), "upload.png"), (7, 5))
    with pytest.raises(IcapnetError, match=r"^photo\.jpg: "):
        load_image_bytes(b"GIF89a-not-really", "photo.jpg")


# ------------------------------------------------------------ reduced-size decoding (web)

def _two_tone(size=(3000, 1500)) -> Image.Image:
    img = Image.new("RGB", size, (30, 60, 220))
    img.paste(RED, (0, 0, size[0] // 2, size[1]))  # left half red, right half blue
    return img


@pytest.mark.parametrize("mode,fmt", [
    ("RGB", "JPEG"), ("RGB", "PNG"), ("L", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"),
    ("1", "PNG"), ("CMYK", "JPEG"), ("I;16", "PNG"), ("F", "TIFF"), ("RGB", "WEBP"),
])
def test_reduced_decode_keeps_aspect_and_colours(mode, fmt):
    img = _two_tone()
    img = img.convert("L").convert(mode) if mode in ("I;16", "F") else img.convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    full = load_image_bytes(buffer.getvalue())
    small = load_image_bytes(buffer.getvalue(), max_side=600)
    _check_rgb(full, (1500, 3000))
    assert small.shape[1] == 600 and abs(small.shape[0] - 300) <= 1  # aspect kept
    for (y, x), (ys, xs) in (((750, 700), (150, 140)), ((750, 2300), (150, 460))):
        patch = full[y - 20:y + 20, x - 20:x + 20].reshape(-1, 3).mean(axis=0)
        shrunk = small[ys - 4:ys + 4, xs - 4:xs + 4].reshape(-1, 3).mean(axis=0)
        assert np.abs(patch - shrunk).max() < 12, (mode, fmt, patch, shrunk)


def test_reduced_decode_applies_exif_orientation():
    img = Image.new("RGB", (2000, 1000), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 1000, 1000))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # display = rotate 90 degrees clockwise
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", exif=exif, quality=95)
    arr = load_image_bytes(buffer.getvalue(), max_side=400)
    assert arr.shape == (400, 200, 3)  # portrait after rotation, long side 400
    assert arr[:150, :, 0].mean() > 200 and arr[250:, :, 2].mean() > 200


def test_small_images_are_decoded_exactly_as_without_a_limit():
    buffer = io.BytesIO()
    _two_tone((300, 200)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    np.testing.assert_array_equal(load_image_bytes(data, max_side=300), load_image_bytes(data))


def test_huge_jpeg_is_decoded_small_without_a_full_size_copy(tmp_path):
    """8000 x 8000 JPEG with max_side=1024: peak memory far below the 192 MB of full RGB."""
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "huge.jpg"
    _two_tone((8000, 8000)).save(path, quality=85)
    # VmHWM is this address space's peak RSS (ru_maxrss would include the forking parent's).
    script = (
        "import sys\n"
        "from icapnet.data.images import load_image\n"
        "def peak():\n"
        "    line = [x for x in open('/proc/self/status') if x.startswith('VmHWM')][0]\n"
        "    return int(line.split()[1])\n"
        "base = peak()\n"
        "a = load_image(sys.argv[1], max_side=int(sys.argv[2]))\n"
        "print(a.shape[0], a.shape[1], peak() - base)\n"
    )
    root = Path(__file__).resolve().parents[1]

    def run(max_side: int) -> tuple[int, int, float]:
        out = subprocess.run([sys.executable, "-c", script, str(path), str(max_side)],
                             capture_output=True, text=True, check=True, cwd=root).stdout
        height, width, grown_kb = out.split()
        return int(height), int(width), int(grown_kb) / 1024

    height, width, grown_mb = run(1024)
    assert (height, width) == (1024, 1024)
    assert grown_mb < 40, f"reduced decode grew the process by {grown_mb:.0f} MB"
    assert run(8000)[2] > 150  # the full decode really is that big (the test can fail)
