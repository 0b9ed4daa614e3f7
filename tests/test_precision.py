"""--mixed-precision: the policy each setting means, and configs saved with the old bool."""

from __future__ import annotations

import json

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


def test_old_boolean_configs_still_load(tmp_path):
    raw = Config().to_dict()
    raw["train"]["mixed_precision"] = True
    assert Config.from_dict(raw).train.mixed_precision == "float16"
    # A config.json written then passes the type checks of the file loader too.
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert Config.load(tmp_path).train.mixed_precision == "float16"
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


def test_backbone_precision_and_bfloat16_features_agree_with_float32():
    import numpy as np

    from icapnet.config import FeatureConfig
    from icapnet.model.backbone import build_feature_extractor
    from icapnet.model.precision import backbone_precision, cpu_has_native_bfloat16

    assert backbone_precision("float32") == "float32"
    assert backbone_precision("auto") == ("bfloat16" if cpu_has_native_bfloat16() else "float32")
    with pytest.raises(ValueError, match="precision"):
        backbone_precision("float8")
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    out = {}
    for precision in ("float32", "bfloat16"):
        extractor = build_feature_extractor(FeatureConfig(weights="none", image_size=64,
                                                          precision=precision))
        convs = [la for m in extractor.layers if hasattr(m, "layers") for la in m.layers
                 if "conv" in la.name]
        assert convs and all(la.compute_dtype == precision for la in convs)
        assert all(w.dtype == "float32" for la in convs for w in la.weights)  # same weights
        out[precision] = np.asarray(extractor(images))
        assert out[precision].dtype == np.float32
    error = np.abs(out["bfloat16"] - out["float32"]).mean() / np.abs(out["float32"]).mean()
    assert 0 < error < 0.03
