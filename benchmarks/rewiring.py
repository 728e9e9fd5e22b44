"""Cost of structural plasticity on a 10,000 x 100-slot projection.

Times, in one process and interleaved repeat by repeat:

- one structural step with 0.1 %, 1 % and 10 % of the live synapses changed:
  ``remove`` (:func:`jaxplastic.remove_synapses` with a random mask), ``remove_slots``
  (:func:`jaxplastic.remove_slots` of the same slots, given as a list), ``add``
  (:func:`jaxplastic.add_synapses` of as many random proposals), ``prune+regrow`` (remove
  then add, as DEEP R does), ``prune_slots+regrow`` (the same with the list removal) and
  ``update_rows`` (a per-row rule that prunes the weakest synapses and proposes as many
  random targets as it pruned);
- each step with and without a column view: the difference is the cost of the incremental
  column upkeep, compared with a full rebuild of the column view (``build_column_view``
  with each implementation: XLA's stable sort of all slots by target, and on a CPU the
  native counting kernel; the ratios use the faster);
- each step with every implementation asked for (``--impls``; by default, on a CPU where
  they are built, the native CPU kernels beside the XLA versions, whose ratio is the
  "xla / this" column), and the benchmark's rule alone (what ``update_rows`` spends in the
  user's code rather than in the library);
- 10 simulation steps of the same projection at 5 % presynaptic activity
  (a ``lax.scan`` of :func:`jaxplastic.propagate`).
- what one random cache line costs on this machine: an XLA gather of as many random ``int32``
  as a combined step at 2 % changes, from a 16 MB array, minus the same gather of consecutive
  ones. The upkeep per change divided by it says how many cache lines each change misses
  (the floor of a layout: a removal must read its slot's ``position`` and write its column
  entry, an addition write both).

``--trace DIR`` also records a profiler trace of each step at the first fraction, with and
without the column view, and writes its per-kernel times into the JSON (where a GPU step's
time, and its column upkeep, goes).

Every function is jitted and compiled ahead of time (compile time reported separately); the
changes' inputs are generated outside the timed region. Each repeat visits every case once,
in a rotating order, so that load on a shared machine hits all cases alike; the table reports
medians. By default the projection is donated to the structural step, as it is in a training
loop whose step takes the projection as a donated argument or a ``scan`` carry (the arrays are
then updated in place); ``--no-donate`` times the copying variant as well.

Usage::

    python benchmarks/rewiring.py                 # default sizes, a few minutes on 2 CPU cores
    python benchmarks/rewiring.py --repeats 15 --out /tmp/rewiring.json
    python benchmarks/rewiring.py --n 1000 --repeats 3   # smoke run
"""

from __future__ import annotations

import argparse
import functools
import gzip
import itertools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from scipy.stats import binom

import jaxplastic as jp
from jaxplastic._connectivity import build_column_view
from native_kernels import structural as native

FRACTIONS = (0.001, 0.01, 0.1)
OPS = ("remove", "remove_slots", "add", "prune+regrow", "prune_slots+regrow", "update_rows")
SINGLE = ("remove", "remove_slots", "add")  # the others remove and add as many synapses
ENSEMBLE = "prune+regrow ensemble"  # --ensemble N: prune + regrow of N networks under vmap


# -- the projection and the changes ----------------------------------------------------------


def make_projection(
    rng: np.random.Generator, n: int, capacity: int, fill: int, column_capacity: int
) -> jp.RaggedConnectivity:
    """``n x n`` projection, every row holding ``fill`` distinct random targets (sorted) in its
    first slots; the column lengths are then Binomial, far below ``column_capacity``."""
    post = np.full((n, capacity), n, np.int32)
    for i in range(n):
        post[i, :fill] = np.sort(rng.choice(n, fill, replace=False))
    weight = np.where(post != n, rng.normal(size=post.shape), 0).astype(np.float32)
    conn = jp.RaggedConnectivity(jnp.asarray(post), {"weight": jnp.asarray(weight)}, None, n)
    return conn.with_column_view(column_capacity)


