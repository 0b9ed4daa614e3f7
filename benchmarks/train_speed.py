"""Captions/second of the Captioner's train step vs a straightforward reference step.

Both run in this process on the same synthetic region features, with the same layers (the
reference reuses the model's own encoder / attention / cell / projection, so weights and
hyperparameters are identical), batch size and optimizer. The reference is the common
tutorial recipe:

* captions padded to a fixed length (50) instead of each batch's own longest,
* a Python-unrolled loop over time (one graph copy per step),
* attention keys ``W1·features`` recomputed at every time step,
* the vocabulary projection and loss computed step by step.

Ours: ``tf.while_loop`` over the batch's own length, keys once per caption, one vocabulary
projection for all steps. Usage::

    python benchmarks/train_speed.py            # defaults: emb 256, units 512, batch 64
    python benchmarks/train_speed.py --steps 3 --vocab-size 3000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import numpy as np
import tensorflow as tf

from icapnet.config import ModelConfig
from icapnet.model import Captioner


def synthetic_batches(n: int, batch: int, vocab: int, regions: int, dim: int,
                      mean_len: float, std_len: float, seed: int = 0):
    """``n`` batches of (features, captions padded to the batch's longest), like the pipeline."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        feats = rng.random((batch, regions, dim), dtype=np.float32)
        lengths = np.clip(np.rint(rng.normal(mean_len, std_len, batch)), 3, 48).astype(int)
        caps = np.zeros((batch, lengths.max() + 2), np.int32)
        for i, length in enumerate(lengths):
            caps[i, 0] = 1
            caps[i, 1:length + 1] = rng.integers(4, vocab, size=length)
            caps[i, length + 1] = 2
        out.append((tf.constant(feats), tf.constant(caps)))
    return out


def pad_to(captions: tf.Tensor, length: int) -> tf.Tensor:
    return tf.pad(captions, [[0, 0], [0, length - int(captions.shape[1])]])


def make_reference_step(model: Captioner, optimizer, length: int, penalty: float, clip: float):
    """The tutorial-style step: unrolled, fixed length, keys recomputed every step."""
    enc_layer, dec = model.encoder, model.decoder
    att = dec.attention

    @tf.function
    def step(features, captions):  # captions [B, length]
        with tf.GradientTape() as tape:
            encoded = enc_layer(features, training=True)
            state = dec.initial_state(encoded)
            token_sum, token_count, attended = 0.0, 0.0, 0.0
            for t in range(1, length):  # Python-unrolled
                keys = att.W1(encoded)  # recomputed at every time step
                context, alpha = att(encoded, keys, state)
                word = dec.embedding(captions[:, t - 1])
                x = tf.concat([context, word], -1)
                out, new = dec.cell(x, [state], training=True)
                state = new[0]
                logits = dec.project(out, training=True)
                labels = captions[:, t]
                mask = tf.cast(labels != 0, tf.float32)
                ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
                token_sum += tf.reduce_sum(ce * mask)
                token_count += tf.reduce_sum(mask)
                attended += alpha * mask[:, None]
            loss = token_sum / token_count + penalty * tf.reduce_mean(
                tf.reduce_sum(tf.square(1.0 - attended), -1))
        variables = model.trainable_variables
        grads = tape.gradient(loss, variables)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables,
                                                                        strict=True)]
        grads, _ = tf.clip_by_global_norm(grads, clip)
        optimizer.apply(grads, variables)
        return loss

    return step


def time_steps(step, batches, warmup: int = 1) -> tuple[float, float]:
    """(seconds per step, first-call seconds incl. tracing) over ``batches``."""
    start = time.perf_counter()
    for features, captions in batches[:warmup]:
        float(step(features, captions))
    first = time.perf_counter() - start
    start = time.perf_counter()
    for features, captions in batches[warmup:]:
        float(step(features, captions))
    return (time.perf_counter() - start) / max(len(batches) - warmup, 1), first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--embedding-dim", type=int, default=256)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--vocab-size", type=int, default=3000)
    parser.add_argument("--mean-length", type=float, default=12.0)
    parser.add_argument("--std-length", type=float, default=4.0)
    parser.add_argument("--ref-length", type=int, default=50)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant")
    parser.add_argument("--ref-steps", type=int, default=2, help="timed reference steps")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    cfg = ModelConfig(vocab_size=args.vocab_size, embedding_dim=args.embedding_dim,
                      units=args.units, attention_units=args.units)
    model = Captioner(cfg, attention_penalty=1.0, clip_norm=5.0)
    model.compile(optimizer=keras.optimizers.Adam(4e-4))
    model.optimizer.build(model.trainable_variables)
    ours = tf.function(lambda f, c: model.train_step((f, c))["loss"], reduce_retracing=True)

    ref_opt = keras.optimizers.Adam(4e-4)
    ref_opt.build(model.trainable_variables)
    reference = make_reference_step(model, ref_opt, args.ref_length, 1.0, 5.0)

    batches = synthetic_batches(max(args.steps, args.ref_steps) + 1, args.batch_size,
                                args.vocab_size, cfg.num_regions, cfg.feature_dim,
                                args.mean_length, args.std_length)
    print(f"config: batch {args.batch_size}, embedding {args.embedding_dim}, units "
          f"{args.units}, vocab {args.vocab_size}, caption length {args.mean_length:g}"
          f"±{args.std_length:g} words; {tf.config.threading.get_intra_op_parallelism_threads()}"
          f" intra-op threads, {os.cpu_count()} CPUs")
    ours_s, ours_first = time_steps(ours, batches[: args.steps + 1])
    ref_batches = [(f, pad_to(c, args.ref_length)) for f, c in batches[: args.ref_steps + 1]]
    ref_s, ref_first = time_steps(reference, ref_batches)
    ours_cps, ref_cps = args.batch_size / ours_s, args.batch_size / ref_s
    results = {
        "ours_captions_per_s": ours_cps, "reference_captions_per_s": ref_cps,
        "speedup": ours_cps / ref_cps, "ours_s_per_step": ours_s, "reference_s_per_step": ref_s,
        "ours_first_call_s": ours_first, "reference_first_call_s": ref_first,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    print(f"ours      {ours_cps:8.1f} captions/s  ({ours_s:.3f} s/step, first call "
          f"{ours_first:.1f} s)")
    print(f"reference {ref_cps:8.1f} captions/s  ({ref_s:.3f} s/step, first call "
          f"{ref_first:.1f} s)")
    print(f"speedup   {ours_cps / ref_cps:8.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
