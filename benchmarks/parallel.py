"""Throughput on 1, 2 and 4 devices: data-parallel DEEP R training and the sharded topographic map.

Two workloads, each timed in one process with every candidate interleaved repeat by repeat:

- **data-parallel training** (``jaxplastic.parallel.data_parallel_trainer("deep_r")``): one
  DEEP R training step (online e-prop, signed L1, Adam, prune, regrow) of the offline-digits
  classifier of the README's DEEP R experiment (784 inputs, 128 LIF, 10 outputs, 5 %/1 %
  density, padding 2), a batch of ``--batch`` random input sequences of ``--steps`` steps,
  on 1, 2 and 4 devices, against the single-device ``trainer("deep_r").step``;
- **model-parallel topographic map** (``jaxplastic.parallel.ShardedTopographicMap``): one
  chunk of ``--intervals`` stimulus intervals (20 ms each) at each scale of ``--scales``, on
  1, 2 and 4 devices, against the single-device ``TopographicMap.run``. All candidates start
  from the same state, and they stay identical (the sharded map is exact), so they do the
  same work.

The devices are XLA's host (CPU) devices, ``--xla_force_host_platform_device_count=4`` (set
here before JAX starts unless ``XLA_FLAGS`` already sets it): they share the machine's
cores, so on a 2-core machine 4 devices cannot run more than 2 at a time, and the single-device
baseline may already use both cores inside its larger operations. On a machine with more cores,
or with real accelerators, the same code runs one device per core or chip.

Method: compile time is reported separately (the first call), then ``--repeats`` timed calls
per candidate in a rotating order, each with ``block_until_ready``; medians (quartiles in the
JSON), throughputs and ratios to the single-device baseline. For the topographic map, the
cost of the per-step spike exchange alone is measured too: a scan of 1,000 all-gathers of
``2n`` booleans and nothing else.

Usage::

    python benchmarks/parallel.py                          # both workloads, a few minutes
    python benchmarks/parallel.py --only training --batch 128
    python benchmarks/parallel.py --only topomap --scales 4,7 --intervals 2
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import PartitionSpec  # noqa: E402

from jaxplastic.learning import trainer, with_padding  # noqa: E402
from jaxplastic.models import TopographicMap, recurrent_classifier  # noqa: E402
from jaxplastic.parallel import (  # noqa: E402
    ShardedTopographicMap,
    data_mesh,
    data_parallel_trainer,
    shard_batch,
)

DEVICE_COUNTS = (1, 2, 4)


class Candidate:
    """A stateful workload: ``advance(state) -> state``, timed call by call."""

    def __init__(self, name: str, devices: int | None, advance: Callable[[Any], Any], state):
        self.name, self.devices, self.advance, self.state = name, devices, advance, state
        self.times: list[float] = []
        self.compile_s = 0.0

    def call(self) -> float:
        start = time.perf_counter()
        self.state = jax.block_until_ready(self.advance(self.state))
        return time.perf_counter() - start

    def summary(self, work: float, unit: str) -> dict[str, Any]:
        q1, median, q3 = np.percentile(self.times, [25, 50, 75])
        return {
            "name": self.name,
            "devices": self.devices,
            "compile_s": self.compile_s,
            "median_s": float(median),
            "quartiles_s": [float(q1), float(q3)],
            "calls": len(self.times),
            unit: work / float(median),
        }


def interleave(candidates: list[Candidate], repeats: int) -> None:
    for cand in candidates:
        cand.compile_s = cand.call()
        cand.call()  # warm-up
    for r in range(repeats):
        order = candidates[r % len(candidates) :] + candidates[: r % len(candidates)]
        for cand in order:
            cand.times.append(cand.call())


def training(args) -> dict[str, Any]:
    model = recurrent_classifier(
        784, 10, n_hidden=128, p_in=0.05, p_rec=0.01, weight_gain=4.0, key=jr.key(args.seed)
    )
    model = with_padding(model, 2.0)
    spikes = jr.bernoulli(jr.key(args.seed + 1), args.input_rate, (args.batch, args.steps, 784))
    spikes = spikes.astype(jnp.uint8)
    labels = jnp.arange(args.batch, dtype=jnp.int32) % 10
    options = dict(learning_rate=5e-3, l1_strength=0.1)

    def advance_with(step, batch):
        def advance(state):
            model, train_state = state
            model, train_state, _ = step(model, train_state, batch)
            return model, train_state

        return advance

    single = trainer("deep_r", **options)
    candidates = [
        Candidate(
            "trainer (1 device)",
            None,
            advance_with(single.step, (spikes, labels)),
            (model, single.init(model, key=jr.key(args.seed + 2))),
        )
    ]
    for count in DEVICE_COUNTS:
        mesh = data_mesh(jax.devices()[:count])
        train = data_parallel_trainer("deep_r", mesh=mesh, **options)
        batch = shard_batch((spikes, labels), mesh)
        candidates.append(
            Candidate(
                f"data_parallel ({count})",
                count,
                advance_with(train.step, batch),
                (model, train.init(model, key=jr.key(args.seed + 2))),
            )
        )
    interleave(candidates, args.repeats)
    rows = [c.summary(args.batch, "examples_per_s") for c in candidates]
    base = rows[0]["median_s"]
    for row in rows:
        row["speedup"] = base / row["median_s"]
    # The runs are exact copies of each other up to float rounding: same connectivity.
    posts = [np.asarray(c.state[0].input.post) for c in candidates]
    same = all(np.array_equal(p, posts[0]) for p in posts)
    return {
        "workload": "data-parallel DEEP R training step",
        "model": "784-128-10 LIF, p_in 5 %, p_rec 1 %, padding 2",
        "batch": args.batch,
        "steps": args.steps,
        "input_rate": args.input_rate,
        "same_connectivity_after_timing": same,
        "rows": rows,
    }


def exchange_us(devices: int, n: int, steps: int = 1000) -> float:
    """Microseconds per all-gather of one step's spikes (``2n`` bools) across ``devices``
    devices: a scan of ``steps`` all-gathers and nothing else (median of 7 calls)."""
    mesh = data_mesh(jax.devices()[:devices], axis="model")

    def body(x):
        def step(carry, _):
            gathered = lax.all_gather(carry, "model").reshape(-1)
            return carry ^ gathered[: carry.shape[0]], None

        return lax.scan(step, x, None, length=steps)[0]

    spec = PartitionSpec("model")
    run = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False))
    x = jnp.zeros(2 * n, bool)
    run(x).block_until_ready()
    times = []
    for _ in range(7):
        start = time.perf_counter()
        run(x).block_until_ready()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / steps * 1e6


def topomap(args, scale: int) -> dict[str, Any]:
    model = TopographicMap(scale=scale)
    state = model.init(jr.key(args.seed))
    run = eqx.filter_jit(lambda s: model.run(s, num_intervals=args.intervals)[0])
    candidates = [Candidate("TopographicMap.run (1 device)", None, run, state)]
    for count in DEVICE_COUNTS:
        sharded = ShardedTopographicMap(
            model, data_mesh(jax.devices()[:count], axis="model"), axis="model"
        )

        def advance(s, sharded=sharded):
            return sharded.run(s, num_intervals=args.intervals)[0]

        candidates.append(
            Candidate(f"ShardedTopographicMap ({count})", count, advance, sharded.shard(state))
        )
    interleave(candidates, args.repeats)
    model_s = args.intervals * model.stimulus_interval / 1000.0
    rows = [c.summary(model_s, "realtime_factor") for c in candidates]
    base = rows[0]["median_s"]
    for row in rows:
        row["speedup"] = base / row["median_s"]
        row["steps_per_s"] = args.intervals * model.steps_per_interval / row["median_s"]
        if row["devices"]:
            row["all_gather_us"] = exchange_us(row["devices"], model.n)
    return {
        "workload": "model-parallel topographic map",
        "scale": scale,
        "neurons_per_layer": model.n,
        "intervals_per_call": args.intervals,
        "model_s_per_call": model_s,
        "rows": rows,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| workload | candidate | devices | median (s) | throughput | speedup | compile (s) "
        "| all-gather per step (us) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for part in result["parts"]:
        unit = "examples_per_s" if "batch" in part else "realtime_factor"
        label = (
            f"training, batch {part['batch']}"
            if "batch" in part
            else f"topographic map, scale {part['scale']}"
        )
        for row in part["rows"]:
            value = (
                f"{row[unit]:,.0f} examples/s"
                if unit == "examples_per_s"
                else f"{row[unit]:.2f}x real time"
            )
            gather = f"{row['all_gather_us']:.0f}" if "all_gather_us" in row else ""
            lines.append(
                f"| {label} | {row['name']} | {row['devices'] or 1} | {row['median_s']:.3f} "
                f"| {value} | {row['speedup']:.2f}x | {row['compile_s']:.1f} | {gather} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["training", "topomap"], default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--input-rate", type=float, default=0.02)
    parser.add_argument(
        "--scales", type=lambda t: [int(x) for x in t.split(",")], default=[2, 4],
        help="comma-separated topographic-map scales",
    )  # fmt: skip
    parser.add_argument("--intervals", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "parallel.json"
    )
    args = parser.parse_args(argv)
    if len(jax.devices()) < max(DEVICE_COUNTS):
        raise SystemExit(
            f"expected {max(DEVICE_COUNTS)} devices, got {len(jax.devices())}: start JAX with "
            "XLA_FLAGS=--xla_force_host_platform_device_count=4 (or on 4 accelerators)"
        )

    device = jax.devices()[0]
    jaxlib_version = importlib.metadata.version("jaxlib")
    header = (
        f"jax {jax.__version__} (jaxlib {jaxlib_version}), {len(jax.devices())} x "
        f"{device.device_kind} ({device.platform}), {os.cpu_count()} CPUs"
    )
    print(header, flush=True)
    load_start = os.getloadavg()
    started = time.perf_counter()
    parts = []
    if args.only in (None, "training"):
        parts.append(training(args))
        print(table({"parts": parts[-1:]}), flush=True)
    if args.only in (None, "topomap"):
        for scale in args.scales:
            parts.append(topomap(args, scale))
            print(table({"parts": parts[-1:]}), flush=True)
    load_end = os.getloadavg()
    result = {
        "benchmark": "parallel",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jax": jax.__version__,
        "jaxlib": jaxlib_version,
        "device": f"{device.device_kind} ({device.platform})",
        "devices": len(jax.devices()),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average": [load_start[0], load_end[0]],
        "repeats": args.repeats,
        "wall_s": time.perf_counter() - started,
        "parts": parts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(header + f"; load average {load_start[0]:.1f} -> {load_end[0]:.1f}")
    print(table(result))
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
