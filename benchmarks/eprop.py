"""e-prop gradients: online (per-synapse traces) vs factorized (one product) vs BPTT.

For the DVS Gesture classifier of MODELS.md section 1 (2,048 inputs, 512 ALIF hidden
neurons, 11 classes), one batch of 32 sequences of 100 steps, dense and sparse (1 %/1 % and
5 %/5 %, `recurrent_classifier` with its default capacity), times in one process, interleaved
repeat by repeat, the gradient computation of one training step (the optimiser adds a few ms):

- ``online``: ``eprop(mode="online").gradients``, per-synapse, per-example eligibility traces
  carried through time;
- ``factorized``: ``eprop(mode="factorized").gradients``, per-neuron signals recorded forward,
  filtered backwards, and one product over time x batch per projection (a GEMM for dense
  matrices, the sampled product at the live slots for ragged ones);
- ``bptt``: the dense baseline of MODELS.md section 3, ``jax.grad`` through the simulated
  network (the library's own neuron steps and surrogate, full backpropagation through time,
  no stop-gradients) of the same objective, summed cross-entropy plus the rate regulariser.

The factorized gradients are checked against the online ones (largest absolute difference
relative to each leaf's largest entry) before timing. BPTT computes a different (exact)
gradient, so it is timed only.

Method: every function is jitted with the model as an argument and compiled ahead of time
(compile time and the compiled program's scratch memory reported separately), called once to
warm up, then timed: each repeat calls every candidate of a configuration once, in a rotating
order, with ``block_until_ready``. A candidate whose warm-up call took longer than ``--slow``
seconds gets at most 3 timed calls. Reported times are medians; quartiles go to the JSON.

Usage::

    python benchmarks/eprop.py                        # the three configurations, ~5-10 minutes
    python benchmarks/eprop.py --configs sparse1,sparse5 --repeats 5
    python benchmarks/eprop.py --no-online             # skip the slow dense online e-prop
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax import lax

from jaxplastic.learning import eprop
from jaxplastic.models import AbstractClassifier, dense_classifier, recurrent_classifier

N_IN, N_HIDDEN, N_OUT = 2048, 512, 11
# (density, weight gain): gains chosen so that the hidden layer fires at tens of Hz under
# the default input (2 % of the inputs spike per step); the rates are printed and stored.
CONFIGS = {
    "dense": (None, 1.0),
    "sparse1": (0.01, 9.0),
    "sparse5": (0.05, 3.5),
}
LABELS = {"dense": "dense", "sparse1": "1 % / 1 %", "sparse5": "5 % / 5 %"}
C_REG, F_TARGET_HZ, TAU_RATE = 0.001, 10.0, 500.0


def make_model(config: str, neuron: str, seed: int) -> AbstractClassifier:
    density, gain = CONFIGS[config]
    key = jr.key(seed)
    if density is None:
        return dense_classifier(N_IN, N_OUT, n_hidden=N_HIDDEN, neuron=neuron, key=key)
    return recurrent_classifier(
        N_IN,
        N_OUT,
        n_hidden=N_HIDDEN,
        neuron=neuron,
        p_in=density,
        p_rec=density,
        weight_gain=gain,
        key=key,
    )


# -- the BPTT baseline ---------------------------------------------------------------------------


def bptt_gradients(model: AbstractClassifier, spikes, labels, *, dt: float = 1.0):
    """Surrogate-gradient BPTT: ``jax.grad`` of e-prop's objective through the whole run.

    ``sum_t [CE(softmax V(t), y) + c_reg sum_j sg(f_j(t) - f_target) z_j(t)]`` with the
    library's neuron steps (their ``custom_jvp`` surrogate) and no stop-gradient on the
    recurrent spikes or the reset: exact backpropagation through time, which stores every
    step's state for the backward pass. Returns gradients of the trainable leaves.
    """
    params, static = eqx.partition(model, model.trainable())
    target = jax.nn.one_hot(labels, model.n_out, dtype=model.w_out.dtype)
    rate_decay = math.exp(-dt / TAU_RATE)
    f_target = F_TARGET_HZ * dt / 1000.0
    xs = jnp.moveaxis(spikes, 1, 0)

    def loss_fn(params):
        net = eqx.combine(params, static)

        def body(carry, x):
            state, rate, loss = carry
            state, (z, v) = net.step(state, x, dt=dt)
            rate = rate_decay * rate + (1.0 - rate_decay) * lax.stop_gradient(z)
            loss = loss - jnp.sum(target * jax.nn.log_softmax(v, axis=-1))
            loss = loss + C_REG * jnp.sum(lax.stop_gradient(rate - f_target) * z)
            return (state, rate, loss), None

        batch = spikes.shape[0]
        init = (
            net.init(batch),
            jnp.zeros((batch, net.n_hidden), net.w_out.dtype),
            jnp.zeros((), net.w_out.dtype),
        )
        (_, _, loss), _ = lax.scan(body, init, xs)
        return loss

    return jax.grad(loss_fn)(params)


# -- timing ------------------------------------------------------------------------------------


class Candidate:
    """One compiled function and its arguments, timed call by call."""

    def __init__(self, name: str, fn: Callable, args: tuple):
        self.name, self.args = name, args
        params, static = eqx.partition(args, eqx.is_array)
        self._call = jax.jit(lambda p: fn(*eqx.combine(p, static)))
        self.params = params
        t0 = time.perf_counter()
        self.compiled = self._call.lower(params).compile()
        self.compile_s = time.perf_counter() - t0
        memory = self.compiled.memory_analysis()
        self.temp_bytes = None if memory is None else int(memory.temp_size_in_bytes)
        self.times: list[float] = []
        self.warmup_s = math.nan

    def __call__(self):
        return self.compiled(self.params)

    def run(self) -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(self())
        return time.perf_counter() - t0

    def summary(self) -> dict[str, Any]:
        q = np.percentile(self.times, [25, 50, 75])
        return {
            "median_s": float(q[1]),
            "p25_s": float(q[0]),
            "p75_s": float(q[2]),
            "min_s": min(self.times),
            "samples": len(self.times),
            "warmup_s": self.warmup_s,
            "compile_s": self.compile_s,
            "temp_mib": None if self.temp_bytes is None else self.temp_bytes / 2**20,
        }


def relative_error(got, expected) -> float:
    """Largest |got - expected| over each leaf, relative to the leaf's largest |expected|."""
    worst = 0.0
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        scale = float(jnp.max(jnp.abs(e)))
        if scale > 0:
            worst = max(worst, float(jnp.max(jnp.abs(g - e))) / scale)
    return worst


