"""`jaxplastic topomap`: topographic map formation with STDP and structural plasticity.

Runs the model of Bamford et al. (2010) as the GeNN structural-plasticity paper (Knight, Senk
& Nowotny 2025) does, at any scale, for one or several seeds (several seeds run as one
compiled program, ``vmap`` over the networks), and writes figures (PNG) and a JSON of metrics
to the output folder. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from .._cli_args import check_output_folder, positive_float, positive_int

HELP = (
    "topographic map formation (Bamford et al. 2010, as run by GeNN): STDP + rewiring; "
    "writes figures and a JSON of metrics"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scale", type=positive_int, default=1, help="layers of (16 s)^2 neurons (default 1)"
    )
    parser.add_argument(
        "--duration", type=positive_float, default=60.0, help="model time in s (default 60)"
    )
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument(
        "--seeds",
        type=positive_int,
        default=1,
        help="number of networks, seeds seed..seed+N-1, run together with vmap (default 1)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("topomap_out"), help="output folder (default topomap_out)"
    )
    parser.add_argument(
        "--rule",
        choices=("genn", "bamford"),
        default="genn",
        help="elimination probabilities: GeNN's (x50, no cap; default) or Bamford's with the "
        "in-degree cap of 32",
    )
    parser.add_argument(
        "--record-every",
        type=positive_float,
        default=None,
        help="model time between records in s (default: 1 s, or duration/10 for short runs)",
    )
    parser.add_argument(
        "--xla-threads",
        choices=("1", "all"),
        default="1",
        help="intra-op threads of XLA's CPU backend (default 1: this model runs thousands of "
        "tiny operations per millisecond, which splitting across threads slows down)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _mean_sd(values) -> dict[str, float]:
    import numpy as np

    values = np.asarray(values, dtype=float)
    return {
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0,
    }


def _collect(result: dict[str, Any], model) -> dict[str, Any]:
    """Per-seed time series from the run's records and chunk counters."""
    import numpy as np

    n_seeds = len(result["records"])
    dt_steps = model.steps_per_interval * model.dt / 1000.0  # s per stimulus interval
    per_seed = []
    for b in range(n_seeds):
        records = result["records"][b]
        series: dict[str, Any] = {}
        for proj in ("ff", "lat"):
            for key in (
                "synapses",
                "mean_weight",
                "in_degree_mean",
                "in_degree_sd",
                "out_degree_mean",
                "out_degree_sd",
                "in_degree_max",
            ):
                series[f"{key}_{proj}"] = [r[proj][key] for r in records]
        series["rf_distance"] = [r["rf_distance"] for r in records]
        series["rf_spread"] = [r["rf_spread"] for r in records]
        series["rf_empty"] = [r["rf_empty"] for r in records]
        for s, proj in enumerate(("ff", "lat")):
            formed = [c.rewiring.formed[b, s] for c in result["chunks"]]
            eliminated = [c.rewiring.eliminated[b, s] for c in result["chunks"]]
            series[f"formed_{proj}"] = [int(f.sum()) for f in formed]
            series[f"eliminated_{proj}"] = [int(e.sum()) for e in eliminated]
            series[f"formed_{proj}_by_distance"] = [f.astype(int).tolist() for f in formed]
            series[f"eliminated_{proj}_by_distance"] = [e.astype(int).tolist() for e in eliminated]
        series["refused"] = [int(c.rewiring.refused[b]) for c in result["chunks"]]
        durations = np.diff(result["times_s"])
        series["input_rate_hz"] = [
            float(c.input_spikes[b].sum() / model.n / d)
            for c, d in zip(result["chunks"], durations, strict=True)
        ]
        series["target_rate_hz"] = [
            float(c.target_spikes[b].sum() / model.n / d)
            for c, d in zip(result["chunks"], durations, strict=True)
        ]
        series["overflow_steps"] = [int(c.overflow_steps[b]) for c in result["chunks"]]
        per_seed.append(series)
    del dt_steps
    return per_seed


