"""Caption quality scores: nltk's corpus BLEU, and the COCO caption metrics when available.

Two families, both computed over the whole corpus against *all* references of each image:

* ``BLEU-1`` .. ``BLEU-4`` — ``nltk.translate.bleu_score.corpus_bleu`` on captions tokenised
  exactly like the vocabulary (:func:`icapnet.data.text.normalize_caption`, then split on
  spaces), no smoothing, uniform weights.
* ``coco_Bleu_1`` .. ``coco_Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr`` — pycocoevalcap, the
  numbers papers report, on captions tokenised by the Stanford PTBTokenizer (lower-cased,
  punctuation removed). The tokenizer and METEOR are Java programs; without Java (or
  without pycocoevalcap) each missing scorer is skipped with one line on stderr, never a
  crash. When only the tokenizer fails, BLEU/ROUGE-L/CIDEr still run on the normaliser's
  tokens (also announced in one line). SPICE is not computed.

How the two BLEUs relate. Both are corpus-level BLEU (Papineni et al.): n-gram matches are
clipped by the maximum count in any reference, summed over the corpus, and the brevity
penalty uses the sum over images of the reference length *closest* to the hypothesis length
(ties go to the shorter reference, in both). BLEU-n is the geometric mean of the 1..n-gram
precisions in both. The differences are

1. tokenisation: PTB keeps clitics as tokens ("dog's" -> "dog 's") and hyphenated words
   whole ("t-shirt"), while the normaliser deletes apostrophes ("dogs") and splits on other
   punctuation ("t shirt"); this changes n-gram counts and lengths;
2. smoothing: pycocoevalcap adds 1e-15 / 1e-9 to every precision's numerator/denominator, so
   an order with zero matches gives a tiny positive BLEU, whereas unsmoothed nltk gives 0
   (well, ~1e-77, after a warning we silence).

On identical tokens with at least one match at every order they agree to ~1e-9 (the eps);
``tests/test_metrics.py`` checks agreement within 1e-6 on hand-made captions, and checks that
on captions with clitics/hyphens the two differ only through tokenisation.

CIDEr's idf weights come from the references of the evaluated images only, so CIDEr of a
handful of images is not comparable to published numbers on the full test set.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

from icapnet.data.text import normalize_caption

References = Mapping[Hashable, Sequence[str]]  # image_id -> raw reference captions
Hypotheses = Mapping[Hashable, str]  # image_id -> generated caption

NLTK_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")
COCO_BLEU_KEYS = ("coco_Bleu_1", "coco_Bleu_2", "coco_Bleu_3", "coco_Bleu_4")
COCO_KEYS = (*COCO_BLEU_KEYS, "METEOR", "ROUGE_L", "CIDEr")
METRIC_ORDER = (*NLTK_KEYS, *COCO_KEYS)

# Tokens the COCO evaluation drops after PTB tokenisation (same list as pycocoevalcap).
_PTB_PUNCTUATION = {
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
    ".", "?", "!", ",", ":", "-", "--", "...", ";",
}  # fmt: skip


def _stderr_line(message: str) -> None:
    print(message, file=sys.stderr)


def tokenize(text: str) -> list[str]:
    """The vocabulary's tokenisation: normalise, then split on spaces."""
    return normalize_caption(text).split()


def _check_inputs(references: References, hypotheses: Hypotheses) -> list[Hashable]:
    if not hypotheses:
        raise ValueError("no captions to score")
    ids = list(hypotheses)
    missing = [i for i in ids if not references.get(i)]
    if missing:
        raise ValueError(f"{len(missing)} image(s) have no reference captions, e.g. {missing[0]!r}")
    return ids


