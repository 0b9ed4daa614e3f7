import json
import logging

import pytest

from icapnet.data.text import Vocabulary, normalize_caption, normalize_captions
from icapnet.errors import IcapnetError


def test_normalize_caption_lowercases_strips_punctuation_and_collapses_space():
    assert normalize_caption("  A Dog's   BALL, on the t-shirt!\n") == "a dogs ball on the t shirt"
    assert normalize_caption("two shapes: a red circle.") == "two shapes a red circle"
    assert normalize_caption("!!! ...") == ""


def test_normalize_captions_drops_empty_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        out = normalize_captions(["A cat.", "  ", "?!", "Dog"], source="caps.txt")
    assert out == ["a cat", "dog"]
    assert "caps.txt" in caplog.text and "2 empty" in caplog.text


def test_special_tokens_have_fixed_ids():
    vocab = Vocabulary.build(["a b"] * 5)
    assert vocab.words[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)


def test_build_min_count_max_size_and_deterministic_order():
    captions = ["a dog runs"] * 5 + ["a cat"] * 6 + ["rare word"] * 2
    vocab = Vocabulary.build(captions, min_count=5)
    # "a" (11) first, then cat (6), then dog/runs (5, alphabetical); rare words dropped
    assert vocab.words[4:] == ["a", "cat", "dog", "runs"]
    assert "rare" not in vocab
    small = Vocabulary.build(captions, min_count=1, max_size=6)
    assert len(small) == 6 and small.words[4:] == ["a", "cat"]


def test_encode_decode_round_trip_and_unknown_words():
    vocab = Vocabulary.build(["A red circle to the left of a blue square"] * 5)
    ids = vocab.encode("A red circle to the left of a blue square.")
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
    assert vocab.decode(ids) == "a red circle to the left of a blue square"
    assert vocab.encode("a green circle", add_start_end=False)[1] == vocab.unk_id
    # decode stops at <end> and skips <pad>/<start>
    assert vocab.decode([1, *ids[1:-1], 2, 5, 0, 0]) == vocab.decode(ids)
    assert vocab.tokens([1, vocab.word_id("red"), 0, 2, 4]) == ["red"]


def test_save_load_round_trip(tmp_path):
    vocab = Vocabulary.build(["one two three"] * 5 + ["four"] * 7)
    path = vocab.save(tmp_path)
    assert path.name == "vocab.json"
    assert json.loads(path.read_text())["words"] == vocab.words
    loaded = Vocabulary.load(tmp_path / "vocab.json")
    assert loaded == vocab and loaded.encode("four two") == vocab.encode("four two")
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(IcapnetError, match="not found"):
        Vocabulary.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(IcapnetError, match=str(bad)):
        Vocabulary.load(bad)
    bad.write_text(json.dumps({"words": ["a", "b"]}))
    with pytest.raises(IcapnetError, match="must start with"):
        Vocabulary.load(bad)