def removal_mask(rng: np.random.Generator, conn: jp.RaggedConnectivity, count: int) -> jax.Array:
    """``count`` live slots, chosen uniformly without replacement."""
    live = np.flatnonzero(np.asarray(conn.alive))
    mask = np.zeros(conn.post.size, bool)
    mask[rng.choice(live, count, replace=False)] = True
    return jnp.asarray(mask.reshape(conn.post.shape))


def proposals(rng: np.random.Generator, conn: jp.RaggedConnectivity, count: int):
    """``count`` uniformly random (row, target) proposals with random weights."""
    rows = jnp.asarray(rng.integers(0, conn.n_pre, count, dtype=np.int32))
    targets = jnp.asarray(rng.integers(0, conn.n_post, count, dtype=np.int32))
    values = {"weight": jnp.asarray(rng.normal(size=count).astype(np.float32))}
    return rows, targets, values


def prune_regrow_rule(threshold: float, k_max: int) -> Callable:
    """Removes every synapse whose weight magnitude is below ``threshold`` and proposes as many
    uniformly random targets as it removed (at most ``k_max``), as a DEEP R step does per row
    (DEEP R prunes on a sign change rather than a magnitude, which costs the same)."""

    def rule(row: jp.RowView, pre, post, key) -> jp.RowUpdate:
        remove = row.alive & (jnp.abs(row.synapses["weight"]) < threshold)
        n_removed = jnp.sum(remove, dtype=jnp.int32)
        targets = jr.randint(key, (k_max,), 0, row.n_post, dtype=row.post.dtype)
        add_post = jnp.where(jnp.arange(k_max) < n_removed, targets, row.n_post)
        return jp.RowUpdate(remove, add_post, {"weight": jnp.full((k_max,), 0.01, jnp.float32)})

    return rule


def magnitude_quantile(conn: jp.RaggedConnectivity, fraction: float) -> float:
    """The weight magnitude below which ``fraction`` of the live synapses lie."""
    weight = np.abs(np.asarray(conn.weight)[np.asarray(conn.alive)])
    return float(np.quantile(weight, fraction))


def rule_width(fill: int, fraction: float, n_rows: int) -> int:
    """Proposals per row: the row-wise removal count stays below it except with probability
    ~1e-3 over the whole projection (such a row then regrows only ``k_max``)."""
    return max(1, int(binom.isf(1e-3 / n_rows, fill, fraction)) + 1)


# -- the timed functions -----------------------------------------------------------------------


def step_remove(conn, mask, impl):
    return jp.remove_synapses(conn, mask, impl=impl)


def step_remove_slots(conn, rows, slots, impl):
    return jp.remove_slots(conn, rows, slots, impl=impl)


def step_add(conn, rows, targets, values, impl):
    return jp.add_synapses(conn, rows, targets, values, impl=impl)


def step_prune_regrow(conn, mask, rows, targets, values, impl):
    conn, removed = jp.remove_synapses(conn, mask, impl=impl)
    conn, added = jp.add_synapses(conn, rows, targets, values, impl=impl)
    return conn, removed.merge(added)


def step_prune_slots_regrow(conn, remove_rows, slots, rows, targets, values, impl):
    conn, removed = jp.remove_slots(conn, remove_rows, slots, impl=impl)
    conn, added = jp.add_synapses(conn, rows, targets, values, impl=impl)
    return conn, removed.merge(added)


def make_step_update_rows(threshold: float, k_max: int):
    rule = prune_regrow_rule(threshold, k_max)

    def step(conn, key, impl):
        return jp.update_rows(conn, rule, key, impl=impl)

    return step


def step_ensemble(conn, mask, rows, targets, values, impl):
    """Prune + regrow of each network of a batch (``vmap``; every input has a leading axis)."""
    return jax.vmap(functools.partial(step_prune_regrow, impl=impl))(
        conn, mask, rows, targets, values
    )


