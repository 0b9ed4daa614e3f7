"""Why are shape words wrong? A post-mortem of a quality-benchmark run (not a test).

``quality_synthetic.py`` counts shape words that name no object of the scene (shape-word
precision). This takes a finished run's model and feature cache, decodes the held-out split
and the training split greedily, and says of every wrong shape word:

* whether an object of the scene has the colour and size the caption gave it (a *swap*: the
  phrase describes that object with the wrong shape) or none has;
* how much of that step's attention lies on the object(s) the adjectives describe, against
  the same share for right shape words (the attention-in-box of the benchmark);
* which shape was written for which, and the object's place in the caption (1st, 2nd ...).

Precision on the training scenes next to the held-out ones shows how much of the shortfall is
generalisation: a decoder that names the shapes of the scenes it was trained on but not of
new ones has memorised, not learned to read.

    python benchmarks/shape_errors.py runs/quality_synthetic [more runs...] [--json out.json]
    python benchmarks/shape_errors.py runs/demo        # after python -m icapnet.demo
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from icapnet.data.synthetic import SHAPES  # noqa: E402
from icapnet.errors import IcapnetError, run_cli  # noqa: E402
from icapnet.inference.localisation import described_objects, merged_box_coverage  # noqa: E402


def shape_word_rows(words: Sequence[str], attention: np.ndarray,
                    objects: Sequence[Mapping[str, Any]],
                    image_size: tuple[int, int]) -> list[dict[str, Any]]:
    """One record per shape word of a caption.

    ``right``: an object of that shape has the adjectives written before it (the benchmark's
    match, :func:`~icapnet.inference.localisation.described_objects`). ``described``: the
    shapes of the objects those adjectives fit, whatever their shape (empty: the phrase
    describes no object). ``share_described``: that step's attention mass on the described
    objects' boxes (merged), None when there are none.
    """
    att = np.asarray(attention, np.float32).reshape(len(attention), -1)
    grid = math.isqrt(att.shape[1])
    rows = []
    for t, word in enumerate(words[: len(att)]):
        if word not in SHAPES:
            continue
        described = described_objects(words, t, objects)
        share = None
        if described:
            cover = merged_box_coverage(described, image_size, grid)
            share = float(np.sum(att[t] * cover.reshape(-1)))
        rows.append({"word": word, "position": len(rows),
                     "right": any(o["shape"] == word for o in described),
                     "described": sorted(str(o["shape"]) for o in described),
                     "share_described": share})
    return rows


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts and medians over the records of :func:`shape_word_rows`."""
    right = [r for r in rows if r["right"]]
    wrong = [r for r in rows if not r["right"]]
    swaps = [r for r in wrong if r["described"]]

    def median(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 3) if values else None

    positions = Counter(r["position"] for r in rows)
    wrong_at = Counter(r["position"] for r in wrong)
    return {
        "shape_words": len(rows),
        "precision": round(len(right) / len(rows), 4) if rows else None,
        "wrong": len(wrong),
        "swaps": len(swaps),
        "describe_no_object": len(wrong) - len(swaps),
        "swaps_looking_at_described_object": sum(r["share_described"] >= 0.5 for r in swaps),
        "median_share_right": median(r["share_described"] for r in right),
        "median_share_swaps": median(r["share_described"] for r in swaps),
        "swapped": Counter(f"{'/'.join(r['described'])} -> {r['word']}"
                           for r in swaps).most_common(6),
        "error_rate_by_position": {p + 1: round(wrong_at[p] / positions[p], 3)
                                   for p in sorted(positions)},
    }


def model_dir(run: Path) -> Path:
    """The run's model: OUT/model for the benchmark, the summary's ``outputs.model`` for the
    demo (``saved_models/demo``, relative to where the demo ran, the repository root)."""
    if (run / "model").is_dir():
        return run / "model"
    summary = run / "summary.json"
    if summary.is_file():
        model = Path(json.loads(summary.read_text()).get("outputs", {}).get("model", ""))
        if str(model) and model.is_dir():
            return model
    raise IcapnetError(f"{run}: no model/ and no summary.json naming a model folder (not a "
                       "finished quality_synthetic.py or icapnet.demo run, or run from "
                       "another folder than the demo)")


def _decode_rows(run: Path, splits: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Split -> shape-word records of the run's greedy captions; the model is loaded once."""
    from PIL import Image

    from icapnet.inference.evaluation import decode_split
    from icapnet.inference.predictor import Predictor

    predictor = Predictor.from_dir(model_dir(run), feature_weights="none")
    boxes = json.loads((run / "cache" / "boxes.json").read_text())
    rows: dict[str, list[dict[str, Any]]] = {split: [] for split in splits}
    for split in splits:
        for image_id, result in decode_split(predictor.model, predictor.vocab, run / "cache",
                                             split, beam=1, max_length=predictor.max_length):
            with Image.open(run / "data" / "Images" / image_id) as image:
                size = image.size
            rows[split] += shape_word_rows(result.words, result.attention, boxes[image_id],
                                           size)
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path,
                   help="quality_synthetic.py output folders (OUT), or the demo's (runs/demo)")
    p.add_argument("--splits", nargs="+", default=["test", "train"],
                   help="splits to decode (default: test train)")
    p.add_argument("--json", type=Path, help="also write the summaries here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for run in args.runs:
        model_dir(run)
        for part in ("cache/boxes.json", "data/Images"):
            if not (run / part).exists():
                raise IcapnetError(f"{run}: no {part} (not a finished quality_synthetic.py "
                                   "or icapnet.demo run on synthetic scenes)")
    decoded = {run: _decode_rows(run, args.splits) for run in args.runs}
    report: dict[str, Any] = {}
    for split in args.splits:
        for run in args.runs:
            report[f"{run}:{split}"] = summarise(decoded[run][split])
        report[f"pooled:{split}"] = summarise([r for run in args.runs
                                               for r in decoded[run][split]])
    for name, summary in report.items():
        print(f"{name}: {json.dumps(summary)}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
