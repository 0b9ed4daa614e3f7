"""The page in a real headless Chromium, on a desktop (1280 px) and a phone (400 px, touch).

Uses Debian's /usr/bin/chromium through Playwright (no downloaded browser) against the tiny
model served by uvicorn on 127.0.0.1. Screenshots of every state are kept under
test-artifacts/ for people to look at: browser-desktop.png, browser-phone.png,
browser-rejected.png, browser-broken.png, browser-docs-offline.png, and the downloaded
figures download-attention.png / .gif.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
from PIL import Image

from icapnet.data.images import load_image, load_image_bytes

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
DESKTOP = {"viewport": {"width": 1280, "height": 900}}
PHONE = {"viewport": {"width": 400, "height": 800}, "is_mobile": True, "has_touch": True,
         "device_scale_factor": 2}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (apt chromium)"),
]

# Alpha (0..255) of the overlay canvas at the centre of cell (row, col) of a g x g grid.
_ALPHA_AT = """(canvas, [row, col, grid]) => {
  const x = Math.floor((col + 0.5) * canvas.width / grid);
  const y = Math.floor((row + 0.5) * canvas.height / grid);
  return canvas.getContext("2d").getImageData(x, y, 1, 1).data[3];
}"""
_IN_VIEW = """(selector) => {
  const r = document.querySelector(selector).getBoundingClientRect();
  return r.height > 0 && r.top >= -1 && r.bottom <= window.innerHeight + 1;
}"""


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, evaluated: metrics.json (greedy + beam 3) and a training history."""
    out = tmp_path_factory.mktemp("served") / "tiny-evaluated"
    shutil.copytree(tiny_model_dir, out)
    scores = {"BLEU-1": 0.9, "BLEU-2": 0.8, "BLEU-3": 0.7, "BLEU-4": 0.6, "METEOR": 0.45,
              "ROUGE_L": 0.85, "CIDEr": 4.2, "num_images": 12, "cache": str(out / "cache")}
    metrics = {"test": {"beam1": scores, "beam3": {**scores, "BLEU-4": 0.65}}}
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "history.csv").write_text("epoch,loss,val_loss\n0,3.0,3.2\n1,1.0,1.4\n")
    return out


@pytest.fixture(scope="module")
def predictor(model_dir: Path):
    from icapnet.inference.predictor import Predictor

    return Predictor.from_dir(model_dir)


@pytest.fixture(scope="module")
def url(predictor, model_dir: Path):
    from icapnet.web import create_app
    from icapnet.web.server import serve_in_background

    with serve_in_background(create_app(predictor, model_dir)) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def open_page(browser, url):
    """``open_page(device) -> page`` at the app's root; fails the test on page errors."""
    contexts, problems = [], []

    def opener(device: dict):
        context = browser.new_context(**device)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error"
                and "the server responded with a status of 4" not in msg.text else None)
        page.goto(url + "/")
        page.wait_for_selector("#info-body table")
        return page

    yield opener
    for context in contexts:
        context.close()
    assert not problems, problems


def _expected(predictor, path: Path, beam: int = 1):
    return predictor.caption_images([load_image(path, 1024)], beam_size=beam,
                                    num_candidates=min(beam, 5))[0]


def _set_beam(page, beam: int) -> None:
    page.focus("#beam-size")
    page.keyboard.press("Home")
    for _ in range(beam - 1):
        page.keyboard.press("ArrowRight")
    assert page.text_content("#beam-value") == str(beam)


def _wait_for_scroll_to_settle(page) -> None:
    """The page scrolls smoothly to a result; wait until it stops moving."""
    page.wait_for_function("""() => new Promise((done) => {
      let last = -1, still = 0;
      const tick = () => {
        still = window.scrollY === last ? still + 1 : 0;
        last = window.scrollY;
        if (still >= 5) done(true); else requestAnimationFrame(tick);
      };
      tick();
    })""")


def _download(page, selector: str) -> tuple[str, bytes]:
    with page.expect_download() as info:
        page.click(selector)
    download = info.value
    return download.suggested_filename, Path(download.path()).read_bytes()


