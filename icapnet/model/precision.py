"""Which Keras dtype policy ``--mixed-precision`` means on the device TensorFlow sees.

float16 needs loss scaling and pays off on GPUs with tensor cores; bfloat16 has float32's
range (no loss scaling) and is what TPUs and recent CPUs compute natively. "auto" picks per
device from what was measured (benchmarks/README.md, "mixed precision"): float16 on GPUs of
compute capability >= 7.0, bfloat16 on TPUs, and float32 on CPUs, where neither was faster
for the captioner (its attention step is elementwise work that CPUs do in float32 anyway).
The backbone is another matter: VGG16 is convolutions, which a CPU with native bfloat16
(AVX512_BF16 / AMX) runs twice as fast (``backbone_precision``).
"""

from __future__ import annotations

PRECISIONS = ("off", "float16", "bfloat16", "auto")
BACKBONE_PRECISIONS = ("float32", "bfloat16", "auto")
_POLICIES = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


def normalize_precision(value: object) -> str:
    """Config value -> one of PRECISIONS; configs saved before bfloat16 stored a bool."""
    if isinstance(value, bool):
        return "float16" if value else "off"
    text = str(value).strip().lower()
    aliases = {"true": "float16", "false": "off", "none": "off", "float32": "off",
               "mixed_float16": "float16", "mixed_bfloat16": "bfloat16", "fp16": "float16",
               "bf16": "bfloat16"}
    text = aliases.get(text, text)
    if text not in PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {PRECISIONS}, got {value!r}")
    return text


def policy_name(mode: object, strategy: str = "default") -> str:
    """The Keras global policy for ``mode`` on this machine ("float32" / "mixed_*")."""
    mode = normalize_precision(mode)
    if mode != "auto":
        return _POLICIES[mode]
    if strategy == "tpu":
        return "mixed_bfloat16"
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability and tuple(capability) >= (7, 0):
            return "mixed_float16"
    return "float32"


def cpu_flags() -> frozenset[str]:
    """This (Linux) CPU's feature flags from /proc/cpuinfo; empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(flags.partition(":")[2].split())


def cpu_has_native_bfloat16() -> bool:
    """AVX512_BF16 or AMX on this (Linux) CPU: bfloat16 matmuls/convolutions run natively."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def backbone_precision(mode: str) -> str:
    """FeatureConfig.precision -> "float32" or "bfloat16" on this machine."""
    mode = str(mode).strip().lower()
    if mode not in BACKBONE_PRECISIONS:
        raise ValueError(f"backbone precision must be one of {BACKBONE_PRECISIONS}, got {mode!r}")
    if mode != "auto":
        return mode
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "float32"
    return "bfloat16" if cpu_has_native_bfloat16() else "float32"
