"""Spike propagation: the event-driven ragged path against dense, sparse and event-driven baselines.

For each projection size ``n`` (``n_pre = n_post``), connection density, spiking fraction and
batch, times in one process, interleaved repeat by repeat:

- ``dense``: ``spikes @ W`` with the dense ``[n, n]`` float32 matrix (a GEMV or GEMM);
- ``bcoo``: ``spikes @ W`` with ``jax.experimental.sparse.BCOO`` built from the same synapses;
- ``xla``: :func:`jaxplastic.propagate` with ``impl="xla"`` (the CPU path: event-driven
  gather + scatter-add over the spiking rows);
- ``pallas``: :func:`jaxplastic.propagate` with ``impl="pallas"``; on CPU this runs the GPU
  kernel in Pallas interpret mode, which says nothing about GPU speed and is slow, so by
  default it runs only at ``n <= 1000`` with a single spike vector (``--pallas``: everywhere);
- ``brainevent``: when the ``brainevent`` package is installed, its CSR event-driven operator
  (``brainevent.BinaryArray(spikes) @ brainevent.CSR(...)``, a numba kernel called through the
  XLA FFI on CPU) on the same synapses; skipped with a note otherwise.

The projection is :func:`jaxplastic.fixed_probability` with its default capacity (a binomial
bound on the longest row, so rows have spare, free slots that the ragged path also visits).
Each example has exactly ``round(rate * n)`` spiking neurons, drawn at random. Every output is
checked against a float64 NumPy reference before timing.

Method: every function is jitted with its matrix as an argument (brainevent's indices are
static by its design and are closed over), compiled ahead of time (compile time reported
separately) and warmed up; each repeat then calls every candidate of a case in a rotating
order, each ``calls`` times (more calls for fast candidates, so that a repeat lasts at least
``--min-time``), with ``block_until_ready`` after every call. Reported times are medians over
all calls; ``p25``/``p75`` go to the JSON. A call's time includes JAX's dispatch overhead
(about 5-30 us on CPU, more on a loaded machine), which dominates the sparsest single-vector
cases.

Usage::

    python benchmarks/propagation.py                    # default grid, a few minutes on 2 cores
    python benchmarks/propagation.py --sizes 1000 --repeats 7      # quick run
    python benchmarks/propagation.py --pallas --out /tmp/prop.json  # Pallas-interpret everywhere
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

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.experimental import sparse

import jaxplastic as jp

try:  # optional baseline
    import brainevent
except ImportError:  # pragma: no cover - depends on the environment
    brainevent = None

CANDIDATES = ("dense", "bcoo", "brainevent", "xla", "pallas")
LABELS = {
    "dense": "dense",
    "bcoo": "BCOO",
    "brainevent": "brainevent CSR",
    "xla": "XLA ragged",
    "pallas": "Pallas (interpret)",
}
# Targets at n = 10,000 and 1 % density (issue 2): the ragged XLA path at least 20x faster
# than dense, and no slower than 1.5x brainevent's CPU operator.
TARGET_SIZE, TARGET_DENSITY = 10_000, 0.01
TARGET_SPEEDUP_VS_DENSE, TARGET_VS_BRAINEVENT = 20.0, 1.5


# -- the projection and its other formats ---------------------------------------------------


def make_projection(n: int, density: float, seed: int) -> jp.RaggedConnectivity:
    return jp.fixed_probability(jr.key(seed), n, n, density, weight=jax.nn.initializers.normal(1.0))


def live_synapses(conn: jp.RaggedConnectivity) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, target and weight of every live slot, in row-major (CSR) order."""
    post = np.asarray(conn.post)
    alive = post != conn.n_post
    rows = np.nonzero(alive)[0]
    return rows, post[alive], np.asarray(conn.weight)[alive]


def reference(conn: jp.RaggedConnectivity, spikes: np.ndarray) -> np.ndarray:
    """``spikes @ W`` in float64 with NumPy, from the ragged arrays."""
    post = np.asarray(conn.post)
    weight = np.asarray(conn.weight, np.float64)
    out = np.zeros((spikes.shape[0], conn.n_post + 1))
    for b, s in enumerate(spikes):
        rows = np.nonzero(s)[0]
        np.add.at(out[b], post[rows].ravel(), (s[rows, None] * weight[rows]).ravel())
    return out[:, : conn.n_post]


