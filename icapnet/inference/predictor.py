"""Predictor: a trained model directory -> captions and attention maps for new photos.

Loads the captioner, its vocabulary and the backbone it was trained with (``config.features``)
once, then captions images, files or uploaded bytes. Images are resized exactly as the
feature cache did (``icapnet.model.backbone.extract_features``) and go through the backbone in
batches. A lock serialises the TensorFlow calls, so one Predictor can serve a threaded web
server.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from icapnet import fs
from icapnet.config import DEFAULT_BEAM, RANDOM_BACKBONE, Config
from icapnet.data.text import Vocabulary
from icapnet.errors import IcapnetError
from icapnet.inference.decoding import (
    END_ID,
    BeamCandidates,
    DecodeResult,
    beam_candidates,
    check_decoding,
    decode,
)


@dataclass
class Candidate:
    """One of the beam's finished hypotheses (the page lists them with their scores)."""

    caption: str
    words: list[str]
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"caption": self.caption, "words": list(self.words), "score": float(self.score)}


@dataclass
class CaptionResult:
    """One caption. ``attention[i]`` is the ``grid x grid`` map used for ``words[i]``.

    ``words`` excludes ``<end>``; ``score`` is the decoder's sum of log-probabilities
    (length-penalised for beam search with a penalty). ``end_attention`` is the map of the
    step that wrote ``<end>`` (None when the caption was cut at ``max_length``): figures show
    it as a last panel. ``candidates`` holds the beam's best captions, best first (this one
    is ``candidates[0]``), when they were asked for.
    """

    caption: str
    words: list[str]
    score: float
    attention: np.ndarray  # [len(words), grid, grid] float32
    end_attention: np.ndarray | None = None  # [grid, grid] float32
    candidates: list[Candidate] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"caption": self.caption, "words": list(self.words), "score": float(self.score)}


def _one_result(
    tokens: np.ndarray, score: float, attention: np.ndarray, vocab: Vocabulary
) -> CaptionResult:
    """One decoded hypothesis (numpy rows) -> CaptionResult with its ``<end>`` map."""
    words = vocab.tokens(tokens)
    regions = attention.shape[-1]
    grid = math.isqrt(regions)
    shape = (grid, grid) if grid * grid == regions else (regions,)
    maps = attention[: len(words)].astype(np.float32).reshape(len(words), *shape)
    ended = len(words) < len(tokens) and int(tokens[len(words)]) == END_ID
    end_map = attention[len(words)].astype(np.float32).reshape(shape) if ended else None
    return CaptionResult(" ".join(words), words, float(score), maps, end_map)


def results_from_decode(result: DecodeResult, vocab: Vocabulary) -> list[CaptionResult]:
    """Turn a batched :class:`DecodeResult` into per-image :class:`CaptionResult` objects."""
    res = result.to_numpy()
    return [
        _one_result(tokens, score, attention, vocab)
        for tokens, score, attention in zip(res.tokens, res.scores, res.attention, strict=True)
    ]


def results_from_candidates(result: BeamCandidates, vocab: Vocabulary) -> list[CaptionResult]:
    """Per image: the best candidate as a CaptionResult, all valid ones in ``.candidates``."""
    res = result.to_numpy()
    out: list[CaptionResult] = []
    for tokens, scores, attention in zip(res.tokens, res.scores, res.attention, strict=True):
        best = _one_result(tokens[0], scores[0], attention[0], vocab)
        for j, (row, score) in enumerate(zip(tokens, scores, strict=True)):
            if j == 0 or np.isfinite(score):
                words = vocab.tokens(row)
                best.candidates.append(Candidate(" ".join(words), words, float(score)))
        out.append(best)
    return out


