"""Named training recipes: ``--preset sat`` (real photos) and ``--preset synthetic``.

A preset replaces some defaults of :class:`~icapnet.config.ModelConfig` /
:class:`~icapnet.config.TrainConfig`; flags given on the command line override it, and the
preset's name is recorded in ``config.json`` (``train.preset``). Without ``--preset`` the
dataset picks one: synthetic scenes get ``synthetic``, every real-photo dataset ``sat``.

``synthetic`` is the config's own defaults: tuned on synthetic scenes with a random backbone
(``benchmarks/quality_synthetic.py``; the reasons are next to each field in config.py, with
figures from that benchmark's 800-scene version unless they say otherwise).

``sat`` is Show, Attend and Tell's Flickr8k recipe (Xu et al. 2015, arXiv:1502.03044, sec. 4.2
and 5.1, and its reference code github.com/kelvinxu/arctic-captions), on this project's
architecture (GRU decoder, sizes as configured):

* optimiser: RMSProp, which the paper found best on Flickr8k (Adam on Flickr30k/COCO). The
  reference code's ``rmsprop`` is Graves' centred RMSProp with momentum 0.9, decay 0.95,
  epsilon 1e-4 and a fixed step of 1e-4 (its learning-rate argument is ignored); Keras'
  ``RMSprop(1e-4, rho=0.95, momentum=0.9, epsilon=1e-4, centered=True)`` is the same update.
  No learning-rate schedule (so no plateau cut here) and no gradient clipping in that code.
* mini-batches of 64 captions (paper, sec. 4.3);
* dropout: the code drops half of the units (p = 0.5) before the word projection and on the
  deep output, none inside the recurrence ("dropout in the lstm seems not to help");
* the sigmoid gate on the context (beta, ``selector``) and the deep output (``ctx2out``), both
  on in the code's reproduction settings;
* the backbone's features as they come (no ``feature_norm``): the code feeds raw conv5_4
  features. Standardising them helped on synthetic scenes with a random backbone; on real
  photos with ImageNet weights it is unmeasured here, so ``--feature-norm`` is the user's call;
* early stopping on BLEU: the paper stops on validation BLEU, having seen validation
  log-likelihood and BLEU disagree late in training (the released code stops on validation
  log-likelihood, patience 10 checks); here the BLEU-4 of greedy captions of the validation
  split, computed after every epoch;
* the doubly-stochastic penalty, mapped onto this project's normalisation. The reference code
  adds ``alpha_c * ((1 - alphas.sum(0))**2).sum(0).mean()`` with ``alpha_c = 1``: summed over
  the captions of the batch and averaged over the regions, next to a caption loss summed over
  words and averaged over captions. This project averages the cross-entropy over words and the
  penalty over captions and regions. Dividing the code's objective by the mean caption length n
  (words + end token; its batches hold captions of one length) gives the same objective with
  lambda = alpha_c * B / n = 1 * 64 / 11.8 = 5.4 (n = 11.8 on the official Flickr8k training
  captions as icapnet tokenises them). The paper's equation 14 writes the penalty summed over
  the L = 196 regions per caption with an unstated lambda; read with lambda = 1 that would be
  196 / 11.8 = 16.6 here. 5.4 follows the code, the only place a value is given.

What the preset does not copy: the LSTM decoder with 1800 units (the project's decoder and
sizes stay), the homogeneous-length batches, the test-time dropout scaling of old-style
dropout (Keras rescales during training instead; same expectation).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from icapnet.config import Config
from icapnet.errors import IcapnetError

SAT_SOURCE = ("Xu et al. 2015, arXiv:1502.03044, sec. 4.2 and 5.1; "
              "github.com/kelvinxu/arctic-captions")
# lambda of the doubly-stochastic penalty in this project's normalisation: the reference
# code's alpha_c = 1, times its batch of 64, over the mean Flickr8k caption length 11.8.
SAT_ATTENTION_PENALTY = 5.4

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "synthetic": {"model": {}, "train": {}},
    "sat": {
        "model": {"dropout": 0.5, "state_dropout": 0.0, "context_gate": True,
                  "deep_output": True, "feature_norm": False},
        "train": {"optimizer": "rmsprop", "learning_rate": 1e-4, "batch_size": 64,
                  "clip_norm": 0.0, "attention_penalty": SAT_ATTENTION_PENALTY,
                  "early_stopping_metric": "val_bleu4", "reduce_lr_patience": 0},
    },
}
DESCRIPTIONS = {
    "synthetic": "the defaults, tuned on synthetic scenes with a random backbone",
    "sat": f"Show, Attend and Tell's Flickr8k recipe ({SAT_SOURCE})",
}


def preset_for(dataset: str) -> str:
    """The preset a dataset gets when none is named: synthetic scenes or real photos."""
    return "synthetic" if dataset == "synthetic" else "sat"


def apply_preset(config: Config, name: str) -> Config:
    """A copy of ``config`` with the preset's values (then recorded as ``train.preset``)."""
    if name not in PRESETS:
        raise IcapnetError(f"--preset: {name!r} is not one of {', '.join(PRESETS)}")
    values = PRESETS[name]
    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, **values["model"]),
        train=dataclasses.replace(config.train, **values["train"], preset=name),
    )


def preset_help() -> str:
    """What ``--preset`` says in ``--help``."""
    parts = []
    for name, values in PRESETS.items():
        changes = {**values["model"], **values["train"]}
        shown = ", ".join(f"{k}={v}" for k, v in changes.items()) or "no changes"
        parts.append(f"{name}: {DESCRIPTIONS[name]} ({shown})")
    return ("training recipe whose values replace the defaults below (flags given explicitly "
            "win); default: synthetic for synthetic scenes, sat for real photos. "
            + "; ".join(parts))
