"""``python -m icapnet.export --model M --out DIR``: a self-contained TensorFlow SavedModel.

The SavedModel holds everything needed to caption a photo from its file bytes, with no
icapnet (or Keras) code at load time: JPEG/PNG/GIF/BMP decoding, the resize and backbone
preprocessing, the backbone (VGG16 up to the recorded layer), the captioner, the decoding
loop (greedy / beam search, the same graph code as the Python Predictor) and the vocabulary
as a ``tf.lookup`` table.

    loaded = tf.saved_model.load(DIR)
    out = loaded.caption(tf.constant([jpeg_bytes]))                  # defaults
    out = loaded.caption(images, beam_size=tf.constant(3), max_length=tf.constant(30))
    sig = loaded.signatures["serving_default"]                        # images only
    sig = loaded.signatures["caption_with_options"]       # images, beam_size, max_length

Outputs: ``captions`` [N] string, ``words`` [N, T] string ("" after the last word),
``lengths`` [N] int32 (number of words), ``scores`` [N] float32, ``attention``
[N, T, grid, grid] float32 (zeros where ``words`` is ""). A batch with a file that is not an
image fails as a whole (InvalidArgumentError); EXIF rotation is not applied (the Python path
applies it).
``beam_size`` above 50 (or above the tokens the model can write) and ``max_length`` above
100 fail the same way, before anything is allocated.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from icapnet import cli, fs
from icapnet.config import DEFAULT_BEAM
from icapnet.errors import IcapnetError, run_cli
from icapnet.model.store import resolve_model

EXPORT_INFO_FILE = "icapnet_export.json"


def build_serving_module(
    captioner: Any,
    extractor: Any,
    words: Sequence[str],
    image_size: int,
    max_length: int,
    beam_size: int = DEFAULT_BEAM,
    length_penalty: float = 0.0,
) -> Any:
    """A ``tf.Module`` with ``caption(images, beam_size, max_length)`` (see module doc)."""
    import tensorflow as tf

    from icapnet.config import MAX_CAPTION_LENGTH
    from icapnet.data.text import Vocabulary
    from icapnet.inference.decoding import (
        assert_at_most,
        beam_graph,
        greedy_graph,
        max_beam_size,
    )
    from icapnet.model.backbone import resize_images

    regions = int(extractor.output.shape[1])
    grid = math.isqrt(regions)
    if grid * grid != regions:
        raise IcapnetError(f"{extractor.name}: {regions} regions do not form a square grid")
    size = int(image_size)
    alpha = float(length_penalty)
    beam_limit = max_beam_size(len(words))
    end_id, pad_id = Vocabulary.end_id, Vocabulary.pad_id

    def decode_one(data: tf.Tensor) -> tf.Tensor:
        """Encoded bytes -> [size, size, 3] float32 0..255, transparency on white (as PIL)."""
        image = tf.io.decode_image(data, expand_animations=False)
        channels = tf.shape(image)[-1]
        pixels = tf.cast(image, tf.float32)
        rgb = tf.cond(
            channels >= 3, lambda: pixels[..., :3], lambda: tf.tile(pixels[..., :1], [1, 1, 3])
        )
        has_alpha = tf.logical_or(tf.equal(channels, 2), tf.equal(channels, 4))
        opacity = tf.cond(
            has_alpha, lambda: pixels[..., -1:] / 255.0, lambda: tf.ones_like(pixels[..., :1])
        )
        rgb = tf.round(rgb * opacity + 255.0 * (1.0 - opacity))
        return tf.reshape(resize_images(rgb[None], size)[0], [size, size, 3])

    class CaptionModule(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="icapnet_captioner")
            self.extractor = extractor
            self.captioner = captioner
            self.vocabulary = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.range(len(words), dtype=tf.int64), tf.constant(list(words), tf.string)
                ),
                default_value="",
            )
            self.default_beam_size = tf.constant(int(beam_size), tf.int32)
            self.default_max_length = tf.constant(int(max_length), tf.int32)
            self.grid = tf.constant(grid, tf.int32)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.string, name="images"),
                tf.TensorSpec([], tf.int32, name="beam_size"),
                tf.TensorSpec([], tf.int32, name="max_length"),
            ]
        )
        def caption_with_options(
            self, images: tf.Tensor, beam_size: tf.Tensor, max_length: tf.Tensor
        ) -> dict[str, tf.Tensor]:
            # Out-of-bounds requests fail as InvalidArgumentError (the process lives on).
            beam_size = assert_at_most(beam_size, beam_limit, "beam_size")
            max_length = assert_at_most(max_length, MAX_CAPTION_LENGTH, "max_length")
            pixels = tf.map_fn(
                decode_one, images, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32)
            )
            features = self.extractor(pixels, training=False)
            result = tf.cond(
                beam_size <= 1,
                lambda: tuple(greedy_graph(self.captioner, features, max_length)),
                lambda: tuple(
                    beam_graph(self.captioner, features, beam_size, max_length, alpha)
                ),
            )
            tokens, scores, attention, _ = result
            is_word = tf.logical_and(tf.not_equal(tokens, end_id), tf.not_equal(tokens, pad_id))
            found = self.vocabulary.lookup(tf.cast(tokens, tf.int64))
            words_out = tf.where(is_word, found, "")
            captions = tf.strings.strip(tf.strings.reduce_join(words_out, axis=1, separator=" "))
            attention = tf.where(is_word[:, :, None], attention, 0.0)
            shape = tf.shape(tokens)
            return {
                "captions": captions,
                "words": words_out,
                "lengths": tf.reduce_sum(tf.cast(is_word, tf.int32), axis=1),
                "scores": tf.cast(scores, tf.float32),
                "attention": tf.reshape(attention, [shape[0], shape[1], grid, grid]),
            }

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            return self.caption_with_options(
                images, self.default_beam_size, self.default_max_length
            )

        @tf.function
        def caption(
            self,
            images: tf.Tensor,
            beam_size: tf.Tensor | None = None,
            max_length: tf.Tensor | None = None,
        ) -> dict[str, tf.Tensor]:
            """Python-style entry point with optional arguments (traced for 3 call forms)."""
            beam = self.default_beam_size if beam_size is None else beam_size
            length = self.default_max_length if max_length is None else max_length
            return self.caption_with_options(images, beam, length)

    module = CaptionModule()
    strings = tf.TensorSpec([None], tf.string)
    scalar = tf.TensorSpec([], tf.int32)
    # Trace the optional-argument forms so they survive saving.
    module.caption.get_concrete_function(strings)
    module.caption.get_concrete_function(strings, scalar)
    module.caption.get_concrete_function(strings, scalar, scalar)
    module.caption.get_concrete_function(strings, max_length=scalar)
    return module


def export_saved_model(
    model_dir: str | Path,
    out_dir: str | Path,
    feature_weights: str | None = None,
    beam_size: int = DEFAULT_BEAM,
    max_length: int | None = None,
    length_penalty: float = 0.0,
) -> Path:
    """Export ``model_dir`` to ``out_dir`` (written atomically)."""
    import tensorflow as tf

    from icapnet.inference.decoding import check_decoding
    from icapnet.inference.predictor import Predictor
    from icapnet.io import atomic_path, remove_stale_temps

    model_dir, out_dir = fs.path(model_dir), fs.path(out_dir)
    check_decoding(beam_size, max_length or 1, None, "--beam", "--max-length")
    if out_dir.resolve() == model_dir.resolve():
        raise IcapnetError(f"{out_dir}: choose an export folder other than the model directory")
    if out_dir.exists() and not out_dir.is_dir():
        raise IcapnetError(f"{out_dir}: exists and is not a directory")
    _log(f"loading {model_dir}")
    predictor = Predictor.from_dir(model_dir, feature_weights)
    config = predictor.config
    length = int(max_length or config.model.max_length)
    check_decoding(beam_size, length, len(predictor.vocab), "--beam", "--max-length")
    _log("building the serving graph (backbone + decoder + vocabulary)")
    module = build_serving_module(
        predictor.model,
        predictor.extractor,
        predictor.vocab.words,
        config.features.image_size,
        length,
        beam_size,
        length_penalty,
    )
    signatures = {
        "serving_default": module.serve.get_concrete_function(),
        "caption_with_options": module.caption_with_options.get_concrete_function(),
    }
    info = {
        "format": "icapnet-savedmodel-1",
        "model_dir": str(model_dir.resolve()),
        "default_beam_size": beam_size,
        "default_max_length": length,
        "length_penalty": length_penalty,
        "vocab_size": len(predictor.vocab),
        "config": config.to_dict(),
    }
    _log(f"saving SavedModel to {out_dir}")
    remove_stale_temps(out_dir.parent, targets=[out_dir.name])  # of a killed export
    with atomic_path(out_dir) as tmp:
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        (extra / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", "utf-8")
    return out_dir


def _log(message: str) -> None:
    print(f"export: {message}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m icapnet.export",
        description="Export a trained model as a TensorFlow SavedModel that captions image bytes.",
    )
    cli.add_model_flag(parser, required=True)
    parser.add_argument("--out", required=True, type=fs.path,
                        help="SavedModel output directory (a folder or a gs:// ... URL)")
    cli.add_decoding_flags(parser, beam_help="default beam size baked in (1 = greedy)",
                           length_penalty=True, feature_weights=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.check_decoding_flags(args)
    model_dir = resolve_model(args.model)
    cli.start()
    out = export_saved_model(
        model_dir,
        args.out,
        feature_weights=args.feature_weights,
        beam_size=args.beam,
        max_length=args.max_length,
        length_penalty=args.length_penalty,
    )
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
