"""Training presets (``--preset sat|synthetic``) and the train CLI's flags (issue 11 #5, #8)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from icapnet import train
from icapnet.config import CHOICES, Config, ModelConfig, TrainConfig
from icapnet.errors import IcapnetError
from icapnet.presets import PRESETS, SAT_ATTENTION_PENALTY, apply_preset, preset_for


def test_presets_change_only_what_they_name_and_record_themselves():
    default = Config()
    synthetic = apply_preset(default, "synthetic")
    assert synthetic.model == default.model  # today's tuned defaults
    assert dataclasses.replace(synthetic.train, preset="") == default.train
    assert synthetic.train.preset == "synthetic"
    sat = apply_preset(default, "sat")
    assert sat.train.preset == "sat"
    assert (sat.train.optimizer, sat.train.learning_rate, sat.train.batch_size) == (
        "rmsprop", 1e-4, 64)
    assert sat.model.dropout == 0.5 and sat.model.state_dropout == 0.0
    assert sat.train.attention_penalty == SAT_ATTENTION_PENALTY == pytest.approx(64 / 11.8,
                                                                                 abs=0.05)
    assert sat.train.early_stopping_metric == "val_bleu4"
    assert sat.train.reduce_lr_patience == 0 and sat.train.clip_norm == 0.0
    sat.validate()
    changed = {f.name for f in dataclasses.fields(TrainConfig)
               if getattr(sat.train, f.name) != getattr(default.train, f.name)}
    named = PRESETS["sat"]["train"]
    assert all(getattr(sat.train, k) == v for k, v in named.items())
    assert changed == {k for k, v in named.items() if v != getattr(default.train, k)} | {"preset"}
    with pytest.raises(IcapnetError, match="--preset"):
        apply_preset(default, "nope")


def test_the_dataset_picks_the_preset():
    assert preset_for("synthetic") == "synthetic"
    assert {preset_for(d) for d in ("flickr8k", "karpathy", "coco")} == {"sat"}


def _args(*argv: str) -> argparse.Namespace:
    return train.build_parser().parse_args(["--cache", "c", "--out", "o", *argv])


def test_explicit_flags_beat_the_preset_which_beats_the_defaults():
    config = train.config_from_args(_args(), dataset="flickr8k")
    assert config.train.preset == "sat" and config.model.dropout == 0.5
    assert config.model.feature_norm is False  # SAT's code: the features as they come
    config = train.config_from_args(_args("--dropout", "0.1", "--optimizer", "adam",
                                          "--no-context-gate", "--feature-norm"),
                                    dataset="flickr8k")
    assert config.model.feature_norm is True
    assert config.train.preset == "sat"
    assert config.model.dropout == 0.1 and config.train.optimizer == "adam"
    assert config.model.context_gate is False
    assert config.train.batch_size == 64 and config.train.learning_rate == 1e-4  # still sat's
    config = train.config_from_args(_args("--preset", "synthetic"), dataset="flickr8k")
    assert config.train.preset == "synthetic" and config.model == ModelConfig()
    config = train.config_from_args(_args(), dataset="synthetic")
    assert config.train.preset == "synthetic" and config.train.optimizer == "adam"


def test_train_help_has_a_sentence_and_the_choices_for_every_flag():
    parser = train.build_parser()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert {"preset", "optimizer", "early_stopping_metric", "dropout"} <= {a.dest for a in flags}
    for action in flags:
        words = (action.help or "").split("(default:")[0].split()
        assert len(words) >= 2, f"{action.option_strings[0]}: no sentence in --help"
    for name, allowed in CHOICES.items():
        if name == "precision":  # the backbone's (FeatureConfig): a prepare setting
            continue
        (action,) = [a for a in flags if a.dest == name]
        assert tuple(action.choices) == allowed
    preset = next(a for a in flags if a.dest == "preset")
    assert tuple(preset.choices) == tuple(PRESETS)
    assert "arXiv:1502.03044" in preset.help and "kelvinxu/arctic-captions" in preset.help
    text = parser.format_help()
    assert "{adam,rmsprop}" in text and "{val_loss,val_bleu4}" in text