def make_rule_alone(threshold: float, k_max: int):
    """The benchmark rule evaluated on every row, as ``update_rows`` does, and nothing else:
    the part of ``update_rows``' cost that belongs to the rule."""
    rule = prune_regrow_rule(threshold, k_max)

    def rule_alone(conn, key):
        def one_row(i, row_post, row_synapses):
            view = jp.RowView(
                index=i,
                post=row_post,
                alive=row_post != conn.n_post,
                synapses=row_synapses,
                n_post=conn.n_post,
            )
            return rule(view, None, None, jr.fold_in(key, i))

        rows = jnp.arange(conn.n_pre, dtype=conn.post.dtype)
        return jax.vmap(one_row)(rows, conn.post, conn.synapses)

    return rule_alone


def make_rebuild(n_post: int, column_capacity: int, impl: str):
    def rebuild(post):
        return build_column_view(post, n_post, column_capacity, impl=impl)

    return rebuild


def simulate_10(conn, spikes):
    """10 propagation steps: ``spikes`` is ``bool[10, n_pre]``."""

    def body(carry, s):
        return carry, jp.propagate(conn, s)

    return jax.lax.scan(body, None, spikes)[1]


def gather_sum(table, index):
    """Sum of ``table[index]``: with random ``index``, one cache miss per element."""
    return table[index].sum()


# -- timing ------------------------------------------------------------------------------------


def cache_evictor(megabytes: int = 64) -> Callable[[], None]:
    """A function that writes a ``megabytes`` buffer (more than the last-level cache), so that
    the next call starts with none of its arrays in the CPU caches."""
    scratch = np.zeros(megabytes << 20, np.uint8)

    def evict() -> None:
        np.add(scratch, 1, out=scratch)

    return evict


class Case:
    """One compiled function and the arguments it is timed on.

    With ``donate``, the first argument is consumed by each call, so a fresh copy of it is
    made (outside the timed region) before every call.
    """

    def __init__(self, name: str, fn: Callable, args: tuple, donate: bool, meta: dict):
        self.name, self.args, self.donate, self.meta = name, args, donate, meta
        jitted = jax.jit(fn, donate_argnums=(0,) if donate else ())
        jax.clear_caches()  # so that each compile time is a full one
        t0 = time.perf_counter()
        self.compiled = jitted.lower(*args).compile()
        self.compile_s = time.perf_counter() - t0
        self.times: list[float] = []

    def _fresh_args(self) -> tuple:
        if not self.donate:
            return self.args
        first = jax.tree.map(jnp.copy, self.args[0])
        jax.block_until_ready(first)
        return (first, *self.args[1:])

    def run(self, evict: Callable[[], None] | None = None) -> float:
        args = self._fresh_args()
        if evict is not None:
            evict()
        t0 = time.perf_counter()
        out = self.compiled(*args)
        jax.block_until_ready(out)
        return time.perf_counter() - t0

    def warm_up(self, n: int) -> None:
        for _ in range(n):
            self.run()

    def measure(self, evict: Callable[[], None] | None = None) -> None:
        self.times.append(self.run(evict))

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.times)


def paired_median_ms(a: Case, b: Case) -> float:
    """Median over repeats of ``a - b`` (cases timed back to back in each repeat)."""
    return 1e3 * statistics.median(x - y for x, y in zip(a.times, b.times, strict=True))


def paired_ratio(a: Case, b: Case) -> float:
    """Median over repeats of ``a / b``: each repeat times both, so a load that comes and goes
    between repeats cancels out of the ratio."""
    return statistics.median(x / y for x, y in zip(a.times, b.times, strict=True))


# -- main --------------------------------------------------------------------------------------


def make_changes(conn, rng, args) -> dict[float, dict[str, Any]]:
    """The inputs of every structural step, drawn once (outside any timed region)."""
    n_live = int(conn.num_synapses)
    changes = {}
    for fraction in args.fractions:
        count = max(1, round(fraction * n_live))
        changes[fraction] = {
            "count": count,
            "mask": removal_mask(rng, conn, count),
            "proposals": proposals(rng, conn, count),
            "k_max": rule_width(args.fill, fraction, conn.n_pre),
            "threshold": magnitude_quantile(conn, fraction),
        }
    return changes