class Predictor:
    """Captions photos with a trained model directory (thread-safe; load once, reuse)."""

    def __init__(
        self,
        model: Any,
        vocab: Vocabulary,
        config: Config,
        extractor: Any,
        model_dir: Path | None = None,
    ) -> None:
        self.model = model
        self.vocab = vocab
        self.config = config
        self.extractor = extractor
        self.model_dir = model_dir
        self.image_size = int(config.features.image_size)
        self.batch_size = 16
        self._lock = threading.Lock()
        self._tracing: threading.Thread | None = None

    @classmethod
    def from_dir(cls, model_dir: str | Path, feature_weights: str | None = None,
                 trace_beam: int | None = None) -> Predictor:
        """Load ``model_dir`` and the backbone recorded in its config (or ``feature_weights``).

        ``trace_beam``: start tracing that beam's decode graph in a thread as soon as the
        captioner's variables exist, while its weights and the backbone load and the backbone
        runs (what a cold one-photo caption waits for); the first decode waits for it.
        """
        from icapnet.model.backbone import build_feature_extractor
        from icapnet.model.store import load_model_dir

        model_dir = fs.path(model_dir)
        tracing: threading.Thread | None = None

        def start_tracing(model: Any) -> None:
            from icapnet.inference.decoding import trace

            nonlocal tracing
            tracing = threading.Thread(target=trace, args=(model, int(trace_beam)),
                                       name="icapnet-trace", daemon=True)
            tracing.start()

        model, vocab, config = load_model_dir(
            model_dir, on_built=None if trace_beam is None else start_tracing)
        if feature_weights is not None:
            config = dataclasses.replace(
                config, features=dataclasses.replace(config.features, weights=str(feature_weights),
                                                     random_init=RANDOM_BACKBONE)
            )
        try:
            extractor = build_feature_extractor(config.features)
        except IcapnetError as err:
            raise IcapnetError(f"{model_dir}: {err}") from None
        predictor = cls(model, vocab, config, extractor, model_dir)
        predictor._tracing = tracing
        return predictor

    def _traced(self) -> None:
        """Wait for the decode graph a background trace is building (see ``from_dir``)."""
        if self._tracing is not None:
            self._tracing.join()
            self._tracing = None

    @property
    def max_length(self) -> int:
        return int(self.config.model.max_length)

    def _check(self, beam_size: int, max_length: int | None) -> int:
        """The length to decode with; beam and length out of bounds are an IcapnetError."""
        length = self.max_length if max_length is None else int(max_length)
        check_decoding(beam_size, length, len(self.vocab))
        return length

    def decode_features(
        self,
        features: np.ndarray,
        beam_size: int = DEFAULT_BEAM,
        max_length: int | None = None,
        length_penalty: float = 0.0,
    ) -> DecodeResult:
        """Decode region features [B, R, C] (e.g. from the cache) -> numpy DecodeResult."""
        length = self._check(beam_size, max_length)
        self._traced()
        with self._lock:
            result = decode(self.model, np.asarray(features, np.float32), int(beam_size),
                            length, length_penalty)
            return result.to_numpy()

    def caption_features(
        self,
        features: np.ndarray,
        beam_size: int = DEFAULT_BEAM,
        max_length: int | None = None,
        length_penalty: float = 0.0,
        num_candidates: int = 1,
    ) -> list[CaptionResult]:
        """Captions for precomputed region features [B, R, C] (evaluation uses the cache).

        ``num_candidates > 1`` with a beam also fills each result's ``candidates`` with the
        beam's best finished captions (at most ``beam_size``); the caption itself is the same.
        """
        if int(num_candidates) > 1 and int(beam_size) > 1:
            length = self._check(beam_size, max_length)
            self._traced()
            with self._lock:
                found = beam_candidates(self.model, np.asarray(features, np.float32),
                                        int(beam_size), length, length_penalty,
                                        int(num_candidates)).to_numpy()
            return results_from_candidates(found, self.vocab)
        result = self.decode_features(features, beam_size, max_length, length_penalty)
        results = results_from_decode(result, self.vocab)
        for res in results:
            res.candidates = [Candidate(res.caption, list(res.words), res.score)]
        return results

    def extract(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Backbone features [N, R, C] for HxWx3 images of any sizes, one forward per batch."""
        from icapnet.model.backbone import extract_features

        with self._lock:
            return extract_features(self.extractor, images, self.batch_size, self.image_size)

    def caption_images(
        self,
        images: Sequence[np.ndarray],
        beam_size: int = DEFAULT_BEAM,
        max_length: int | None = None,
        length_penalty: float = 0.0,
        num_candidates: int = 1,
    ) -> list[CaptionResult]:
        """Captions for HxWx3 uint8 RGB arrays (any sizes), in order."""
        if len(images) == 0:
            return []
        for i, image in enumerate(images):
            shape = np.shape(image)
            if len(shape) != 3 or shape[2] != 3 or shape[0] < 1 or shape[1] < 1:
                raise IcapnetError(f"image #{i}: expected an HxWx3 RGB array, got shape {shape}")
        self._check(beam_size, max_length)
        out: list[CaptionResult] = []
        for start in range(0, len(images), self.batch_size):
            feats = self.extract(images[start:start + self.batch_size])
            out += self.caption_features(feats, beam_size, max_length, length_penalty,
                                         num_candidates)
        return out

    def caption_paths(
        self,
        paths: Iterable[str | Path],
        beam_size: int = DEFAULT_BEAM,
        max_length: int | None = None,
        length_penalty: float = 0.0,
    ) -> list[CaptionResult | IcapnetError]:
        """Captions for image files; an unreadable file gives its IcapnetError in its place."""
        from icapnet.data.images import load_image

        self._check(beam_size, max_length)
        paths = list(paths)
        out: list[CaptionResult | IcapnetError] = [None] * len(paths)  # type: ignore[list-item]
        for start in range(0, len(paths), self.batch_size):
            good: list[int] = []
            images: list[np.ndarray] = []
            for i in range(start, min(start + self.batch_size, len(paths))):
                try:
                    images.append(load_image(paths[i]))
                    good.append(i)
                except IcapnetError as err:
                    out[i] = err
            if images:
                results = self.caption_images(images, beam_size, max_length, length_penalty)
                for i, result in zip(good, results, strict=True):
                    out[i] = result
        return out

    def caption_bytes(
        self,
        data: bytes,
        beam_size: int = DEFAULT_BEAM,
        max_length: int | None = None,
        length_penalty: float = 0.0,
        name: str = "<upload>",
    ) -> CaptionResult:
        """Caption one encoded image (e.g. an upload); non-images raise IcapnetError."""
        from icapnet.data.images import load_image_bytes

        image = load_image_bytes(data, name)
        return self.caption_images([image], beam_size, max_length, length_penalty)[0]


__all__ = [
    "Candidate",
    "CaptionResult",
    "Predictor",
    "results_from_candidates",
    "results_from_decode",
]
