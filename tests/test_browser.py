"""End to end in real headless Chromium: upload a photo, caption it, see the attention heatmap.

Uses Debian's /usr/bin/chromium through Playwright (no downloaded browser). The screenshot
is saved as test-artifacts/browser.png for people to look at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (apt chromium)"),
]

# Pixels of the overlay canvas the heatmap painted (alpha > 0).
_PAINTED = """(canvas) => {
  if (!canvas.width || !canvas.height) return 0;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
  return painted / (canvas.width * canvas.height);
}"""


def test_upload_caption_and_heatmap(tiny_model_dir: Path, sample_images: list[Path], tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    from icapnet.inference.predictor import Predictor
    from icapnet.web import create_app
    from icapnet.web.server import serve_in_background

    predictor = Predictor.from_dir(tiny_model_dir)
    photo = sample_images[0]
    expected = predictor.caption_bytes(photo.read_bytes(), beam_size=1)
    assert expected.words, "the tiny model should write a caption"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photo.read_bytes()[:60])
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []

    with (
        serve_in_background(create_app(predictor, tiny_model_dir)) as url,
        sync_api.sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
            page.on(
                "console",
                lambda msg: (
                    problems.append(msg.text)
                    if msg.type == "error" and "status of 422" not in msg.text
                    else None
                ),
            )
            page.goto(url + "/")
            # The info section is filled from /api/info.
            page.wait_for_selector("#info-body table")
            info_text = page.text_content("#info-body")
            assert "synthetic" in info_text and "not evaluated yet" in info_text
            assert page.is_disabled("#caption-button")

            page.set_input_files("#file-input", str(photo))
            page.wait_for_function("document.querySelector('#preview').naturalWidth > 0")
            page.focus("#beam-size")
            page.keyboard.press("Home")  # beam 1: greedy, as computed above
            assert page.text_content("#beam-value") == "1"
            page.click("#caption-button")
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)

            assert page.text_content("#caption-text") == expected.caption
            assert page.text_content("#beam-used") == "1"
            assert float(page.text_content("#score")) == pytest.approx(expected.score, abs=1e-3)
            chips = page.locator("#words .word")
            assert chips.all_text_contents() == expected.words
            assert page.locator("#thumbs canvas").count() == len(expected.words)

            # The first word's map is drawn over the photo, covering it smoothly.
            overlay = page.locator("#overlay")
            assert overlay.is_visible()
            box = overlay.bounding_box()
            assert box and box["width"] > 100 and box["height"] > 100
            assert overlay.evaluate(_PAINTED) > 0.9
            first = overlay.evaluate("(c) => c.toDataURL()")
            # Hovering another word redraws the overlay with that word's map.
            last = len(expected.words) - 1
            chips.nth(last).hover()
            page.wait_for_function(
                "(w) => document.querySelector('#stage-caption').textContent.includes(w)",
                arg=f"“{expected.words[last]}”",
            )
            if not np.allclose(expected.attention[0], expected.attention[last], atol=1e-3):
                assert overlay.evaluate("(c) => c.toDataURL()") != first
            assert page.locator("#thumbs canvas").first.evaluate(_PAINTED) > 0.9
            page.screenshot(path=str(ARTIFACTS / "browser.png"), full_page=True)

            # A corrupt photo: the server's 422 message is shown, and the page keeps working.
            page.set_input_files("#file-input", str(broken))
            page.click("#caption-button")
            page.wait_for_selector("#status.error")
            assert "corrupt" in page.text_content("#status")
            assert page.is_hidden("#result")
            page.set_input_files("#file-input", str(photo))
            page.click("#caption-button")
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            assert page.text_content("#caption-text") == expected.caption
        finally:
            browser.close()
    assert not problems, problems
    assert (ARTIFACTS / "browser.png").stat().st_size > 10_000