def make_brainevent_csr(conn: jp.RaggedConnectivity):
    rows, targets, weights = live_synapses(conn)
    indptr = np.zeros(conn.n_pre + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=conn.n_pre), out=indptr[1:])
    csr = brainevent.CSR(
        (jnp.asarray(weights), jnp.asarray(targets.astype(np.int32)), jnp.asarray(indptr)),
        shape=(conn.n_pre, conn.n_post),
    )
    # brainevent caches a task workspace on the matrix at first use; an eager call per rank
    # prepares it outside any trace (preparing it under jit leaks a tracer).
    brainevent.BinaryArray(jnp.zeros(conn.n_pre, bool)) @ csr
    brainevent.BinaryArray(jnp.zeros((2, conn.n_pre), bool)) @ csr
    return csr


def make_spikes(rng: np.random.Generator, n: int, rate: float, batch: int) -> np.ndarray:
    spikes = np.zeros((batch, n), bool)
    count = round(rate * n)
    for b in range(batch):
        spikes[b, rng.choice(n, count, replace=False)] = True
    return spikes


# -- timing ------------------------------------------------------------------------------------


class Candidate:
    """One compiled function and its arguments, timed call by call."""

    def __init__(self, name: str, fn: Callable, args: tuple):
        self.name, self.args = name, args
        t0 = time.perf_counter()
        self.compiled = jax.jit(fn).lower(*args).compile()
        self.compile_s = time.perf_counter() - t0
        self.calls = 1
        self.times: list[float] = []

    def __call__(self):
        return self.compiled(*self.args)

    def run(self) -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(self.compiled(*self.args))
        return time.perf_counter() - t0

    def warm_up(self, n: int, min_time: float, max_calls: int) -> None:
        estimate = min(self.run() for _ in range(max(n, 1)))
        self.calls = int(min(max_calls, max(1, math.ceil(min_time / max(estimate, 1e-7)))))

    def measure(self) -> None:
        self.times.extend(self.run() for _ in range(self.calls))

    def summary(self) -> dict[str, Any]:
        q = np.percentile(self.times, [25, 50, 75]) * 1e3
        return {
            "median_ms": float(q[1]),
            "p25_ms": float(q[0]),
            "p75_ms": float(q[2]),
            "min_ms": 1e3 * min(self.times),
            "samples": len(self.times),
            "calls_per_repeat": self.calls,
            "compile_s": self.compile_s,
        }


def build_candidates(
    conn: jp.RaggedConnectivity,
    dense: jax.Array,
    bcoo: sparse.BCOO,
    csr,
    spikes: np.ndarray,
    run_pallas: bool,
) -> list[Candidate]:
    single = spikes.shape[0] == 1
    s_bool = jnp.asarray(spikes[0] if single else spikes)
    s_float = s_bool.astype(jnp.float32)
    cands = [
        Candidate("dense", lambda w, s: s @ w, (dense, s_float)),
        Candidate("bcoo", lambda w, s: s @ w, (bcoo, s_float)),
    ]
    if csr is not None:
        cands.append(Candidate("brainevent", lambda s: brainevent.BinaryArray(s) @ csr, (s_bool,)))
    cands.append(Candidate("xla", lambda c, s: jp.propagate(c, s, impl="xla"), (conn, s_bool)))
    if run_pallas:
        cands.append(
            Candidate("pallas", lambda c, s: jp.propagate(c, s, impl="pallas"), (conn, s_bool))
        )
    return cands


def check(cand: Candidate, expected: np.ndarray) -> float:
    out = np.asarray(cand(), np.float64).reshape(expected.shape)
    err = float(np.max(np.abs(out - expected), initial=0.0))
    tol = 1e-4 * max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    if err > tol:
        raise AssertionError(f"{cand.name}: max abs error {err:.3g} over tolerance {tol:.3g}")
    return err