def test_desktop_caption_heatmap_candidates_and_downloads(
    open_page, predictor, sample_images: list[Path]
) -> None:
    page = open_page(DESKTOP)
    # The info section is compact: what the model was trained on, a 7-row metrics table.
    assert "synthetic" in page.text_content("#training-data")
    table = page.locator("#metrics-table")
    assert table.locator("thead th").all_text_contents() == ["Metric", "greedy", "beam 3"]
    assert table.locator("tbody th").all_text_contents() == [
        "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]
    assert table.locator("tbody tr").nth(3).locator("td").all_text_contents() == ["0.600", "0.650"]
    assert "cache" not in page.text_content("#info-body")  # no raw dump of metrics.json
    assert page.evaluate("document.documentElement.scrollHeight") < 1500
    assert page.locator("#example-list .example").count() == 4
    assert "Drop a photo" in page.text_content("#drop-title")
    assert page.is_disabled("#caption-button")

    photo = sample_images[0]
    expected = _expected(predictor, photo)
    page.set_input_files("#file-input", str(photo))
    page.wait_for_function("() => document.querySelector('#preview').naturalWidth > 0")
    _set_beam(page, 1)
    page.click("#caption-button")
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    assert page.text_content("#caption-text") == expected.caption
    assert float(page.text_content("#score")) == pytest.approx(expected.score, abs=1e-3)
    assert page.is_visible("#synthetic-note")
    assert "trained on synthetic shapes" in page.text_content("#synthetic-note")
    chips = page.locator("#words .word")
    assert chips.all_text_contents() == [*expected.words, "<end>"]
    assert page.locator("#thumbs canvas").count() == len(expected.words) + 1
    assert page.is_hidden("#candidates-block")  # greedy: one caption, no list

    # The first word's map is drawn over the photo: opaque where it looked most, clear where
    # it looked least (the photo shows through).
    overlay = page.locator("#overlay")
    grid = expected.attention.shape[-1]
    first = expected.attention[0]
    hot = np.unravel_index(np.argmax(first), first.shape)
    cold = np.unravel_index(np.argmin(first), first.shape)
    alpha_hot = overlay.evaluate(_ALPHA_AT, [int(hot[0]), int(hot[1]), grid])
    alpha_cold = overlay.evaluate(_ALPHA_AT, [int(cold[0]), int(cold[1]), grid])
    assert alpha_hot > alpha_cold + 20 and alpha_cold < 40, (alpha_hot, alpha_cold)
    before = overlay.evaluate("(c) => c.toDataURL()")
    last = len(expected.words) - 1
    chips.nth(last).hover()
    page.wait_for_function(
        "(w) => document.querySelector('#stage-caption').textContent.includes(w)",
        arg=f"“{expected.words[last]}”",
    )
    if not np.allclose(expected.attention[0], expected.attention[last], atol=1e-3):
        assert overlay.evaluate("(c) => c.toDataURL()") != before

    # Downloads: caption text, JSON with words/scores/attention, and the server's figures.
    name, text = _download(page, "#download-txt")
    assert name == f"{photo.stem}_caption.txt" and text.decode() == expected.caption + "\n"
    name, raw = _download(page, "#download-json")
    data = json.loads(raw)
    assert name == f"{photo.stem}_caption.json" and data["words"] == expected.words
    np.testing.assert_allclose(data["attention"], expected.attention, atol=1e-4)
    np.testing.assert_allclose(data["end_attention"], expected.end_attention, atol=1e-4)
    assert data["score"] == pytest.approx(expected.score, abs=1e-4)
    name, png = _download(page, "#download-png")
    assert name == f"{photo.stem}_attention.png"
    png_path = ARTIFACTS / "download-attention.png"
    png_path.write_bytes(png)
    with Image.open(png_path) as figure:
        assert figure.info["Caption"] == expected.caption
        assert figure.info["Panels"] == str(len(expected.words) + 2)
    name, gif = _download(page, "#download-gif")
    assert name == f"{photo.stem}_attention.gif"
    (ARTIFACTS / "download-attention.gif").write_bytes(gif)
    with Image.open(ARTIFACTS / "download-attention.gif") as frames:
        assert frames.n_frames == len(expected.words) + 2

    # A wider beam lists its best captions with their scores, best first.
    beam = _expected(predictor, photo, beam=3)
    _set_beam(page, 3)
    page.click("#caption-button")
    page.wait_for_selector("#beam-used:text('3')", timeout=60_000)
    assert page.text_content("#caption-text") == beam.caption
    if len(beam.candidates) > 1:
        rows = page.locator("#candidates tbody tr")
        assert rows.count() == len(beam.candidates)
        assert [rows.nth(i).locator("td").nth(1).text_content()
                for i in range(rows.count())] == [c.caption for c in beam.candidates]
    page.screenshot(path=str(ARTIFACTS / "browser-desktop.png"), full_page=True)


def test_phone_example_scrolls_to_the_result_and_a_tap_switches_the_heatmap(
    open_page, predictor, url
) -> None:
    page = open_page(PHONE)
    page.wait_for_function(
        "() => document.querySelector('#drop-title').textContent.includes('Tap')")
    assert "Drop" not in page.text_content("#drop-title")  # no dropping on a phone
    assert page.locator("#example-list .example").count() == 4
    page.locator("#example-list .example").nth(1).tap()  # an example captions at once
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)
    _wait_for_scroll_to_settle(page)
    # Scrolled to the photo; it, its heatmap and the words are on screen (they were ~800 px
    # apart, and the result below the fold).
    assert page.evaluate("window.scrollY") > 100
    assert abs(page.evaluate("document.querySelector('#stage').getBoundingClientRect().top")) < 2
    assert page.evaluate(_IN_VIEW, "#stage-inner")
    assert page.text_content("#word-hint").startswith("Tap a word")
    words = page.locator("#words .word")
    target = min(2, words.count() - 1)
    assert page.evaluate(_IN_VIEW, f"#words .word:nth-child({target + 1})")
    before = page.locator("#overlay").evaluate("(c) => c.toDataURL()")
    words.nth(target).tap()
    word = words.nth(target).text_content()
    page.wait_for_function(
        "(w) => document.querySelector('#stage-caption').textContent.includes(w)",
        arg=f"“{word}”")
    assert words.nth(target).get_attribute("aria-pressed") == "true"
    assert page.evaluate(_IN_VIEW, "#overlay")  # the heatmap that changed is on screen
    after = page.locator("#overlay").evaluate("(c) => c.toDataURL()")
    caption = page.text_content("#caption-text")
    examples = httpx.get(f"{url}/api/examples").json()["examples"]
    image = load_image_bytes(httpx.get(url + examples[1]["url"]).content, "example", 1024)
    expected = predictor.caption_images([image], beam_size=3, num_candidates=3)[0]
    assert caption == expected.caption
    labels = [*expected.words, "<end>"]
    maps = [*expected.attention, expected.end_attention]
    if not np.allclose(maps[0], maps[target], atol=1e-3):
        assert after != before
    assert labels[target] == word
    page.screenshot(path=str(ARTIFACTS / "browser-phone.png"))  # full_page would end the
    # phone emulation for the capture (Chromium resizes the view), so: what the phone shows


