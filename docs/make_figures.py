"""Make the README's pictures with the project's own code: an attention figure and the page.

    python docs/make_figures.py --model saved_models/demo --image runs/demo/data/Images/X.jpg

* ``docs/attention.png``: ``icapnet.plots.attention_figure`` (the renderer behind
  ``caption --attention-dir``) for ``--image``;
* ``docs/page.png``: the web page (``icapnet.web.create_app`` served on 127.0.0.1) in
  headless Chromium at 1280 px after captioning the same photo.

Both are scaled down and stored with a colour palette so the repository stays small.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def small_png(data: bytes, out: Path, width: int | None = None, colors: int = 256) -> Path:
    """Scale to ``width`` (keeping the aspect) and store with a ``colors`` palette."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if width and image.width > width:
        image = image.resize((width, round(image.height * width / image.width)),
                             Image.Resampling.LANCZOS)
    image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT,
                   dither=Image.Dither.NONE).save(out, optimize=True)
    return out


def attention_png(model: Path, photo: Path, out: Path, beam: int) -> str:
    from icapnet.data.images import load_image
    from icapnet.inference.predictor import Predictor
    from icapnet.plots.attention import attention_figure
    from icapnet.plots.render import figure_bytes

    image = load_image(photo)
    result = Predictor.from_dir(model).caption_images([image], beam_size=beam)[0]
    fig = attention_figure(image, result.words, result.attention, result.caption,
                           result.end_attention, columns=5)
    small_png(figure_bytes(fig), out, width=840)
    return result.caption


def page_png(model: Path, photo: Path, out: Path, beam: int) -> None:
    from playwright.sync_api import sync_playwright

    from icapnet.inference.predictor import Predictor
    from icapnet.web import create_app
    from icapnet.web.server import serve_in_background

    app = create_app(Predictor.from_dir(model), model)
    with serve_in_background(app) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url + "/")
            page.wait_for_selector("#info-body table")
            page.set_input_files("#file-input", str(photo))
            page.wait_for_function("document.querySelector('#preview').naturalWidth > 0")
            page.fill("#beam-size", str(beam))
            page.dispatch_event("#beam-size", "input")
            page.click("#caption-button")
            page.wait_for_selector("#result:not([hidden])", timeout=120_000)
            words = page.locator("#words .word")
            words.nth(min(3, words.count() - 1)).click()
            page.mouse.move(0, 0)
            page.evaluate("window.scrollTo(0, 0)")
            shot = page.screenshot(clip={"x": 0, "y": 0, "width": 1280, "height": 1000})
        finally:
            browser.close()
    small_png(shot, out, width=960)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "demo" / "model")
    parser.add_argument("--image", type=Path, required=True, help="the photo to show")
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    caption = attention_png(args.model, args.image, args.out / "attention.png", args.beam)
    page_png(args.model, args.image, args.out / "page.png", args.beam)
    for name in ("attention.png", "page.png"):
        print(f"{args.out / name}: {(args.out / name).stat().st_size // 1024} KB")
    print(f"caption: {caption}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