def build_cases(conn, changes, args, donate: bool, impl: str) -> list[Case]:
    """The cases of one implementation."""
    no_col = conn.without_column_view()
    cases: list[Case] = []
    tag = "donated" if donate else "copied"
    for fraction, change in changes.items():
        mask, (rows, targets, values) = change["mask"], change["proposals"]
        remove_rows, slots = (jnp.asarray(x, jnp.int32) for x in np.nonzero(np.asarray(mask)))
        inputs = {
            "remove": (step_remove, (mask,)),
            "remove_slots": (step_remove_slots, (remove_rows, slots)),
            "prune_slots+regrow": (
                step_prune_slots_regrow,
                (remove_rows, slots, rows, targets, values),
            ),
            "add": (step_add, (rows, targets, values)),
            "prune+regrow": (step_prune_regrow, (mask, rows, targets, values)),
            "update_rows": (
                make_step_update_rows(change["threshold"], change["k_max"]),
                (jr.key(args.seed),),
            ),
        }
        ops = list(args.ops)
        if args.ensemble:
            # N copies of the projection, each with the same changes: the work of N networks.
            def stack(x, n=args.ensemble):
                return jnp.broadcast_to(x, (n, *jnp.shape(x)))

            inputs[ENSEMBLE] = (step_ensemble, jax.tree.map(stack, (mask, rows, targets, values)))
            ops.append(ENSEMBLE)
        for op in ops:
            fn, extra = inputs[op]
            for column, c in (("column", conn), ("no column", no_col)):
                if op == ENSEMBLE:
                    c = jax.tree.map(lambda x: jnp.stack([x] * args.ensemble), c)
                meta = {"op": op, "fraction": fraction, "column": column, "mode": tag}
                meta["impl"] = impl
                name = f"{op} {fraction:g} {column} {tag} {impl}"
                step = functools.partial(fn, impl=impl)
                cases.append(Case(name, step, (c, *extra), donate, meta))
                print(f"  compiled {name:48s} {cases[-1].compile_s:6.2f} s", flush=True)
    return cases