def test_rejected_file_clears_the_selection_and_a_broken_image_has_no_broken_icon(
    open_page, sample_images: list[Path], tmp_path: Path
) -> None:
    page = open_page(PHONE)
    photo = sample_images[0]
    page.set_input_files("#file-input", str(photo))
    page.wait_for_function("() => document.querySelector('#preview').naturalWidth > 0")
    assert page.is_enabled("#caption-button")

    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list, not a photo\n")
    page.set_input_files("#file-input", str(notes))
    page.wait_for_selector("#status.error")
    assert "notes.txt: not an image" in page.text_content("#status")
    assert page.is_disabled("#caption-button")  # the previous photo is no longer selected
    assert page.is_hidden("#stage")
    assert page.evaluate("document.querySelector('#file-input').value") == ""
    assert "Tap to choose" in page.text_content("#drop-title")
    page.screenshot(path=str(ARTIFACTS / "browser-rejected.png"))

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photo.read_bytes()[:60])
    page.set_input_files("#file-input", str(broken))
    page.wait_for_selector("#no-preview:not([hidden])")
    assert page.is_hidden("#preview")  # no broken-image icon, no overlapping alt text
    assert "No preview of broken.jpg" in page.text_content("#no-preview")
    assert page.is_enabled("#caption-button")
    page.click("#caption-button")
    page.wait_for_selector("#status.error")
    assert "broken.jpg: corrupt" in page.text_content("#status")
    assert page.is_hidden("#result")
    page.locator("#status").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "browser-broken.png"))

    page.set_input_files("#file-input", str(photo))  # and the page keeps working
    page.wait_for_selector("#preview:visible")
    page.click("#caption-button")
    page.wait_for_selector("#result:not([hidden])", timeout=60_000)


def test_docs_render_offline(browser, url) -> None:
    """/docs (Swagger UI) needs nothing but this server: every other host is blocked."""
    context = browser.new_context(**DESKTOP)
    outside: list[str] = []
    server = urlparse(url).netloc

    def only_this_server(route) -> None:
        if urlparse(route.request.url).netloc == server:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    try:
        page = context.new_page()
        page.route("**/*", only_this_server)
        page.goto(url + "/docs")
        page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
        assert "icapnet" in page.text_content(".swagger-ui .info .title")
        page.wait_for_selector(".opblock-summary-path")
        paths = page.locator(".opblock-summary-path").all_text_contents()
        assert {"/api/caption", "/api/attention", "/api/info"} <= {p.strip() for p in paths}
        page.screenshot(path=str(ARTIFACTS / "browser-docs-offline.png"))
    finally:
        context.close()
    assert not outside, f"/docs tried to load from other hosts: {outside}"