def nltk_bleu(references: References, hypotheses: Hypotheses) -> dict[str, float]:
    """Corpus BLEU-1..4 with nltk over the images in ``hypotheses`` (all their references)."""
    from nltk.translate.bleu_score import corpus_bleu

    ids = _check_inputs(references, hypotheses)
    refs = [[tokenize(r) for r in references[i]] for i in ids]
    hyps = [tokenize(hypotheses[i]) for i in ids]
    weights = [tuple([1.0 / n] * n) for n in range(1, 5)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns when an order has no matches
        scores = corpus_bleu(refs, hyps, weights=weights)
    return {key: float(value) for key, value in zip(NLTK_KEYS, scores, strict=True)}


# ----------------------------------------------------------------------------- COCO side


def java_available() -> bool:
    return shutil.which("java") is not None


def _coco_dir() -> Path | None:
    try:
        import pycocoevalcap.tokenizer.ptbtokenizer as ptb
    except ImportError:
        return None
    return Path(ptb.__file__).resolve().parent.parent


def ptb_tokenize(texts: Sequence[str], timeout: float = 300.0) -> list[str]:
    """Tokenise like the COCO evaluation (Stanford PTBTokenizer, lower case, no punctuation).

    Same command as ``pycocoevalcap``'s wrapper, but the temporary file goes to the system
    temp dir (site-packages may be read-only) and Java's progress chatter is not printed.
    """
    coco = _coco_dir()
    if coco is None:
        raise RuntimeError("pycocoevalcap is not installed")
    if not java_available():
        raise RuntimeError("java not found")
    jar = coco / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    lines = [" ".join(str(t).split()) for t in texts]  # one caption per line, no newlines
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write("\n".join(lines))
    try:
        cmd = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", f.name]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"PTBTokenizer failed ({tail[0]})")
    out = done.stdout.decode("utf-8").split("\n")[: len(lines)]
    out += [""] * (len(lines) - len(out))  # trailing empty captions may produce no line
    return [" ".join(w for w in line.split() if w not in _PTB_PUNCTUATION) for line in out]


_meteor_lock = threading.Lock()
_meteor = None  # one JVM per process: loading METEOR's paraphrase table takes ~10-20 s


def _meteor_scorer():  # -> pycocoevalcap Meteor
    global _meteor
    with _meteor_lock:
        if _meteor is None or _meteor.meteor_p.poll() is not None:
            from pycocoevalcap.meteor.meteor import Meteor

            _meteor = Meteor()
            atexit.register(_close_meteor)
        return _meteor


def _close_meteor() -> None:
    global _meteor
    scorer, _meteor = _meteor, None
    if scorer is not None and scorer.meteor_p.poll() is None:
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()


def _meteor_score(gts: dict, res: dict) -> float:
    scorer = _meteor_scorer()
    try:
        score, _ = scorer.compute_score(gts, res)
    except BaseException:
        # pycocoevalcap keeps its lock on failure and its __del__ would then deadlock.
        if scorer.lock.locked():
            scorer.lock.release()
        _close_meteor()
        raise
    return float(score)


def coco_scores(
    references: References,
    hypotheses: Hypotheses,
    use_ptb: bool = True,
    meteor: bool = True,
    log: Callable[[str], None] = _stderr_line,
) -> dict[str, float]:
    """pycocoevalcap's BLEU-1..4, METEOR, ROUGE-L and CIDEr; unavailable ones are left out.

    ``use_ptb=False`` feeds the normaliser's tokens instead of PTB's (used to compare the two
    BLEU implementations on identical tokens). Every skip is reported through ``log``.
    """
    ids = _check_inputs(references, hypotheses)
    if _coco_dir() is None:
        log("note: pycocoevalcap is not installed; COCO metrics (METEOR, ROUGE-L, CIDEr) skipped")
        return {}
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    keys = list(range(len(ids)))  # pycocoevalcap wants plain hashable ids; keep order
    flat_refs = [str(r) for i in ids for r in references[i]]
    flat_hyps = [str(hypotheses[i]) for i in ids]
    tokens: list[str] | None = None
    if use_ptb:
        try:
            tokens = ptb_tokenize(flat_refs + flat_hyps)
        except (RuntimeError, OSError, subprocess.SubprocessError) as err:
            log(f"note: PTB tokenizer unavailable ({err}); COCO metrics use icapnet's tokens")
    if tokens is None:
        tokens = [" ".join(tokenize(t)) for t in flat_refs + flat_hyps]
    gts: dict[int, list[str]] = {}
    pos = 0
    for key, image_id in zip(keys, ids, strict=True):
        count = len(references[image_id])
        gts[key] = tokens[pos : pos + count]
        pos += count
    res = {key: [tokens[pos + k]] for k, key in enumerate(keys)}

    scores: dict[str, float] = {}
    try:
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores.update({k: float(v) for k, v in zip(COCO_BLEU_KEYS, bleu, strict=True)})
    except Exception as err:
        log(f"note: COCO BLEU skipped ({type(err).__name__}: {err})")
    if meteor:
        if not java_available():
            log("note: METEOR skipped (java not found)")
        else:
            try:
                scores["METEOR"] = _meteor_score(gts, res)
            except Exception as err:
                log(f"note: METEOR skipped ({type(err).__name__}: {err})")
    for name, scorer in (("ROUGE_L", Rouge()), ("CIDEr", Cider())):
        try:
            value, _ = scorer.compute_score(gts, res)
            scores[name] = float(value)
        except Exception as err:
            log(f"note: {name} skipped ({type(err).__name__}: {err})")
    return scores


def score_captions(
    references: References,
    hypotheses: Hypotheses,
    coco: bool = True,
    log: Callable[[str], None] = _stderr_line,
) -> dict[str, float]:
    """All metrics for ``hypotheses`` (image_id -> caption) against ``references``, in order."""
    scores = nltk_bleu(references, hypotheses)
    if coco:
        scores.update(coco_scores(references, hypotheses, log=log))
    return {k: scores[k] for k in METRIC_ORDER if k in scores}


# Which implementation computes each metric (the printed tables say it next to the number).
IMPLEMENTATIONS = {
    **{key: "nltk corpus_bleu (icapnet tokens)" for key in NLTK_KEYS},
    **{key: "pycocoevalcap (PTB tokens)" for key in COCO_BLEU_KEYS},
    "METEOR": "pycocoevalcap METEOR 1.5 (Java)",
    "ROUGE_L": "pycocoevalcap",
    "CIDEr": "pycocoevalcap (idf from these references)",
}


def format_table(rows: Mapping[str, Mapping[str, float]], coco_bleu: bool = False) -> str:
    """A plain-text table: one column per run (e.g. "greedy", "beam 3"), one row per metric,
    and the implementation that computed it.

    pycocoevalcap's BLEU repeats nltk's (they differ only by tokenisation, see the module
    doc), so its rows are left out unless ``coco_bleu``; a last line says where they are.
    """
    names = list(rows)
    shown = [m for m in METRIC_ORDER if any(m in r for r in rows.values())]
    hidden = [m for m in shown if m in COCO_BLEU_KEYS and not coco_bleu]
    metrics = [m for m in shown if m not in hidden]
    width = max([len("metric"), *map(len, metrics)])
    cols = [max(8, len(n)) for n in names]
    header = (n.rjust(w) for n, w in zip(names, cols, strict=True))
    lines = ["  ".join(["metric".ljust(width), *header, "computed by"])]
    lines.append("  ".join(["-" * width, *("-" * w for w in cols), "-" * 11]))
    for metric in metrics:
        cells = [
            f"{rows[n][metric]:.4f}".rjust(w) if metric in rows[n] else "-".rjust(w)
            for n, w in zip(names, cols, strict=True)
        ]
        lines.append("  ".join([metric.ljust(width), *cells, IMPLEMENTATIONS.get(metric, "")]))
    if hidden:
        lines.append("(pycocoevalcap's BLEU-1..4 on PTB tokens are in metrics.json as "
                     "coco_Bleu_1..4)")
    return "\n".join(lines)
