"""Topographic map speed: real-time factor per scale, ensemble throughput, phase profile.

For each scale (layers of (16 s)^2 neurons), in one process, on the XLA CPU backend started
with one intra-op thread (as ``jaxplastic topomap`` runs it):

- **single network**: ``TopographicMap(scale=s)`` from its initial state for ``--duration``
  model seconds (GeNN's figures come from 10 s runs), as a sequence of compiled
  ``run`` calls of ``--chunk`` model seconds each. Compilation is timed separately; the
  real-time factor is model time over the summed wall time of the chunks, and the median
  chunk gives a second estimate.
- **baseline** (``--baseline-commit REV``): the implementation of that git revision
  (``_topographic.py``, ``stdp.py`` and ``_structural.py`` extracted into a temporary
  package), run the same way and interleaved chunk by chunk with the current one, so that
  load on a shared machine hits both alike; the table gives the ratio.
- **ensemble** (``--seeds B``): B networks in one program (``vmap`` with ``axis_name``),
  interleaved chunk by chunk with the single network over the same model time
  (``--ensemble-duration``, default the whole run): throughput in network model-seconds per
  wall second, and the cost per network relative to the single network over that stretch.
- **growth** (``--growth 2 7``): two scales run interleaved chunk by chunk from their initial
  states over the same model time (``--growth-duration``), so that load on a shared machine
  hits both alike; the ratio of their wall times against the ratio of their neurons tests
  linear growth.
- **phase profile** (``--profile``): where a step's time goes. The spikes of a stretch of
  the run are recorded; the same stretch is then replayed (every variant delivering and
  learning from the recorded spikes, so that each does the same work) with all phases, and
  with each phase left out in turn: input generation, the neuron update (with the search
  for the spikes of each layer), delivery (propagation), STDP (depression, potentiation,
  traces), rewiring, and the upkeep of the column view during rewiring. A phase's cost is
  the difference to the full replay; what remains with every phase left out is the loop
  and bookkeeping overhead (the scans, per-spike counters, replay slicing). Variants run
  interleaved, each from a fresh copy of the same state, and the medians are reported.

The reference figures are GeNN 5.4's single-threaded CPU backend on the same machine kind
(MODELS.md section 3).

Usage::

    python benchmarks/topomap.py                                # scales 1 2 4 7, a few minutes
    python benchmarks/topomap.py --scales 1 4 --profile --seeds 4
    python benchmarks/topomap.py --baseline-commit HEAD --scales 1 2 4 7
    python benchmarks/topomap.py --scales 1 --duration 2 --repeats 3   # smoke run
    python benchmarks/topomap.py --scales 1 --seeds 0 --growth 2 7     # linear growth
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jaxplastic._runtime import single_threaded_cpu

ROOT = Path(__file__).resolve().parents[1]

# GeNN 5.4, single-threaded CPU backend, the paper's code, 10 s runs (MODELS.md section 3).
GENN = {
    1: {
        "rtf": 8.7,
        "text": "7-11x (about 8.7x; 60 s run: 6.6x)",
        "rewiring": "~35 % + ~10 % index",
    },
    2: {"rtf": 1.3, "text": "1.2-1.7x", "rewiring": "~67 %"},
    4: {"rtf": 0.10, "text": "0.10x", "rewiring": "~82 % + ~10 % index"},
}
# Model seconds per compiled call, by scale (the chunk compiles once per length).
CHUNK_S = {1: 1.0, 2: 0.5, 3: 0.2, 4: 0.2, 5: 0.1, 6: 0.1, 7: 0.1}
DURATION_S = {1: 10.0, 2: 10.0, 3: 10.0, 4: 10.0, 5: 4.0, 6: 2.0, 7: 2.0}
PHASE_NAMES = {
    "input": "input generation",
    "neurons": "neuron update + spike search",
    "delivery": "propagation",
    "stdp": "STDP",
    "rewiring": "rewiring (without index)",
    "index": "index upkeep",
}


# -- the baseline: an earlier revision's model, extracted from git ----------------------------


def load_baseline(revision: str, folder: Path):
    """Imports ``TopographicMap`` of a git revision (its model, STDP and structural modules;
    the rest of the library is the current one)."""
    package = folder / "topomap_baseline"
    package.mkdir()
    (package / "__init__.py").write_text("")
    local = {
        "jaxplastic/models/_topographic.py": "_topographic",
        "jaxplastic/plasticity/stdp.py": "stdp",
        "jaxplastic/_structural.py": "_structural",
    }
    for path, name in local.items():
        text = subprocess.run(
            ["git", "show", f"{revision}:{path}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

        def absolute(match: re.Match) -> str:
            module = match.group(2).lstrip(".").split(".")[-1]
            if module in local.values():
                return f"from topomap_baseline.{module} import"
            dotted = match.group(2).lstrip(".")
            return f"from jaxplastic.{dotted} import"

        text = re.sub(r"from (\.+)([\w.]*) import", lambda m: absolute(m), text)
        (package / f"{name}.py").write_text(text)
    sys.path.insert(0, str(folder))
    return importlib.import_module("topomap_baseline._topographic")


# -- timing ------------------------------------------------------------------------------------


def run_fn(model, intervals: int, seeds: int, axis_name: bool):
    """A compiled chunk of ``intervals`` stimulus intervals for ``seeds`` networks."""
    import jax

    if seeds == 1:
        return jax.jit(lambda s: model.run(s, num_intervals=intervals), donate_argnums=0)
    if axis_name:
        one = functools.partial(model.run, num_intervals=intervals, axis_name="seeds")
        return jax.jit(jax.vmap(one, axis_name="seeds"), donate_argnums=0)
    one = functools.partial(model.run, num_intervals=intervals)
    return jax.jit(jax.vmap(one), donate_argnums=0)


class Runner:
    """One implementation at one scale: its state, a compiled chunk, the chunk times."""

    def __init__(self, name, module, scale, seeds, chunk_s, seed, axis_name=True):
        import jax
        import jax.numpy as jnp
        import jax.random as jr

        self.name = name
        self.model = module.TopographicMap(scale=scale)
        self.seeds = seeds
        self.intervals = max(1, round(chunk_s / (self.model.stimulus_interval / 1000.0)))
        self.chunk_s = self.intervals * self.model.stimulus_interval / 1000.0
        init = jax.jit(self.model.init)
        keys = [jr.key(seed + b) for b in range(seeds)]
        states = [init(k) for k in keys]
        self.state = states[0] if seeds == 1 else jax.tree.map(lambda *x: jnp.stack(x), *states)
        t0 = time.perf_counter()
        fn = run_fn(self.model, self.intervals, seeds, axis_name)
        self.fn = fn.lower(self.state).compile()
        self.compile_s = time.perf_counter() - t0
        self.times: list[float] = []
        self.overflow = 0
        self.rates: list[float] = []

    def chunk(self) -> None:
        import jax
        import numpy as np

        t0 = time.perf_counter()
        self.state, record = jax.block_until_ready(self.fn(self.state))
        self.times.append(time.perf_counter() - t0)
        self.overflow += int(np.sum(np.asarray(record.overflow_steps)))
        self.rates.append(float(np.mean(np.asarray(record.target_spikes))) / self.chunk_s)

    @property
    def model_s(self) -> float:
        return self.chunk_s * len(self.times)

    def summary(self) -> dict[str, Any]:
        wall = sum(self.times)
        median = statistics.median(self.times)
        return {
            "implementation": self.name,
            "networks": self.seeds,
            "model_s": self.model_s,
            "wall_s": wall,
            "chunk_s": self.chunk_s,
            "chunks": len(self.times),
            "median_chunk_wall_s": median,
            "rtf": self.model_s / wall,
            "rtf_median_chunk": self.chunk_s / median,
            "network_s_per_wall_s": self.seeds * self.model_s / wall,
            "wall_s_per_model_s_per_network": wall / (self.seeds * self.model_s),
            "compile_s": self.compile_s,
            "overflow_steps": self.overflow,
            "target_rate_hz_last_chunk": self.rates[-1] if self.rates else None,
        }


def interleaved(runners: list[Runner], chunks: int) -> None:
    for c in range(chunks):
        order = runners if c % 2 == 0 else runners[::-1]
        for r in order:
            r.chunk()


# -- the phase profile -------------------------------------------------------------------------


def profile(model, state, intervals: int, repeats: int) -> dict[str, Any]:
    """Phase costs by leaving each phase out of a replay of recorded spikes."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from jaxplastic.models._topographic import PHASES, ChunkRecord, RewiringCounts

    def empty_record():
        z = jnp.zeros(model.n, jnp.int32)
        return ChunkRecord(z, z, RewiringCounts.zeros(2, model.side), jnp.zeros((), jnp.int32))

    def chunk(phases, replay_spikes: bool):
        def fn(state, replay):
            def body(carry, xs):
                carry, spikes = model._interval(
                    *carry, True, None, phases, xs, record_spikes=not replay_spikes
                )
                return carry, spikes

            xs = replay if replay_spikes else None
            (state, record), spikes = lax.scan(body, (state, empty_record()), xs, length=intervals)
            return state, record, spikes

        return fn

    record_fn = jax.jit(chunk(PHASES, False))
    _, _, spikes = jax.block_until_ready(record_fn(state, None))
    variants = {"all": PHASES}
    for phase in PHASE_NAMES:
        variants[f"without {phase}"] = PHASES - {phase}
    variants["none"] = frozenset()
    fresh = lambda: jax.tree.map(jnp.copy, state)  # noqa: E731
    compiled = {}
    for name, phases in variants.items():
        compiled[name] = (
            jax.jit(chunk(phases, True), donate_argnums=0).lower(fresh(), spikes).compile()
        )
    live = jax.jit(lambda s: model.run(s, num_intervals=intervals), donate_argnums=0)
    compiled["live run"] = live.lower(fresh()).compile()
    times: dict[str, list[float]] = {name: [] for name in compiled}
    for r in range(repeats + 1):  # the first round warms up
        names = list(compiled)
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            args = (fresh(),) if name == "live run" else (fresh(), spikes)
            jax.block_until_ready(args)
            t0 = time.perf_counter()
            jax.block_until_ready(compiled[name](*args))
            if r > 0:
                times[name].append(time.perf_counter() - t0)
    model_ms = intervals * model.stimulus_interval
    med = {name: statistics.median(t) / model_ms * 1e6 for name, t in times.items()}  # us/ms
    # Paired differences, repeat by repeat (the variants of a repeat ran back to back).
    cost = {}
    for phase in PHASE_NAMES:
        diffs = [
            (a - b) / model_ms * 1e6
            for a, b in zip(times["all"], times[f"without {phase}"], strict=True)
        ]
        cost[phase] = statistics.median(diffs)
    overhead = med["none"]
    total = med["all"]
    return {
        "model_ms": model_ms,
        "us_per_model_ms": med,
        "phase_us_per_model_ms": cost,
        "overhead_us_per_model_ms": overhead,
        "unattributed_us_per_model_ms": total - overhead - sum(cost.values()),
        "share": {phase: c / total for phase, c in cost.items()} | {"overhead": overhead / total},
    }