def kernel_times(cases: list[Case], calls: int, folder: Path) -> dict[str, list[dict]]:
    """Per-kernel time of each case, from a profiler trace of ``calls`` calls: the kernels
    (or XLA CPU thunks) by total time per call, for where a step's time goes."""
    out = {}
    for case in cases:
        trace_dir = folder / case.name.replace(" ", "_")
        args = [case._fresh_args() for _ in range(calls)]
        with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
            for a in args:
                jax.block_until_ready(case.compiled(*a))
        path = sorted(trace_dir.glob("**/perfetto_trace.json.gz"))[-1]
        events = json.loads(gzip.decompress(path.read_bytes()))
        events = events["traceEvents"] if isinstance(events, dict) else events
        total: dict[str, float] = {}
        count: dict[str, int] = {}
        for e in events:
            # Device kernels and XLA thunks, not the Python frames ("$file:line name").
            if e.get("ph") == "X" and "dur" in e and not e["name"].startswith("$"):
                total[e["name"]] = total.get(e["name"], 0.0) + e["dur"]
                count[e["name"]] = count.get(e["name"], 0) + 1
        top = sorted(total, key=total.get, reverse=True)[:40]
        out[case.name] = [
            {"name": n, "us_per_call": total[n] / calls, "count_per_call": count[n] / calls}
            for n in top
        ]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=11, help="timed repeats per case")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per case")
    parser.add_argument("--n", type=int, default=10_000, help="n_pre = n_post")
    parser.add_argument("--capacity", type=int, default=100)
    parser.add_argument("--fill", type=int, default=80, help="live synapses per row")
    parser.add_argument("--column-capacity", type=int, default=160)
    parser.add_argument("--activity", type=float, default=0.05, help="spiking fraction")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument(
        "--ops", nargs="+", choices=OPS, default=list(OPS), help="structural steps to time"
    )
    parser.add_argument(
        "--no-donate", action="store_true", help="also time the steps without donation"
    )
    parser.add_argument(
        "--impls",
        nargs="+",
        choices=("auto", "native", "xla"),
        default=None,
        help="implementations of the primitives, timed side by side (default: native and "
        "xla on a CPU where the native kernels are built, else xla)",
    )
    parser.add_argument(
        "--ensemble",
        type=int,
        default=0,
        help="also time prune + regrow of this many networks at once (vmap): the native "
        "kernels share the networks out over the CPU threads",
    )
    parser.add_argument(
        "--trace",
        type=Path,
        default=None,
        help="also record a profiler trace of each step at the first fraction (with and "
        "without the column view) into this folder, and its per-kernel times into the JSON",
    )
    parser.add_argument(
        "--cache",
        choices=("cold", "fresh"),
        default="cold",
        help="cold (default): the CPU caches are flushed before each timed call, so every "
        "case starts from the same state; fresh: as the arguments' copying left them (with "
        "donation, the projection was just copied, and how much of it the cache holds then "
        "depends on its size, so the copy favours the smaller projection without a column view)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "rewiring.json"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    device = jax.devices()[0]
    load_start = os.getloadavg()[0]
    print(
        f"jax {jax.__version__}, device {device.device_kind} ({device.platform}), "
        f"{os.cpu_count()} CPUs, load average {load_start:.1f}"
    )
    rng = np.random.default_rng(args.seed)
    conn = make_projection(rng, args.n, args.capacity, args.fill, args.column_capacity)
    print(
        f"projection {conn.n_pre} x {conn.capacity} slots, {int(conn.num_synapses)} synapses, "
        f"column capacity {conn.column_capacity} (longest column "
        f"{int(conn.column_lengths.max())})"
    )

    if args.impls is None:
        native_here = device.platform == "cpu" and native.available()
        args.impls = ["native", "xla"] if native_here else ["xla"]
    changes = make_changes(conn, rng, args)
    cases = []
    for donate in (True, False) if args.no_donate else (True,):
        for impl in args.impls:
            cases += build_cases(conn, changes, args, donate, impl)
    rule_cases = {}
    if "update_rows" in args.ops:
        for fraction, change in changes.items():
            rule = make_rule_alone(change["threshold"], change["k_max"])
            name = f"rule alone {fraction:g}"
            rule_cases[fraction] = Case(name, rule, (conn, jr.key(args.seed)), False, {})
            print(f"  compiled {name:48s} {rule_cases[fraction].compile_s:6.2f} s", flush=True)
    cases += list(rule_cases.values())
    n_spiking = round(args.activity * args.n)
    spikes = np.zeros((10, args.n), bool)
    for t in range(10):
        spikes[t, rng.choice(args.n, n_spiking, replace=False)] = True
    simulate = Case("simulate x10", simulate_10, (conn, jnp.asarray(spikes)), False, {})
    rebuilds = {
        impl: Case(
            f"rebuild column view {impl}",
            make_rebuild(conn.n_post, args.column_capacity, impl),
            (conn.post,),
            False,
            {},
        )
        for impl in args.impls
    }
    # The random cache line: 2 % of the synapses' worth of loads (the combined steps at 1 %
    # change that many), from 16 MB (about the column view's pre_slot and position here).
    n_lines = max(1, round(0.02 * int(conn.num_synapses)))
    table = jnp.asarray(rng.integers(0, 1 << 20, 4 << 20, dtype=np.int32))
    scattered = jnp.asarray(rng.integers(0, table.size, n_lines, dtype=np.int32))
    lines = {
        kind: Case(f"gather {n_lines} {kind}", gather_sum, (table, index), False, {})
        for kind, index in (
            ("random", scattered),
            ("consecutive", jnp.arange(n_lines, dtype=jnp.int32)),
        )
    }
    cases += [simulate, *rebuilds.values(), *lines.values()]
    for c in (simulate, *rebuilds.values(), *lines.values()):
        print(f"  compiled {c.name:40s} {c.compile_s:6.2f} s", flush=True)

    for c in cases:
        c.warm_up(args.warmup)
    # The CPU caches only: on a GPU the arrays live in device memory.
    evict = cache_evictor() if args.cache == "cold" and device.platform == "cpu" else None
    for r in range(args.repeats):
        shift = r % len(cases)
        for c in cases[shift:] + cases[:shift]:
            c.measure(evict)
        print(f"  repeat {r + 1}/{args.repeats}", flush=True)

    # The upkeep is compared with the fastest way to rebuild the view on this device.
    rebuild_impl = min(rebuilds, key=lambda impl: rebuilds[impl].median_ms)
    rebuild = rebuilds[rebuild_impl]
    by_key = {
        (c.meta["op"], c.meta["fraction"], c.meta["column"], c.meta["mode"], c.meta["impl"]): c
        for c in cases
        if c.meta
    }
    line_ns = 1e6 * paired_median_ms(lines["random"], lines["consecutive"]) / n_lines
    rows = []
    for mode, impl, op, fraction in itertools.product(
        ("donated", "copied") if args.no_donate else ("donated",),
        args.impls,
        [*args.ops, *([ENSEMBLE] if args.ensemble else [])],
        args.fractions,
    ):
        col = by_key[(op, fraction, "column", mode, impl)]
        nocol = by_key[(op, fraction, "no column", mode, impl)]
        baseline = by_key.get((op, fraction, "column", mode, "xla"))
        upkeep = paired_median_ms(col, nocol)
        # Synapses removed or added: the combined steps remove and add `count` each.
        n_changes = changes[fraction]["count"] * (1 if op in SINGLE else 2)
        rows.append(
            {
                "op": op,
                "impl": impl,
                "mode": mode,
                "fraction": fraction,
                "changed": changes[fraction]["count"],
                "synapse_changes": n_changes,
                "upkeep_ns_per_change": 1e6 * upkeep / n_changes,
                "upkeep_lines_per_change": 1e6 * upkeep / n_changes / line_ns,
                "with_column_ms": col.median_ms,
                "without_column_ms": nocol.median_ms,
                "upkeep_ms": upkeep,
                "rebuild_over_upkeep": rebuild.median_ms / upkeep if upkeep > 0 else None,
                "step_over_simulate10": paired_ratio(col, simulate),
                "step_over_simulate10_of_medians": col.median_ms / simulate.median_ms,
                "compile_s": col.compile_s,
                "min_with_column_ms": 1e3 * min(col.times),
                "min_without_column_ms": 1e3 * min(nocol.times),
                "times_ms": [1e3 * t for t in col.times],
                "times_no_column_ms": [1e3 * t for t in nocol.times],
                # Paired median of xla / this implementation (with the column view).
                "speedup_over_xla": (
                    None if baseline is None or baseline is col else paired_ratio(baseline, col)
                ),
                "rule_alone_ms": (rule_cases[fraction].median_ms if op == "update_rows" else None),
                "step_minus_rule_over_simulate10": (
                    statistics.median(
                        (x - y) / z
                        for x, y, z in zip(
                            col.times,
                            rule_cases[fraction].times,
                            simulate.times,
                            strict=True,
                        )
                    )
                    if op == "update_rows"
                    else None
                ),
            }
        )
    result = {
        "benchmark": "rewiring",
        "jax_version": jax.__version__,
        "device": f"{device.device_kind} ({device.platform})",
        "host": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        # 1-minute load average before and after: other processes on a shared machine make
        # the medians noisy, and this says how busy the machine was.
        "load_average": [load_start, os.getloadavg()[0]],
        "repeats": args.repeats,
        "cache": "cold" if evict is not None else "fresh",
        "activity": args.activity,
        "projection": {
            "n_pre": conn.n_pre,
            "n_post": conn.n_post,
            "capacity": conn.capacity,
            "column_capacity": conn.column_capacity,
            "synapses": int(conn.num_synapses),
        },
        "fractions": {
            f"{fraction:g}": {
                "changed": change["count"],
                "update_rows_k_max": change["k_max"],
                "update_rows_threshold": change["threshold"],
            }
            for fraction, change in changes.items()
        },
        "simulate10_ms": simulate.median_ms,
        "simulate10_compile_s": simulate.compile_s,
        "simulate10_times_ms": [1e3 * t for t in simulate.times],
        "rebuild_ms": rebuild.median_ms,
        "rebuild_impl": rebuild_impl,
        "rebuild_compile_s": rebuild.compile_s,
        "rebuild_times_ms": [1e3 * t for t in rebuild.times],
        "rebuild_ms_by_impl": {impl: c.median_ms for impl, c in rebuilds.items()},
        "random_line_ns": line_ns,
        "random_line_loads": n_lines,
        "rows": rows,
    }
    one = [
        r
        for r in rows
        if r["mode"] == "donated"
        and r["impl"] == args.impls[0]
        and r["op"] != ENSEMBLE
        and math.isclose(r["fraction"], 0.01)
    ]
    result["ensemble"] = args.ensemble
    result["impls"] = args.impls
    result["targets"] = {
        r["op"]: {
            "upkeep_10x_cheaper_than_rebuild": bool(
                r["rebuild_over_upkeep"] is None or r["rebuild_over_upkeep"] >= 10
            ),
            "step_cheaper_than_10_simulation_steps": bool(r["step_over_simulate10"] < 1),
        }
        for r in one
    }
    if args.trace is not None:
        traced = [
            c
            for c in cases
            if c.meta and c.meta["mode"] == "donated" and c.meta["fraction"] == args.fractions[0]
        ]
        result["kernel_times"] = kernel_times(
            traced + [*rebuilds.values(), simulate], 5, args.trace
        )
    result["table"] = markdown_table(result)
    print()
    print(result["table"])
    print()
    for op, met in result["targets"].items():
        print(f"  at 1 %, {op}: " + ", ".join(f"{k} = {v}" for k, v in met.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return result


def markdown_table(result: dict[str, Any]) -> str:
    lines = [
        f"jax {result['jax_version']}, {result['device']} ({result['cpus']} CPUs, load average "
        f"{result['load_average'][0]:.1f} -> {result['load_average'][1]:.1f}), "
        f"median of {result['repeats']}, {result.get('cache', 'fresh')} cache; "
        f"10 simulation steps at {100 * result['activity']:g} % activity: "
        f"{result['simulate10_ms']:.2f} ms; "
        "full column rebuild: "
        + ", ".join(
            f"{ms:.2f} ms ({impl})"
            for impl, ms in result.get("rebuild_ms_by_impl", {"xla": result["rebuild_ms"]}).items()
        )
        + f" (the ratios use {result.get('rebuild_impl', 'xla')})"
        + (
            f"; a random cache line: {result['random_line_ns']:.1f} ns"
            if "random_line_ns" in result
            else ""
        )
        + ".",
        "",
        "| step | impl | mode | changed | with column (ms) | without column (ms) | upkeep (ms) "
        "| rebuild / upkeep | upkeep / change (ns, lines) | step / 10 sim steps | xla / this "
        "| compile (s) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        ratio = r["rebuild_over_upkeep"]
        ratio_s = "upkeep ~0" if ratio is None else f"{ratio:.1f}x"
        speedup = r.get("speedup_over_xla")
        speedup_s = "" if speedup is None else f"{speedup:.2f}x"
        per_change = r.get("upkeep_ns_per_change")
        per_change_s = (
            "" if per_change is None else f"{per_change:.0f}, {r['upkeep_lines_per_change']:.1f}"
        )
        lines.append(
            f"| {r['op']} | {r.get('impl', 'xla')} | {r['mode']} "
            f"| {100 * r['fraction']:g} % ({r['changed']}) "
            f"| {r['with_column_ms']:.2f} | {r['without_column_ms']:.2f} | {r['upkeep_ms']:.2f} "
            f"| {ratio_s} | {per_change_s} | {r['step_over_simulate10']:.2f} | {speedup_s} "
            f"| {r['compile_s']:.2f} |"
        )
    rules = [r for r in result["rows"] if r.get("rule_alone_ms") is not None]
    if rules:
        lines += ["", "update_rows without its rule (the rule alone timed beside it):", ""]
        for r in rules:
            lines.append(
                f"- {r.get('impl', 'xla')}, {100 * r['fraction']:g} %: rule alone "
                f"{r['rule_alone_ms']:.2f} ms; (update_rows - rule) / 10 sim steps "
                f"{r['step_minus_rule_over_simulate10']:.2f}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
