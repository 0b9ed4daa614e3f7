"""Issue 12 #10: the real server keeps its memory bounded under a burst of huge photos.

``python -m icapnet.serve`` runs in a subprocess (its own allocator, threads and TensorFlow,
exactly as deployed). After warm-up we upload twenty 8000 x 8000 images (PNG and JPEG, four
at a time) and read the server's resident memory from /proc: when idle again it must be at
most 1.3x what it was after warm-up. Before reduced-size decoding one such PNG moved RSS
from 0.8 to 1.9 GB for good.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
SIDE = 8000
UPLOADS = 20
PARALLEL = 4
MAX_GROWTH = 1.3

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc"),
]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def _huge(fmt: str) -> bytes:
    """An 8000 x 8000 photo-like scene that compresses well (as the issue's 187 KB PNG)."""
    image = Image.new("RGB", (SIDE, SIDE), (90, 140, 60))
    draw = ImageDraw.Draw(image)
    draw.ellipse((1000, 1000, 5000, 5000), fill=(200, 30, 30))
    draw.rectangle((5500, 5500, 7500, 7500), fill=(30, 30, 200))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _start_server(model_dir: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "icapnet.serve", "--model", str(model_dir), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT,
    )
    found: list[str] = []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            match = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
            if match:
                found.append(match.group(1))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(180)
    if not found:
        proc.kill()
        raise AssertionError("the server did not start within 180 s")
    return proc, found[0]


def test_rss_stays_bounded_after_twenty_8000px_uploads(tiny_model_dir: Path, sample_images):
    uploads = [("huge.png", _huge("PNG"), "image/png"), ("huge.jpg", _huge("JPEG"), "image/jpeg")]
    proc, url = _start_server(tiny_model_dir)
    samples: list[float] = []
    stop = threading.Event()
    try:
        small = sample_images[0].read_bytes()
        for beam in (1, 3):  # warm-up as a first visitor would: one photo, greedy and beam
            files = {"image": ("small.jpg", small, "image/jpeg")}
            response = httpx.post(f"{url}/api/caption", files=files,
                                  data={"beam_size": str(beam)}, timeout=60)
            assert response.status_code == 200, response.text
        time.sleep(1.0)
        warm = _rss_mb(proc.pid)

        def watch() -> None:
            while not stop.is_set():
                samples.append(_rss_mb(proc.pid))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()

        def send(i: int) -> int:
            name, data, kind = uploads[i % 2]
            response = httpx.post(f"{url}/api/caption", files={"image": (name, data, kind)},
                                  timeout=300)
            return response.status_code

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            codes = list(pool.map(send, range(UPLOADS)))
        seconds = time.perf_counter() - started
        time.sleep(1.0)  # idle again
        after = _rss_mb(proc.pid)
        stop.set()
        watcher.join(5)
        assert httpx.get(f"{url}/api/health", timeout=10).status_code == 200
    finally:
        stop.set()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert codes == [200] * UPLOADS
    report = {"warm_rss_mb": round(warm, 1), "peak_rss_mb": round(max(samples), 1),
              "idle_rss_mb": round(after, 1), "ratio": round(after / warm, 3),
              "uploads": UPLOADS, "parallel": PARALLEL, "seconds": round(seconds, 1),
              "png_bytes": len(uploads[0][1]), "jpeg_bytes": len(uploads[1][1])}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "serve-memory.json").write_text(json.dumps(report, indent=1) + "\n")
    print(report)
    assert after <= MAX_GROWTH * warm, report
