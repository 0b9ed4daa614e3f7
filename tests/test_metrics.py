"""Caption metrics on hand-made captions, and how nltk's BLEU relates to pycocoevalcap's."""

from __future__ import annotations

import math

import pytest

from icapnet.inference import metrics

REFS = {
    "dog.jpg": ["A dog plays with a ball.", "Two dogs play on the grass", "a brown dog runs"],
    "cat.jpg": ["a cat sat on the mat", "the cat is sitting on a red mat"],
    "bike.jpg": ["a man rides a red bike", "a person on a bicycle in the street"],
}
HYPS = {"dog.jpg": "a dog plays with the ball", "cat.jpg": "a cat sat on a mat",
        "bike.jpg": "a man rides a bike"}  # fmt: skip

needs_java = pytest.mark.skipif(
    not (metrics.java_available() and metrics._coco_dir()), reason="needs java + pycocoevalcap"
)


def test_nltk_bleu_perfect_and_uses_every_reference() -> None:
    # The hypothesis equals only the *third* reference: every order must still be 1.
    refs = {"x": ["a cat on a mat", "two dogs", "A man rides a horse!"]}
    scores = metrics.nltk_bleu(refs, {"x": "a man rides a horse"})
    assert scores == pytest.approx({k: 1.0 for k in metrics.NLTK_KEYS})


def test_nltk_bleu_tokenises_like_the_vocabulary() -> None:
    # "Dog's" -> "dogs" and punctuation dropped, exactly like normalize_caption.
    refs = {"x": ["the dogs red ball is here"]}
    scores = metrics.nltk_bleu(refs, {"x": "The Dog's red-ball, is here!"})
    # hyp tokens: the dogs red ball is here  -> identical to the reference
    assert scores["BLEU-4"] == pytest.approx(1.0)


def test_nltk_bleu_brevity_penalty_by_hand() -> None:
    # 2 of 2 unigrams match; closest reference has 5 words -> BP = exp(1 - 5/2).
    scores = metrics.nltk_bleu({"x": ["a cat sat on mat"]}, {"x": "a cat"})
    assert scores["BLEU-1"] == pytest.approx(math.exp(1 - 5 / 2))


def test_closest_reference_length_tie_goes_to_shorter_in_both() -> None:
    # hyp has 3 words, refs 2 and 4 words: both libraries take 2 -> no brevity penalty.
    refs = {"x": ["a cat", "a cat on mat"]}
    hyps = {"x": "a cat sat"}
    nltk = metrics.nltk_bleu(refs, hyps)
    coco = metrics.coco_scores(refs, hyps, use_ptb=False, meteor=False, log=lambda _: None)
    assert nltk["BLEU-1"] == pytest.approx(2 / 3)
    assert coco["coco_Bleu_1"] == pytest.approx(2 / 3, abs=1e-6)


def test_nltk_and_coco_bleu_agree_on_identical_tokens() -> None:
    """Same tokens + at least one match at every order -> equal up to coco's 1e-9 eps."""
    nltk = metrics.nltk_bleu(REFS, HYPS)
    coco = metrics.coco_scores(REFS, HYPS, use_ptb=False, meteor=False, log=lambda _: None)
    for n in range(1, 5):
        assert 0.3 < nltk[f"BLEU-{n}"] < 1.0
        # measured: |difference| ~1e-10 on these captions
        assert coco[f"coco_Bleu_{n}"] == pytest.approx(nltk[f"BLEU-{n}"], abs=1e-6)


def test_smoothing_differs_when_an_order_has_no_match() -> None:
    refs = {"x": ["a dog runs on the grass"]}
    hyps = {"x": "a dog on grass runs"}  # bigrams match, no 3- or 4-gram does
    nltk = metrics.nltk_bleu(refs, hyps)
    coco = metrics.coco_scores(refs, hyps, use_ptb=False, meteor=False, log=lambda _: None)
    assert nltk["BLEU-2"] == pytest.approx(coco["coco_Bleu_2"], abs=1e-6)
    assert nltk["BLEU-4"] < 1e-10  # unsmoothed: effectively zero
    assert 0 < coco["coco_Bleu_4"] < 1e-2  # tiny eps keeps it positive


