"""--mixed-precision: the policy each setting means, and configs saved with the old bool."""

from __future__ import annotations

import pytest

from icapnet.config import Config
from icapnet.model.precision import normalize_precision, policy_name
from icapnet.train import build_parser, config_from_args


def test_settings_map_to_keras_policies():
    assert policy_name("off") == "float32"
    assert policy_name("float16") == "mixed_float16"
    assert policy_name("bfloat16") == "mixed_bfloat16"
    assert policy_name("auto", strategy="tpu") == "mixed_bfloat16"
    # This machine has no GPU: "auto" keeps float32 on the CPU (measured fastest there).
    assert policy_name("auto") == "float32"
    with pytest.raises(ValueError, match="mixed_precision"):
        normalize_precision("float8")


def test_old_boolean_configs_still_load():
    raw = Config().to_dict()
    raw["train"]["mixed_precision"] = True
    assert Config.from_dict(raw).train.mixed_precision == "float16"
    raw["train"]["mixed_precision"] = False
    assert Config.from_dict(raw).train.mixed_precision == "off"


def test_cli_flag_bare_means_auto():
    def parsed(*flags):
        args = build_parser().parse_args(["--cache", "c", "--out", "o", *flags])
        return config_from_args(args).train.mixed_precision

    assert parsed() == "off"
    assert parsed("--mixed-precision") == "auto"
    assert parsed("--mixed-precision", "bfloat16") == "bfloat16"
    with pytest.raises(SystemExit):
        parsed("--mixed-precision", "float8")