def run(args: argparse.Namespace) -> int:
    error = check_output_folder(args.out)
    if error is not None:
        print(f"jaxplastic topomap: error: {error}", file=sys.stderr)
        return 2
    if args.xla_threads == "1":
        from .._runtime import single_threaded_cpu

        single_threaded_cpu()

    import jax
    import numpy as np
    from tqdm import tqdm

    from . import _topographic as topo, _topographic_plots as plots

    factory = topo.TopographicMap.bamford if args.rule == "bamford" else topo.TopographicMap
    model = factory(scale=args.scale)
    seeds = list(range(args.seed, args.seed + args.seeds))
    interval_s = model.stimulus_interval / 1000.0
    duration = max(1, round(args.duration / interval_s)) * interval_s
    record_every = args.record_every or (1.0 if duration >= 10.0 else max(duration / 10, 0.02))
    print(
        f"jaxplastic topomap on {jax.default_backend()}: scale {args.scale} "
        f"({model.n:,} + {model.n:,} neurons), {duration:g} s of model time "
        f"({round(duration * 1000 / model.dt):,} steps of {model.dt} ms), "
        f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} {seeds}, rule {args.rule}"
    )
    print("  building the networks and compiling (once per chunk length) ...", flush=True)
    bar = None
    wall_start = time.perf_counter()

    def progress(info: dict[str, float]) -> None:
        nonlocal bar
        if args.no_progress:
            return
        if bar is None:
            bar = tqdm(
                total=round(duration, 3),
                unit="s",
                unit_scale=False,
                bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} s model time{postfix}",
                file=sys.stderr,
            )
        bar.update(round(info["advance_s"], 6))
        bar.set_postfix_str(
            f"wall {info['wall_s']:.1f} s, real-time factor {info['rtf']:.2f}x, "
            f"{info['steps_per_s']:,.0f} steps/s",
            refresh=True,
        )

    result = topo.run_topographic(
        model,
        duration_s=duration,
        seeds=seeds,
        record_every_s=record_every,
        progress=progress,
    )
    if bar is not None:
        bar.close()
    total_wall = time.perf_counter() - wall_start
    timing = result["timing"]
    per_seed = _collect(result, model)
    times = np.asarray(result["times_s"])

    # Displacement maps and receptive fields of seed 0, initial and final.
    n = model.n
    maps: dict[str, dict[str, Any]] = {}
    centres, quality = {}, {}
    for when in ("initial", "final"):
        post, weight = result[when]["post"][0], result[when]["weight"][0]
        maps[when] = {
            "ff": topo.displacement_maps(post[:n], weight[:n], model.side),
            "lat": topo.displacement_maps(post[n:], weight[n:], model.side),
        }
        q = topo.map_quality(post[:n], weight[:n], model.side)
        centres[when] = q.centre
        quality[when] = (q.mean_distance, q.mean_spread)
    expected = {
        "ff": topo.expected_degree(model.side, model.ff_peak, model.ff_sigma),
        "lat": topo.expected_degree(model.side, model.lat_peak, model.lat_sigma, autapses=False),
    }

    def stack(key):
        return np.asarray([s[key] for s in per_seed], dtype=float)

    figures = [
        plots.plot_displacement(
            args.out / "displacement.png",
            maps,
            {"ff": (model.ff_peak, model.ff_sigma), "lat": (model.lat_peak, model.lat_sigma)},
        ),
        plots.plot_degrees(
            args.out / "degrees.png",
            times,
            {
                f"{kind}_degree_{proj}_{stat}": stack(f"{kind}_degree_{stat}_{proj}")
                for kind in ("in", "out")
                for proj in ("ff", "lat")
                for stat in ("mean", "sd")
            },
            expected,
        ),
        plots.plot_rewiring(
            args.out / "rewiring.png",
            times,
            {
                f"{event}_{proj}": np.sum(
                    [np.asarray(s[f"{event}_{proj}_by_distance"]) for s in per_seed], axis=0
                )
                for event in ("formed", "eliminated")
                for proj in ("ff", "lat")
            },
            {"ff": model.ff_sigma, "lat": model.lat_sigma},
        ),
        plots.plot_receptive_fields(
            args.out / "receptive_fields.png", model.side, centres, quality
        ),
        plots.plot_map_quality(
            args.out / "map_quality.png",
            times,
            {"rf_distance": stack("rf_distance"), "rf_spread": stack("rf_spread")},
        ),
    ]

    summary = {}
    for key in (
        "rf_distance",
        "rf_spread",
        "synapses_ff",
        "synapses_lat",
        "mean_weight_ff",
        "mean_weight_lat",
        "in_degree_mean_ff",
        "in_degree_mean_lat",
    ):
        values = stack(key)
        summary[key] = {"initial": _mean_sd(values[:, 0]), "final": _mean_sd(values[:, -1])}
    for key in ("target_rate_hz", "input_rate_hz"):
        values = stack(key)
        summary[key] = {"first": _mean_sd(values[:, 0]), "last": _mean_sd(values[:, -1])}

    def to_list(x):
        return np.where(np.isfinite(x), x, np.nan).tolist()

    metrics = {
        "command": "jaxplastic topomap",
        "model": {
            "scale": model.scale,
            "side": model.side,
            "neurons_per_layer": model.n,
            "dt_ms": model.dt,
            "rule": args.rule,
            "stimulus_interval_ms": model.stimulus_interval,
            "rewiring_interval_ms": model.rewiring_interval,
            "attempts_per_projection_and_update": model.attempts,
            "ff": {"p_peak": model.ff_peak, "sigma": model.ff_sigma},
            "lat": {"p_peak": model.lat_peak, "sigma": model.lat_sigma},
            "g_max_uS": model.g_max,
            "weight_threshold_uS": model.weight_threshold,
            "p_elim_depressed": model.p_elim_depressed,
            "p_elim_potentiated": model.p_elim_potentiated,
            "in_degree_cap": model.in_degree_cap,
            "stdp": None
            if model.stdp is None
            else {
                "tau_plus_ms": model.stdp.tau_plus,
                "tau_minus_ms": model.stdp.tau_minus,
                "a_plus_uS": model.stdp.a_plus,
                "a_minus_uS": model.stdp.a_minus,
            },
        },
        "expected_degree": {
            **expected,
            "continuum_2_pi_p_sigma2": {
                "ff": 2 * math.pi * model.ff_peak * model.ff_sigma**2,
                "lat": 2 * math.pi * model.lat_peak * model.lat_sigma**2,
            },
        },
        "seeds": seeds,
        "duration_s": duration,
        "timing": {**timing, "total_wall_s": total_wall, "backend": jax.default_backend()},
        "times_s": times.tolist(),
        "summary": summary,
        "per_seed": per_seed,
        "displacement_seed0": {
            when: {
                proj: {k: to_list(np.asarray(v, float)) for k, v in maps[when][proj].items()}
                for proj in ("ff", "lat")
            }
            for when in ("initial", "final")
        },
        "figures": [p.name for p in figures],
    }
    metrics_path = args.out / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=1, allow_nan=True))

    def fmt(entry, digits):
        text = f"{entry['mean']:.{digits}f}"
        return f"{text} +- {entry['sd']:.{digits}f}" if len(seeds) > 1 else text

    print(
        f"  simulated {duration:g} s of model time in {timing['run_wall_s']:.1f} s wall "
        f"(real-time factor {timing['rtf']:.2f}x, {timing['steps_per_s']:,.0f} steps/s; "
        f"compilation {timing['compile_s']:.1f} s)"
    )
    print("  metric                          initial                 final")
    for key, label, digits in (
        ("rf_distance", "RF centre distance from ideal", 3),
        ("rf_spread", "RF spread", 3),
        ("synapses_ff", "feed-forward synapses", 0),
        ("synapses_lat", "lateral synapses", 0),
        ("mean_weight_ff", "feed-forward mean weight (uS)", 4),
        ("mean_weight_lat", "lateral mean weight (uS)", 4),
    ):
        initial, final = fmt(summary[key]["initial"], digits), fmt(summary[key]["final"], digits)
        print(f"  {label:30s}  {initial:22s}  {final}")
    print(f"  wrote {metrics_path} and {', '.join(p.name for p in figures)} in {args.out}")
    return 0
