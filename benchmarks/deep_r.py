"""DEEP R's share of a training step: the full step vs the same step without the rewiring.

For the DVS Gesture classifier of MODELS.md section 1 (2,048 inputs, 512 ALIF hidden neurons,
11 classes; batch 32, 100 steps, 2 % of the inputs spiking per step) at input/recurrent
densities 1 %/1 % and 5 %/5 % with padding r = 1 (capacity 2x the longest row, the paper's
timing setting), three jitted functions of the same inputs, timed in one process, interleaved
repeat by repeat:

- ``full``: ``deep_r_train_step`` (e-prop gradients -> signed L1 -> Adam -> prune -> regrow ->
  optimiser-moment reset);
- ``no_rewire``: the same step without the rewiring (steps 1-2 only: e-prop, L1, Adam);
- ``rewire``: the rewiring alone (steps 3-4: prune + regrow of both projections and the
  moment reset), compiled on its own, applied to the model and optimiser state that
  ``no_rewire`` produced from the same inputs, so it removes and regrows exactly the synapses
  that the full step does.

Both halves call the library's own code (``_deep_r_update`` and ``_deep_r_rewire``, the two
halves of ``deep_r_train_step``). The share of DEEP R is ``rewire / full``; the difference
``full - no_rewire`` (median of per-repeat differences) is reported as a cross-check.
e-prop runs online (the default of ``deep_r_train_step``) and factorized
(``eprop(mode="factorized")``, same gradients, much faster), since the share depends on what
the rest of the step costs.

Before timing, each configuration trains a few steps from its initial network (``--warmup``,
lr 5e-3, C 0.1 as in the README's experiment) so that Adam's moments are warm and weights
cross zero at a steady rate; the number of synapses rewired per step is reported.

Usage::

    python benchmarks/deep_r.py                          # ~3-5 minutes on 2 CPU cores
    python benchmarks/deep_r.py --configs sparse1 --modes factorized --repeats 5
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from eprop import (
    CONFIGS as EPROP_CONFIGS,
    LABELS as EPROP_LABELS,
    N_IN,
    N_OUT,
    Candidate,
    make_model as eprop_model,
)

from jaxplastic.learning import deep_r, deep_r_train_step, eprop, init_deep_r, with_padding
from jaxplastic.learning._deep_r_train import _deep_r_rewire, _deep_r_update

# The model, its weight gains and the timer of the e-prop benchmark (same folder).
CONFIGS = {name: EPROP_CONFIGS[name] for name in ("sparse1", "sparse5")}
LABELS = {name: EPROP_LABELS[name] for name in CONFIGS}
MODES = ("online", "factorized")
LR, L1, PADDING = 5e-3, 0.1, 1.0
PROPOSALS, MAX_ROUNDS = 256, 64


def make_model(config: str, seed: int):
    return with_padding(eprop_model(config, "alif", seed), PADDING)


def _leaves_equal(a, b, rtol: float = 0.0) -> bool:
    """Every array leaf equal; float leaves within `rtol` of each other's scale if given."""

    def data(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jr.key_data(x)
        return x

    def same(x, y):
        x, y = data(x), data(y)
        if rtol and jnp.issubdtype(x.dtype, jnp.floating) and x.shape == y.shape:
            scale = float(jnp.max(jnp.abs(x), initial=0.0))
            return float(jnp.max(jnp.abs(x - y), initial=0.0)) <= rtol * max(scale, 1e-30)
        return bool(jnp.array_equal(x, y))

    la = jax.tree.leaves(eqx.filter(a, eqx.is_array))
    lb = jax.tree.leaves(eqx.filter(b, eqx.is_array))
    return len(la) == len(lb) and all(same(x, y) for x, y in zip(la, lb, strict=True))


def measure(config: str, mode: str, args) -> dict[str, Any]:
    optimizer = optax.chain(deep_r.l1(L1), optax.adam(LR))
    rule = eprop(mode=mode)
    model = make_model(config, args.seed)
    state = init_deep_r(model, key=jr.key(args.seed + 1), optimizer=optimizer)

    def batch_for(i):
        key = jr.fold_in(jr.key(args.seed + 2), i)
        spikes = jr.bernoulli(key, args.input_rate, (args.batch, args.steps, N_IN))
        return spikes.astype(jnp.uint8), jnp.arange(args.batch, dtype=jnp.int32) % N_OUT

    options = dict(optimizer=optimizer, rule=rule)
    rewire_options = dict(optimizer=optimizer, proposals_per_round=PROPOSALS, max_rounds=MAX_ROUNDS)
    removed_warmup = []
    for i in range(args.warmup):
        model, state, info = deep_r_train_step(model, state, batch_for(i), **options)
        removed_warmup.append([int(info.input.removed), int(info.recurrent.removed)])
    batch = batch_for(args.warmup)

    def full(model, state, batch):
        return deep_r_train_step(model, state, batch, **options)

    def no_rewire(model, state, batch):
        return _deep_r_update(model, state, batch, rule=rule, optimizer=optimizer, dt=1.0)

    def rewire_only(model, state, opt_state, params):
        return _deep_r_rewire(model, state, opt_state, params, **rewire_options)

    cand_full = Candidate("full", full, (model, state, batch))
    cand_update = Candidate("no_rewire", no_rewire, (model, state, batch))
    mid_model, opt_state, params, _ = cand_update()
    cand_rewire = Candidate("rewire", rewire_only, (mid_model, state, opt_state, params))

    # The halves compose to the full step, bit for bit (the same synapses are rewired).
    full_model, full_state, full_info = cand_full()
    split_model, split_state, counts = cand_rewire()
    # Bit for bit on CPU; a GPU's float atomics sum in no fixed order, so there the float
    # leaves may differ in the last bits (connectivity and integer leaves must still match).
    rtol = 0.0 if jax.default_backend() == "cpu" else 1e-5
    same_model = _leaves_equal(full_model, split_model, rtol)
    if not (same_model and _leaves_equal(full_state, split_state, rtol)):
        raise AssertionError(f"{config} {mode}: update + rewire != deep_r_train_step")
    cands = [cand_full, cand_update, cand_rewire]
    for cand in cands:
        cand.warmup_s = cand.run()
    diffs = []
    for r in range(args.repeats):
        order = cands[r % 3 :] + cands[: r % 3]
        times = {c.name: c.times.append(c.run()) or c.times[-1] for c in order}
        diffs.append(times["full"] - times["no_rewire"])
    summary = {c.name: c.summary() for c in cands}
    full_s, rewire_s = summary["full"]["median_s"], summary["rewire"]["median_s"]
    return {
        "config": config,
        "mode": mode,
        "density": CONFIGS[config][0],
        "weight_gain": CONFIGS[config][1],
        "padding": PADDING,
        "synapses": [int(model.input.num_synapses), int(model.recurrent.num_synapses)],
        "slots": [int(model.input.post.size), int(model.recurrent.post.size)],
        "hidden_rate_hz": float(full_info.rate_hz),
        "removed": [int(counts[0].removed), int(counts[1].removed)],
        "shortfall": [int(counts[0].shortfall), int(counts[1].shortfall)],
        "removed_warmup": removed_warmup,
        "candidates": summary,
        "rewire_share": rewire_s / full_s,
        "difference_s": float(np.median(diffs)),
        "difference_share": float(np.median(diffs)) / full_s,
    }


def _names(text: str, valid) -> list[str]:
    names = [x for x in text.split(",") if x]
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {list(valid)}")
    return names


def table(rows: list[dict[str, Any]], header: bool = True) -> str:
    lines = []
    if header:
        lines += [
            "| density (in / rec) | e-prop | synapses / slots | rate (Hz) | rewired (in / rec) "
            "| full step (ms) | without rewiring (ms) | rewiring alone (ms) "
            "| DEEP R share (rewiring / full) | full - without (ms) "
            "| compile full / rewiring (s) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    for row in rows:
        c = row["candidates"]
        lines.append(
            f"| {LABELS[row['config']]} | {row['mode']} "
            f"| {sum(row['synapses']):,} / {sum(row['slots']):,} | {row['hidden_rate_hz']:.1f} "
            f"| {row['removed'][0]} / {row['removed'][1]} "
            f"| {1e3 * c['full']['median_s']:.1f} | {1e3 * c['no_rewire']['median_s']:.1f} "
            f"| {1e3 * c['rewire']['median_s']:.2f} | {100 * row['rewire_share']:.2f} % "
            f"| {1e3 * row['difference_s']:.1f} "
            f"| {c['full']['compile_s']:.1f} / {c['rewire']['compile_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs",
        type=lambda t: _names(t, CONFIGS),
        default=list(CONFIGS),
        help="sparse1,sparse5",
    )
    parser.add_argument(
        "--modes", type=lambda t: _names(t, MODES), default=list(MODES), help="online,factorized"
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--input-rate", type=float, default=0.02, help="spike prob. per step")
    parser.add_argument("--warmup", type=int, default=3, help="training steps before timing")
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per candidate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "deep_r.json"
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
    print(f"load average at start: {load_start[0]:.2f}", flush=True)
    started = time.perf_counter()
    rows = []
    for config in args.configs:
        for mode in args.modes:
            row = measure(config, mode, args)
            rows.append(row)
            print(table([row], header=not rows[:-1]), flush=True)
    load_end = os.getloadavg()
    result = {
        "benchmark": "deep_r",
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
        "lr": LR,
        "l1": L1,
        "repeats": args.repeats,
        "warmup_steps": args.warmup,
        "proposals_per_round": PROPOSALS,
        "max_rounds": MAX_ROUNDS,
        "wall_s": time.perf_counter() - started,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(header + f"; load average {load_start[0]:.1f} -> {load_end[0]:.1f}")
    print(table(rows))
    worst = max(rows, key=lambda r: r["rewire_share"])
    verdict = "met" if worst["rewire_share"] < 0.01 else "missed"
    print(
        f"\nlargest DEEP R share {100 * worst['rewire_share']:.2f} % "
        f"({LABELS[worst['config']]}, {worst['mode']}): target < 1 % {verdict}"
    )
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