# -- main --------------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_ints, default=[1_000, 10_000], help="n, comma-separated")
    parser.add_argument("--densities", type=_floats, default=[0.01, 0.05])
    parser.add_argument("--rates", type=_floats, default=[0.01, 0.1], help="spiking fractions")
    parser.add_argument("--batches", type=_ints, default=[1, 32])
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per case (>= 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per candidate")
    parser.add_argument(
        "--min-time", type=float, default=0.02, help="seconds per candidate per repeat (>=)"
    )
    parser.add_argument("--max-calls", type=int, default=100, help="calls per repeat (<=)")
    parser.add_argument(
        "--pallas", action="store_true", help="Pallas-interpret at every size and batch"
    )
    parser.add_argument("--no-brainevent", action="store_true", help="skip brainevent")
    parser.add_argument(
        "--sync-dispatch",
        action="store_true",
        help="run each call on the calling thread (jax_cpu_enable_async_dispatch=False)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "propagation.json"
    )
    args = parser.parse_args(argv)
    if args.repeats < 7:
        print(f"note: --repeats {args.repeats} is below the 7 the benchmark method asks for")
    if args.sync_dispatch:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    # The ragged paths sum in exact float32; so must the dense and BCOO baselines (a GPU would
    # otherwise run float32 products in TF32, faster and outside the error check's bound).
    jax.config.update("jax_default_matmul_precision", "highest")

    device = jax.devices()[0]
    if device.platform != "cpu":  # the kernel is compiled, not interpreted
        LABELS["pallas"] = "Pallas"
    be_version = None if brainevent is None else brainevent.__version__
    jaxlib_version = importlib.metadata.version("jaxlib")
    print(
        f"jax {jax.__version__} (jaxlib {jaxlib_version}), device {device.device_kind} "
        f"({device.platform}), {os.cpu_count()} CPUs, numpy {np.__version__}"
    )
    use_brainevent = brainevent is not None and not args.no_brainevent
    if brainevent is None:
        print("note: brainevent is not installed; its CSR baseline is skipped")
    elif not use_brainevent:
        print("note: --no-brainevent given; its CSR baseline is skipped")
    else:
        print(f"brainevent {be_version}")
    load_start = os.getloadavg()
    print(f"load average at start: {load_start[0]:.2f}")

    rng = np.random.default_rng(args.seed)
    rows_out: list[dict[str, Any]] = []
    started = time.perf_counter()
    for n in args.sizes:
        for density in args.densities:
            conn = make_projection(n, density, args.seed)
            rows, targets, weights = live_synapses(conn)
            synapses = len(rows)
            dense = conn.to_dense()
            indices = jnp.asarray(np.stack([rows, targets], axis=1).astype(np.int32))
            bcoo = sparse.BCOO(
                (jnp.asarray(weights), indices),
                shape=(n, n),
                indices_sorted=True,
                unique_indices=True,
            )
            csr = make_brainevent_csr(conn) if use_brainevent else None
            print(
                f"\nn = {n}, density {density:g}: capacity {conn.capacity}, "
                f"mean row {synapses / n:.1f} live slots ({synapses} synapses)",
                flush=True,
            )
            for rate in args.rates:
                for batch in args.batches:
                    spikes = make_spikes(rng, n, rate, batch)
                    run_pallas = args.pallas or (n <= 1_000 and batch == 1)
                    cands = build_candidates(conn, dense, bcoo, csr, spikes, run_pallas)
                    expected = reference(conn, spikes)
                    errors = {c.name: check(c, expected) for c in cands}
                    for c in cands:
                        c.warm_up(args.warmup, args.min_time, args.max_calls)
                    for r in range(args.repeats):
                        shift = r % len(cands)
                        for c in cands[shift:] + cands[:shift]:
                            c.measure()
                    row = record(n, density, conn, synapses, rate, batch, cands, errors)
                    rows_out.append(row)
                    print(format_progress(row), flush=True)
            del dense, bcoo, csr

    load_end = os.getloadavg()
    result = {
        "benchmark": "propagation",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib_version,
        "numpy_version": np.__version__,
        "brainevent_version": be_version if use_brainevent else None,
        "device": f"{device.device_kind} ({device.platform})",
        "host": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_start_end": [load_start[0], load_end[0]],
        "async_dispatch": not args.sync_dispatch,
        "repeats": args.repeats,
        "min_time_s": args.min_time,
        "wall_s": time.perf_counter() - started,
        "method": (
            "same process; jitted, compiled ahead of time, warmed up; each repeat calls every "
            "candidate of a case in rotating order, several calls for fast candidates; "
            "block_until_ready after each call; medians over all calls; default "
            "fixed_probability capacity; exactly round(rate * n) spiking neurons per example"
        ),
        "rows": rows_out,
    }
    result["targets"] = targets_summary(rows_out)
    result["table"] = markdown_table(result)
    print()
    print(result["table"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out} ({result['wall_s']:.0f} s)")
    return result


def record(n, density, conn, synapses, rate, batch, cands, errors) -> dict[str, Any]:
    times = {c.name: c.summary() for c in cands}
    med = {name: t["median_ms"] for name, t in times.items()}
    row: dict[str, Any] = {
        "n": n,
        "density": density,
        "capacity": conn.capacity,
        "mean_row_length": synapses / n,
        "rate": rate,
        "spiking_per_example": round(rate * n),
        "batch": batch,
        "candidates": times,
        "max_abs_error": errors,
        "speedup_vs_dense": {name: med["dense"] / m for name, m in med.items()},
    }
    if "brainevent" in med:
        row["time_vs_brainevent"] = {name: m / med["brainevent"] for name, m in med.items()}
    return row


def targets_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for r in rows:
        if r["n"] != TARGET_SIZE or not math.isclose(r["density"], TARGET_DENSITY):
            continue
        speedup = r["speedup_vs_dense"]["xla"]
        entry: dict[str, Any] = {
            "speedup_vs_dense": speedup,
            "at_least_20x_faster_than_dense": bool(speedup >= TARGET_SPEEDUP_VS_DENSE),
        }
        if "time_vs_brainevent" in r:
            ratio = r["time_vs_brainevent"]["xla"]
            entry["time_vs_brainevent"] = ratio
            entry["within_1.5x_of_brainevent"] = bool(ratio <= TARGET_VS_BRAINEVENT)
        out[f"rate {r['rate']:g}, batch {r['batch']}"] = entry
    return out


def format_progress(row: dict[str, Any]) -> str:
    parts = [f"  {100 * row['rate']:g} % spiking, batch {row['batch']:>2}:"]
    for name, t in row["candidates"].items():
        parts.append(f"{name} {t['median_ms']:.3g} ms")
    parts.append(f"| xla {row['speedup_vs_dense']['xla']:.1f}x dense")
    if "time_vs_brainevent" in row:
        parts.append(f"{row['time_vs_brainevent']['xla']:.2f}x brainevent")
    return " ".join(parts)


def _ms(row: dict[str, Any], name: str) -> str:
    t = row["candidates"].get(name)
    if t is None:
        return "-"
    m = t["median_ms"]
    return f"{m:.3f}" if m < 1 else f"{m:.2f}" if m < 100 else f"{m:.0f}"


def markdown_table(result: dict[str, Any]) -> str:
    has_be = any("brainevent" in r["candidates"] for r in result["rows"])
    has_pallas = any("pallas" in r["candidates"] for r in result["rows"])
    names = ["dense", "bcoo"] + (["brainevent"] if has_be else []) + ["xla"]
    names += ["pallas"] if has_pallas else []
    head = (
        ["n", "density", "capacity (mean row)", "spiking", "batch"]
        + [f"{LABELS[k]} (ms)" for k in names]
        + ["XLA ragged vs dense"]
        + (["XLA ragged / brainevent"] if has_be else [])
        + ["XLA ragged compile (s)"]
    )
    dispatch = "async dispatch" if result["async_dispatch"] else "synchronous dispatch"
    lines = [
        f"jax {result['jax_version']}, {result['device']}, {result['cpus']} CPUs, "
        + (f"brainevent {result['brainevent_version']}, " if has_be else "")
        + f"{dispatch}; medians over >= {result['repeats']} interleaved repeats "
        f"(load average {result['load_average_start_end'][0]:.1f} -> "
        f"{result['load_average_start_end'][1]:.1f}).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---:"] * len(head)) + "|",
    ]
    for r in result["rows"]:
        cells = [
            f"{r['n']:,}",
            f"{100 * r['density']:g} %",
            f"{r['capacity']} ({r['mean_row_length']:.0f})",
            f"{100 * r['rate']:g} %",
            str(r["batch"]),
        ]
        cells += [_ms(r, k) for k in names]
        cells.append(f"{r['speedup_vs_dense']['xla']:.1f}x")
        if has_be:
            ratio = r.get("time_vs_brainevent", {}).get("xla")
            cells.append("-" if ratio is None else f"{ratio:.2f}")
        cells.append(f"{r['candidates']['xla']['compile_s']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
