"""Caption normalisation and the word <-> id vocabulary saved next to every model.

The vocabulary is built from the training split only, so the ids a model was trained with
travel with it as ``vocab.json``. No TensorFlow here: the web server and tools import it.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from icapnet import fs
from icapnet.errors import IcapnetError
from icapnet.io import atomic_write_text
from icapnet.layout import VOCAB_FILE

log = logging.getLogger(__name__)

_FORMAT = "icapnet-vocab-1"
_APOSTROPHES = re.compile(r"['\u2019\u2018`]")
_NON_WORD = re.compile(r"[^\w\s]|_")
_SPACES = re.compile(r"\s+")


def normalize_caption(text: str) -> str:
    """Lowercase, strip punctuation, collapse whitespace: "A Dog's  ball!" -> "a dogs ball".

    Apostrophes are deleted (so "dog's" stays one word); every other punctuation mark becomes
    a space (so "t-shirt" -> "t shirt"), which keeps words from gluing together.
    """
    text = unicodedata.normalize("NFKC", str(text)).lower()
    text = _APOSTROPHES.sub("", text)
    text = _NON_WORD.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def normalize_captions(captions: Iterable[str], source: str | Path | None = None) -> list[str]:
    """Normalise ``captions`` and drop the ones that end up empty, warning how many went.

    ``source`` (a file or image id) is named in the warning so the user can find the bad rows.
    """
    kept: list[str] = []
    dropped = 0
    for caption in captions:
        clean = normalize_caption(caption)
        if clean:
            kept.append(clean)
        else:
            dropped += 1
    if dropped:
        where = f"{source}: " if source is not None else ""
        log.warning("%sdropped %d empty caption(s)", where, dropped)
    return kept


class Vocabulary:
    """Word list whose index is the token id; ids 0-3 are the special tokens."""

    PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
    SPECIALS = (PAD, START, END, UNK)
    pad_id = 0
    start_id = 1
    end_id = 2
    unk_id = 3

    def __init__(self, words: Iterable[str]) -> None:
        self.words: list[str] = list(words)
        if tuple(self.words[: len(self.SPECIALS)]) != self.SPECIALS:
            raise ValueError(f"vocabulary must start with {list(self.SPECIALS)}")
        self._index: dict[str, int] = {}
        for i, word in enumerate(self.words):
            if word in self._index:
                raise ValueError(f"vocabulary has duplicate word {word!r}")
            self._index[word] = i

    @classmethod
    def build(
        cls, captions: Iterable[str], min_count: int = 5, max_size: int = 10000
    ) -> Vocabulary:
        """Keep words seen at least ``min_count`` times, most frequent first.

        ``max_size`` caps the whole vocabulary *including* the 4 special tokens. Ties in
        frequency are broken alphabetically so the same captions always give the same ids.
        Empty captions are dropped with a warning.
        """
        if min_count < 1:
            raise ValueError("min_count must be >= 1")
        if max_size < len(cls.SPECIALS):
            raise ValueError(f"max_size must be >= {len(cls.SPECIALS)}")
        counts: Counter[str] = Counter()
        for caption in normalize_captions(captions):
            counts.update(caption.split())
        ranked = sorted(
            (w for w, c in counts.items() if c >= min_count and w not in cls.SPECIALS),
            key=lambda w: (-counts[w], w),
        )
        return cls([*cls.SPECIALS, *ranked[: max_size - len(cls.SPECIALS)]])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words)"

    def word_id(self, word: str) -> int:
        """Id of ``word`` (already normalised), ``unk_id`` when unknown."""
        return self._index.get(word, self.unk_id)

    def encode(self, caption: str, add_start_end: bool = True) -> list[int]:
        """Normalise ``caption`` and map it to ids, optionally wrapped in <start> ... <end>."""
        ids = [self.word_id(w) for w in normalize_caption(caption).split()]
        return [self.start_id, *ids, self.end_id] if add_start_end else ids

    def tokens(self, ids: Iterable[int]) -> list[str]:
        """Words for ``ids`` up to (not including) <end>; <pad> and <start> are skipped."""
        out: list[str] = []
        for raw in ids:
            i = int(raw)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
                continue
            out.append(self.words[i] if 0 <= i < len(self.words) else self.UNK)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Caption text for ``ids``: stops at <end>, drops <pad>/<start>."""
        return " ".join(self.tokens(ids))

    def to_dict(self) -> dict:
        return {"format": _FORMAT, "words": self.words}

    def save(self, path: str | Path) -> Path:
        """Write ``vocab.json`` atomically; ``path`` may be a directory or a file path."""
        path = fs.path(path)
        if path.is_dir():
            path = path / VOCAB_FILE
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=0) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a vocabulary written by :meth:`save` (a directory means its ``vocab.json``)."""
        path = fs.path(path)
        if path.is_dir():
            path = path / VOCAB_FILE
        if not path.is_file():
            raise IcapnetError(f"{path}: vocabulary file not found")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise IcapnetError(f"{path}: not a valid vocabulary JSON ({err})") from err
        words = raw.get("words") if isinstance(raw, dict) else raw
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise IcapnetError(f"{path}: vocabulary JSON must hold a list of words")
        try:
            return cls(words)
        except ValueError as err:
            raise IcapnetError(f"{path}: {err}") from err