# -- tables ------------------------------------------------------------------------------------


def markdown_tables(result: dict[str, Any]) -> str:
    lines = [
        "| scale | neurons per layer | model time | real-time factor | wall s per model s "
        "| GeNN real-time factor | vs GeNN |"
        + (" baseline factor | speed-up |" if result.get("baseline") else ""),
        "|---|---|---|---|---|---|---|" + ("---|---|" if result.get("baseline") else ""),
    ]
    for entry in result["scales"]:
        s = entry["scale"]
        one = entry["single"]
        genn = GENN.get(s)
        row = (
            f"| {s} | {entry['neurons']:,} | {one['model_s']:g} s | **{one['rtf']:.2f}x** "
            f"| {one['wall_s_per_model_s_per_network']:.3f} "
            f"| {genn['text'] if genn else 'not measured'} "
            f"| {one['rtf'] / genn['rtf']:.1f}x |"
            if genn
            else f"| {s} | {entry['neurons']:,} | {one['model_s']:g} s | **{one['rtf']:.2f}x** "
            f"| {one['wall_s_per_model_s_per_network']:.3f} | not measured | - |"
        )
        if "baseline" in entry:
            base = entry["baseline"]
            row += f" {base['rtf']:.2f}x | {one['rtf'] / base['rtf']:.2f}x |"
        lines.append(row)
    text = "\n".join(lines)
    ensembles = [e for e in result["scales"] if "ensemble" in e]
    if ensembles:
        text += (
            "\n\n| scale | networks | network model-s per wall s | per network "
            "| one network alone | cost per network, relative |\n|---|---|---|---|---|---|\n"
        )
        for entry in ensembles:
            e = entry["ensemble"]
            text += (
                f"| {entry['scale']} | {e['networks']} | **{e['network_s_per_wall_s']:.2f}** "
                f"| {e['rtf']:.2f}x | {e['single_same_stretch_rtf']:.2f}x "
                f"| {e['per_network_cost_vs_alone']:.2f} |\n"
            )
    profiles = [e for e in result["scales"] if "profile" in e]
    if profiles:
        head = (
            "| scale | "
            + " | ".join(PHASE_NAMES.values())
            + " | loop overhead | total | live run |"
        )
        text += "\n\n" + head + "\n|" + "---|" * (len(PHASE_NAMES) + 4) + "\n"
        for entry in profiles:
            p = entry["profile"]
            cells = [
                f"{p['phase_us_per_model_ms'][ph]:.0f} ({100 * p['share'][ph]:.0f} %)"
                for ph in PHASE_NAMES
            ]
            cells.append(
                f"{p['overhead_us_per_model_ms']:.0f} ({100 * p['share']['overhead']:.0f} %)"
            )
            cells.append(f"{p['us_per_model_ms']['all']:.0f}")
            cells.append(f"{p['us_per_model_ms']['live run']:.0f}")
            text += f"| {entry['scale']} | " + " | ".join(cells) + " |\n"
        text += (
            "\n(us of wall time per model ms, and share of the full replay; live run: the same "
            "stretch simulated normally)"
        )
    return text


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4, 7])
    parser.add_argument(
        "--duration", type=float, default=None, help="model s per scale (default 10, 2 at 7)"
    )
    parser.add_argument("--chunk", type=float, default=None, help="model s per compiled call")
    parser.add_argument("--seeds", type=int, default=4, help="networks of the ensemble (0: none)")
    parser.add_argument(
        "--ensemble-duration", type=float, default=None, help="model s of the ensemble runs"
    )
    parser.add_argument("--baseline-commit", default=None, help="git revision to compare with")
    parser.add_argument("--profile", action="store_true", help="phase profile per scale")
    parser.add_argument("--profile-intervals", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5, help="profile repeats")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--growth",
        type=int,
        nargs=2,
        metavar=("SMALL", "LARGE"),
        default=None,
        help="also run these two scales interleaved chunk by chunk (0.1 s chunks, "
        "--growth-duration model s) and report the ratio of their wall time per model second",
    )
    parser.add_argument("--growth-duration", type=float, default=2.0)
    parser.add_argument("--xla-threads", choices=("1", "all"), default="1")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "topomap.json"
    )
    args = parser.parse_args(argv)
    if args.xla_threads == "1":
        single_threaded_cpu()
    import jax

    from jaxplastic.models import _topographic as current

    device = jax.devices()[0]
    print(
        f"jax {jax.__version__}, device {device.device_kind} ({device.platform}), "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
        f"XLA intra-op threads: {args.xla_threads}",
        flush=True,
    )
    baseline = None
    tmp = tempfile.TemporaryDirectory()
    if args.baseline_commit:
        baseline = load_baseline(args.baseline_commit, Path(tmp.name))
    result: dict[str, Any] = {
        "device": f"{device.device_kind} ({device.platform})",
        "host": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "xla_threads": args.xla_threads,
        "load_average_start": os.getloadavg()[0],
        "baseline": args.baseline_commit,
        "genn": {str(k): v for k, v in GENN.items()},
        "scales": [],
    }
    chunk_walls: dict[int, list[float]] = {}
    for scale in args.scales:
        chunk_s = args.chunk or CHUNK_S.get(scale, 0.1)
        duration = args.duration or DURATION_S.get(scale, 2.0)
        runners = [Runner("current", current, scale, 1, chunk_s, args.seed)]
        if baseline is not None:
            runners.append(Runner("baseline", baseline, scale, 1, chunk_s, args.seed, False))
        chunks = max(1, round(duration / runners[0].chunk_s))
        print(
            f"scale {scale}: {runners[0].model.n:,} neurons per layer, {chunks} chunks of "
            f"{runners[0].chunk_s:g} s; compiled in "
            + ", ".join(f"{r.name} {r.compile_s:.1f} s" for r in runners),
            flush=True,
        )
        ens = None
        if args.seeds > 1:
            # The ensemble runs interleaved with the single network over the same stretch of
            # model time (by default the whole run), so that both see the same load.
            ens = Runner("ensemble", current, scale, args.seeds, chunk_s, args.seed)
            ens_duration = args.ensemble_duration or duration
            ens_chunks = min(chunks, max(1, round(ens_duration / ens.chunk_s)))
        for c in range(chunks):
            group = runners + ([ens] if ens is not None and c < ens_chunks else [])
            for r in group if c % 2 == 0 else group[::-1]:
                r.chunk()
        entry: dict[str, Any] = {
            "scale": scale,
            "neurons": runners[0].model.n,
            "single": runners[0].summary(),
        }
        if baseline is not None:
            entry["baseline"] = runners[1].summary()
        for r in runners:
            s = r.summary()
            print(
                f"  {r.name:9s} {s['model_s']:g} s in {s['wall_s']:.2f} s: real-time factor "
                f"{s['rtf']:.2f}x (median chunk {s['rtf_median_chunk']:.2f}x), "
                f"{s['overflow_steps']} overflow steps, last target rate "
                f"{s['target_rate_hz_last_chunk']:.1f} Hz",
                flush=True,
            )
        if ens is not None:
            entry["ensemble"] = e = ens.summary()
            alone = sum(runners[0].times[:ens_chunks])
            e["single_same_stretch_rtf"] = ens_chunks * ens.chunk_s / alone
            e["per_network_cost_vs_alone"] = e["wall_s"] / args.seeds / alone
            print(
                f"  ensemble  {args.seeds} networks x {e['model_s']:g} s in {e['wall_s']:.2f} s: "
                f"{e['network_s_per_wall_s']:.2f} network-s per wall s "
                f"({e['rtf']:.2f}x each; one network alone over the same stretch "
                f"{e['single_same_stretch_rtf']:.2f}x; compiled in {e['compile_s']:.1f} s)",
                flush=True,
            )
        if args.profile:
            intervals = args.profile_intervals or runners[0].intervals
            entry["profile"] = profile(runners[0].model, runners[0].state, intervals, args.repeats)
            p = entry["profile"]
            print(
                "  profile (us per model ms): "
                + ", ".join(f"{k} {v:.0f}" for k, v in p["phase_us_per_model_ms"].items())
                + f", overhead {p['overhead_us_per_model_ms']:.0f}, total "
                f"{p['us_per_model_ms']['all']:.0f} (live run "
                f"{p['us_per_model_ms']['live run']:.0f})",
                flush=True,
            )
        result["scales"].append(entry)
        chunk_walls[scale] = list(runners[0].times)
    singles = {e["scale"]: e["single"] for e in result["scales"]}
    if 2 in singles and 7 in singles:
        growth = (
            singles[7]["wall_s_per_model_s_per_network"]
            / singles[2]["wall_s_per_model_s_per_network"]
        )
        # The same comparison over the same stretch of model time from the start (the
        # activity, and with it the cost per step, grows as the map forms).
        seven = singles[7]
        k = min(len(chunk_walls[2]), max(1, round(seven["model_s"] / singles[2]["chunk_s"])))
        two_early = sum(chunk_walls[2][:k]) / (k * singles[2]["chunk_s"])
        equal = seven["wall_s"] / seven["model_s"] / two_early
        result["growth_2_to_7"] = {
            "wall_ratio": growth,
            "wall_ratio_equal_model_time": equal,
            "equal_model_time_s": k * singles[2]["chunk_s"],
            "neuron_ratio": 49 / 4,
        }
        print(
            f"wall time per model second, scale 7 over scale 2: {growth:.2f}; over the first "
            f"{k * singles[2]['chunk_s']:g} s of both: {equal:.2f} (neurons: 12.25)"
        )
    if args.growth:
        small, large = args.growth
        pair = [Runner(f"scale {sc}", current, sc, 1, 0.1, args.seed) for sc in (small, large)]
        interleaved(pair, max(1, round(args.growth_duration / pair[0].chunk_s)))
        walls = [r.summary() for r in pair]
        ratio = walls[1]["wall_s"] / walls[0]["wall_s"]
        median_ratio = walls[1]["median_chunk_wall_s"] / walls[0]["median_chunk_wall_s"]
        neurons = pair[1].model.n / pair[0].model.n
        result["growth_interleaved"] = {
            "scales": [small, large],
            "model_s": walls[0]["model_s"],
            "rtf": [w["rtf"] for w in walls],
            "wall_ratio": ratio,
            "median_chunk_ratio": median_ratio,
            "neuron_ratio": neurons,
        }
        print(
            f"growth, scales {small} and {large} interleaved over {walls[0]['model_s']:g} s: "
            f"real-time factors {walls[0]['rtf']:.2f}x and {walls[1]['rtf']:.2f}x, wall time "
            f"ratio {ratio:.2f} (median chunks {median_ratio:.2f}) for {neurons:.2f}x the neurons",
            flush=True,
        )
    result["load_average_end"] = os.getloadavg()[0]
    result["table"] = markdown_tables(result)
    print()
    print(result["table"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")
    tmp.cleanup()
    return result


if __name__ == "__main__":
    main()