# -- main --------------------------------------------------------------------------------------


def _names(text: str) -> list[str]:
    names = [x for x in text.split(",") if x]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    return names


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=_names, default=list(CONFIGS), help="comma-separated")
    parser.add_argument("--neuron", choices=["alif", "lif"], default="alif")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--input-rate", type=float, default=0.02, help="spike prob. per step")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per candidate")
    parser.add_argument("--slow", type=float, default=10.0, help="seconds: at most 3 calls")
    parser.add_argument("--no-online", action="store_true", help="skip dense online e-prop")
    parser.add_argument("--no-bptt", action="store_true", help="skip the BPTT baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "eprop.json"
    )
    args = parser.parse_args(argv)

    device = jax.devices()[0]
    jaxlib_version = importlib.metadata.version("jaxlib")
    header = (
        f"jax {jax.__version__} (jaxlib {jaxlib_version}), device {device.device_kind} "
        f"({device.platform}), {os.cpu_count()} CPUs"
    )
    print(header)
    load_start = os.getloadavg()
    print(f"load average at start: {load_start[0]:.2f}")

    key_spikes = jr.key(args.seed + 1)
    spikes = jr.bernoulli(key_spikes, args.input_rate, (args.batch, args.steps, N_IN))
    spikes = spikes.astype(jnp.uint8)
    labels = jnp.arange(args.batch, dtype=jnp.int32) % N_OUT
    online_rule = eprop(c_reg=C_REG, f_target_hz=F_TARGET_HZ, tau_rate=TAU_RATE)
    factorized_rule = eprop(
        c_reg=C_REG, f_target_hz=F_TARGET_HZ, tau_rate=TAU_RATE, mode="factorized"
    )

    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for config in args.configs:
        model = make_model(config, args.neuron, args.seed)
        data = (model, spikes, labels)
        cands = []
        if not (args.no_online and config == "dense"):
            cands.append(
                Candidate("online", lambda m, s, y: online_rule.gradients(m, s, labels=y), data)
            )
        cands.append(
            Candidate("factorized", lambda m, s, y: factorized_rule.gradients(m, s, labels=y), data)
        )
        if not args.no_bptt:
            cands.append(Candidate("bptt", bptt_gradients, data))
        by_name = {c.name: c for c in cands}
        for cand in cands:
            cand.warmup_s = cand.run()
        factorized_grads, info = by_name["factorized"]()
        error = None
        if "online" in by_name:
            error = relative_error(factorized_grads, by_name["online"]()[0])
            if error > 1e-4:
                raise AssertionError(f"{config}: factorized != online (relative error {error})")
        for r in range(args.repeats):
            order = cands[r % len(cands) :] + cands[: r % len(cands)]
            for cand in order:
                if cand.warmup_s > args.slow and len(cand.times) >= 3:
                    continue
                cand.times.append(cand.run())
        row: dict[str, Any] = {
            "config": config,
            "neuron": args.neuron,
            "density": CONFIGS[config][0],
            "weight_gain": CONFIGS[config][1],
            "synapse_slots": (
                int(model.input.post.size + model.recurrent.post.size)
                if hasattr(model, "input")
                else N_IN * N_HIDDEN + N_HIDDEN * N_HIDDEN
            ),
            "hidden_rate_hz": float(info.rate_hz),
            "factorized_vs_online_rel_error": error,
            "candidates": {c.name: c.summary() for c in cands},
        }
        fact = row["candidates"]["factorized"]["median_s"]
        for name in ("online", "bptt"):
            if name in row["candidates"]:
                row[f"{name}_over_factorized"] = row["candidates"][name]["median_s"] / fact
        rows.append(row)
        print(table([row], header=False), flush=True)

    load_end = os.getloadavg()
    result = {
        "benchmark": "eprop",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jax": jax.__version__,
        "jaxlib": jaxlib_version,
        "device": f"{device.device_kind} ({device.platform})",
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_average": [load_start[0], load_end[0]],
        "batch": args.batch,
        "steps": args.steps,
        "input_rate": args.input_rate,
        "repeats": args.repeats,
        "wall_s": time.perf_counter() - started,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(header + f"; load average {load_start[0]:.1f} -> {load_end[0]:.1f}")
    print(table(rows))
    print(f"\nwrote {args.out}")
    return result


def _seconds(row, name: str, key: str = "median_s") -> str:
    cand = row["candidates"].get(name)
    return "-" if cand is None else f"{cand[key]:.3g}"


def table(rows: list[dict[str, Any]], header: bool = True) -> str:
    lines = []
    if header:
        lines += [
            "| connectivity | slots | rate (Hz) | online (s) | factorized (s) | BPTT (s) "
            "| online / factorized | BPTT / factorized | rel. error | compile online / "
            "factorized / BPTT (s) | scratch online / factorized / BPTT (MiB) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    for row in rows:
        ratio = {
            name: (
                f"{row[f'{name}_over_factorized']:.1f}x"
                if f"{name}_over_factorized" in row
                else "-"
            )
            for name in ("online", "bptt")
        }
        error = row["factorized_vs_online_rel_error"]
        compile_s = " / ".join(
            _seconds(row, n, "compile_s") for n in ("online", "factorized", "bptt")
        )
        memory = " / ".join(
            "-"
            if row["candidates"].get(n, {}).get("temp_mib") is None
            else f"{row['candidates'][n]['temp_mib']:.0f}"
            for n in ("online", "factorized", "bptt")
        )
        lines.append(
            f"| {LABELS[row['config']]} | {row['synapse_slots']:,} | {row['hidden_rate_hz']:.1f} "
            f"| {_seconds(row, 'online')} | {_seconds(row, 'factorized')} "
            f"| {_seconds(row, 'bptt')} | {ratio['online']} | {ratio['bptt']} "
            f"| {'-' if error is None else f'{error:.1e}'} | {compile_s} | {memory} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
