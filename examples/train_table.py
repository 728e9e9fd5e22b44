"""The README's `jaxplastic train` results table: dense vs static vs DEEP R, 3 seeds.

Runs ``jaxplastic train`` (one process per run) for dense, static sparse and DEEP R at
input/recurrent densities 1 %/1 % and 5 %/1 %, each with seeds 0, 1, 2 and the command's
defaults (those of ``examples/deep_r_mnist.py --full``: the offline digits, 128 LIF, 50 steps,
10 epochs, batch 32, Adam 5e-3, L1 0.1, padding 2), then collects every run's
``metrics.json`` into a markdown table (mean +- sd final test accuracy, median epoch time)
beside the paper's N-MNIST numbers (MODELS.md section 1), a JSON file, and a copy of every
run's ``metrics.json`` (per-epoch numbers) in a folder of the same name.

Every run is started with ``--resume``, so running the script again continues an interrupted
run from its last checkpoint and skips finished ones. Extra arguments after ``--`` go to every
``jaxplastic train`` call (a smoke run: ``-- --epochs 1 --train-size 256 --hidden 32``)::

    python examples/train_table.py                             # about 30 min on 2 CPU cores
    python examples/train_table.py --summarize-only            # just the table, from the runs
    python examples/train_table.py --seeds 1 --runs-dir runs/smoke -- --epochs 1 --train-size 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# (name, method, p_in, p_rec)
CONFIGS = [
    ("dense", "dense", None, None),
    ("static 1/1", "static", 0.01, 0.01),
    ("DEEP R 1/1", "deep_r", 0.01, 0.01),
    ("static 5/1", "static", 0.05, 0.01),
    ("DEEP R 5/1", "deep_r", 0.05, 0.01),
]
# The paper's N-MNIST row (LIF, 5 seeds, final epoch test accuracy %; MODELS.md section 1).
PUBLISHED_NMNIST = {
    "dense": 97.57,
    "static 1/1": 95.31,
    "DEEP R 1/1": 96.83,
    "static 5/1": 97.10,
    "DEEP R 5/1": 98.09,
}


def folder_name(name: str, seed: int) -> str:
    return f"{name.lower().replace(' ', '_').replace('/', '-')}_seed{seed}"


def command(name: str, method: str, p_in, p_rec, seed: int, out: Path, extra: list[str]):
    argv = [sys.executable, "-m", "jaxplastic._cli", "train", "--method", method]
    if p_in is not None:
        argv += ["--p-in", str(p_in), "--p-rec", str(p_rec)]
    return argv + ["--seed", str(seed), "--out", str(out), "--resume", "--no-progress", *extra]


def summarize(runs_dir: Path, seeds: int) -> list[dict]:
    rows = []
    for name, method, p_in, p_rec in CONFIGS:
        metrics = []
        for seed in range(seeds):
            path = runs_dir / folder_name(name, seed) / "metrics.json"
            if path.exists():
                m = json.loads(path.read_text())
                if m["status"] == "done":
                    metrics.append(m)
        if not metrics:
            continue
        acc = [100 * m["summary"]["final_test_accuracy"] for m in metrics]
        epoch_s = [m["summary"]["median_epoch_seconds"] for m in metrics]
        rows.append(
            dict(
                name=name,
                method=method,
                p_in=p_in,
                p_rec=p_rec,
                seeds=[m["config"]["seed"] for m in metrics],
                test_accuracy=acc,
                mean=statistics.mean(acc),
                sd=statistics.stdev(acc) if len(acc) > 1 else 0.0,
                epoch_seconds=statistics.median(epoch_s),
                first_epoch_seconds=statistics.median(
                    m["summary"]["first_epoch_seconds"] for m in metrics
                ),
                synapses=metrics[0]["model"]["synapses_initial"],
                slots=metrics[0]["model"]["slots"],
                synapses_final=metrics[0]["epochs"][-1]["synapses"],
                removed_per_epoch=[
                    statistics.mean(m["summary"]["removed_per_epoch"][i] for m in metrics)
                    for i in (0, 1)
                ],
                shortfall=sum(sum(m["summary"]["shortfall"]) for m in metrics),
                epochs=metrics[0]["config"]["epochs"],
                published=PUBLISHED_NMNIST[name],
            )
        )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| configuration | test accuracy % (mean ± sd) | per seed | s / epoch "
        "| synapses in + rec (seed 0) | slots in + rec | rewired per epoch, in / rec "
        "| shortfall | paper, N-MNIST (5 seeds) |",
        "|---|---|---|---:|---|---|---|---:|---:|",
    ]
    for r in rows:
        deep_r = r["method"] == "deep_r"
        rewired = " / ".join(f"{x:,.0f}" for x in r["removed_per_epoch"]) if deep_r else "-"
        lines.append(
            f"| {r['name']} | **{r['mean']:.2f} ± {r['sd']:.2f}** "
            f"| {', '.join(f'{a:.1f}' for a in r['test_accuracy'])} "
            f"| {r['epoch_seconds']:.1f} | {r['synapses'][0]:,} + {r['synapses'][1]:,} "
            f"| {r['slots'][0]:,} + {r['slots'][1]:,} | {rewired} "
            f"| {r['shortfall'] if deep_r else '-'} | {r['published']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument(
        "--runs-dir", type=Path, default=Path("runs/train_table"), help="one folder per run"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("examples/results/train_table.json"), help="summary"
    )
    parser.add_argument("--configs", nargs="+", default=None, help="subset of the names")
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args(argv)
    configs = [c for c in CONFIGS if args.configs is None or c[0] in args.configs]
    started = time.perf_counter()
    if not args.summarize_only:
        # Seed-major, so that a partial run already has every configuration.
        for seed in range(args.seeds):
            for name, method, p_in, p_rec in configs:
                out = args.runs_dir / folder_name(name, seed)
                cmd = command(name, method, p_in, p_rec, seed, out, extra)
                print(f"$ {' '.join(cmd[1:])}", flush=True)
                status = subprocess.run(cmd).returncode
                if status != 0:
                    print(f"{name} seed {seed}: exit status {status}", flush=True)
                    return status
    rows = summarize(args.runs_dir, args.seeds)
    table = markdown(rows)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            dict(
                extra_arguments=extra,
                # Wall time of the training runs (None when only summarizing).
                wall_seconds=None if args.summarize_only else time.perf_counter() - started,
                rows=rows,
            ),
            indent=1,
        )
    )
    args.out.with_suffix(".md").write_text(table + "\n")
    # Every run's per-epoch metrics beside the summary (checkpoints stay in --runs-dir).
    per_run = args.out.with_suffix("")
    per_run.mkdir(exist_ok=True)
    for name, *_ in configs:
        for seed in range(args.seeds):
            source = args.runs_dir / folder_name(name, seed) / "metrics.json"
            if source.exists():
                (per_run / f"{folder_name(name, seed)}.json").write_text(source.read_text())
    print(f"wrote {args.out}, {args.out.with_suffix('.md')} and {per_run}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