@needs_java
def test_ptb_tokenisation_is_the_difference_on_raw_text() -> None:
    # PTB keeps "'s" and "t-shirt"; the vocabulary normaliser gives "dogs" and "t shirt".
    assert metrics.ptb_tokenize(["A dog's T-shirt, red."]) == ["a dog 's t-shirt red"]
    refs = {"x": ["a dog's owner in a t-shirt"]}
    hyps = {"x": "a dogs owner in a t shirt"}
    nltk = metrics.nltk_bleu(refs, hyps)
    coco = metrics.coco_scores(refs, hyps, meteor=False, log=lambda _: None)
    assert nltk["BLEU-4"] == pytest.approx(1.0)  # identical after normalisation
    assert coco["coco_Bleu_4"] < 0.6  # PTB tokens differ -> lower


@needs_java
def test_full_coco_metrics() -> None:
    messages: list[str] = []
    scores = metrics.score_captions(REFS, HYPS, log=messages.append)
    assert list(scores) == list(metrics.METRIC_ORDER)
    assert messages == []
    assert 0.2 < scores["METEOR"] < 1.0
    assert 0.5 < scores["ROUGE_L"] <= 1.0
    assert scores["CIDEr"] > 0.5
    # These captions have no clitics or hyphens, so PTB and the normaliser agree.
    assert scores["coco_Bleu_4"] == pytest.approx(scores["BLEU-4"], abs=1e-6)
    perfect = metrics.score_captions(REFS, {k: v[0] for k, v in REFS.items()}, log=messages.append)
    assert perfect["METEOR"] > scores["METEOR"]
    assert perfect["BLEU-4"] == pytest.approx(1.0)


def test_without_java_skips_with_one_line_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "java_available", lambda: False)
    messages: list[str] = []
    scores = metrics.score_captions(REFS, HYPS, log=messages.append)
    assert "METEOR" not in scores
    assert {"BLEU-4", "coco_Bleu_4", "ROUGE_L", "CIDEr"} <= set(scores)
    assert len(messages) == 2 and all("\n" not in m for m in messages)
    assert "METEOR skipped" in messages[1] and "java" in messages[0]


def test_without_pycocoevalcap_only_nltk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_coco_dir", lambda: None)
    messages: list[str] = []
    scores = metrics.score_captions(REFS, HYPS, log=messages.append)
    assert list(scores) == list(metrics.NLTK_KEYS)
    assert len(messages) == 1 and "pycocoevalcap" in messages[0]


def test_missing_references_and_table() -> None:
    with pytest.raises(ValueError, match="no reference"):
        metrics.nltk_bleu(REFS, {"unknown.jpg": "a cat"})
    table = metrics.format_table({"test beam1": {"BLEU-1": 0.5}, "test beam3": {"BLEU-1": 0.25}})
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "test", "beam1", "test", "beam3", "computed", "by"]
    assert lines[2].split()[:3] == ["BLEU-1", "0.5000", "0.2500"]
    assert lines[2].endswith("nltk corpus_bleu (icapnet tokens)")


def test_table_names_implementations_and_shows_bleu_once() -> None:
    """Issue 11: one table, each number with the implementation that produced it; the
    pycocoevalcap BLEU that repeats nltk's is left out (and said to be in metrics.json)."""
    scores = {"BLEU-4": 0.2, "coco_Bleu_4": 0.2, "METEOR": 0.19, "ROUGE_L": 0.4, "CIDEr": 0.5}
    lines = metrics.format_table({"greedy": scores, "beam 3": scores}).splitlines()
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows) == ["BLEU-4", "METEOR", "ROUGE_L", "CIDEr", "(pycocoevalcap's"]
    assert "nltk" in rows["BLEU-4"] and "pycocoevalcap" in rows["METEOR"]
    assert all("pycocoevalcap" in rows[m] for m in ("ROUGE_L", "CIDEr"))
    assert "coco_Bleu_1..4" in rows["(pycocoevalcap's"]
    both = metrics.format_table({"greedy": scores}, coco_bleu=True)
    assert "coco_Bleu_4" in both and "metrics.json" not in both
