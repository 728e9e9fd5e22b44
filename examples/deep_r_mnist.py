"""Dense vs static sparse vs DEEP R: e-prop classifiers on the offline MNIST digits.

Reproduces the shape of the GeNN structural-plasticity paper's classifier table (Knight, Senk
& Nowotny 2025; MODELS.md section 1) on the offline default dataset: the dense network, and
at input/recurrent densities of 1 %/1 % and 5 %/1 % a static sparse network and the same
network trained with DEEP R (signed L1 + rewiring after every Adam step, the synapse count
conserved). Every configuration is trained from the same seeds; the script prints a markdown
table of mean +- sd test accuracy and writes every number to a JSON file.

The defaults are tiny (one seed, 256 digits, a 64-neuron network, one epoch) and finish on
a CPU in about a minute; `--full` runs the experiment reported in docs/deep_r.md:

    python examples/deep_r_mnist.py                    # smoke run
    python examples/deep_r_mnist.py --full             # 3 seeds, 128 LIF, 4,000 digits
    python examples/deep_r_mnist.py --full --seeds 5 --epochs 20 --out results.json
"""

import argparse
import json
import math
import platform
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from jaxplastic.datasets import load
from jaxplastic.learning import trainer, with_padding
from jaxplastic.models import accuracy, dense_classifier, recurrent_classifier

# (name, method, p_in, p_rec); density written input %/recurrent % as in the paper.
CONFIGS = [
    ("dense", "dense", 1.0, 1.0),
    ("static 1/1", "static", 0.01, 0.01),
    ("DEEP R 1/1", "deep_r", 0.01, 0.01),
    ("static 5/1", "static", 0.05, 0.01),
    ("DEEP R 5/1", "deep_r", 0.05, 0.01),
]

# The paper's N-MNIST row (LIF, 5 seeds, final epoch test accuracy %), for the table.
PUBLISHED_NMNIST = {
    "dense": 97.57,
    "static 1/1": 95.31,
    "DEEP R 1/1": 96.83,
    "static 5/1": 97.10,
    "DEEP R 5/1": 98.09,
}

TINY = dict(hidden=64, num_steps=30, train_size=256, epochs=1, seeds=1)
FULL = dict(hidden=128, num_steps=50, train_size=4000, epochs=10, seeds=3)


def _scale_sparse_weights(model, p_in: float, p_rec: float):
    """Rescales a sparse model's initial weights from 1/sqrt(n_pre) to 1/sqrt(p * n_pre).

    With the paper's Normal(0, 1/sqrt(n_pre)) a 1 % network receives a tenth of the dense
    network's input current and starts silent; scaling by 1/sqrt(p) gives every model the
    same expected input variance per neuron (``--init fan_in``).
    """
    return eqx.tree_at(
        lambda m: (m.input.synapses["weight"], m.recurrent.synapses["weight"]),
        model,
        (model.input.weight / math.sqrt(p_in), model.recurrent.weight / math.sqrt(p_rec)),
    )


def build_model(method: str, p_in: float, p_rec: float, args, seed: int):
    """The dense model, or the sparse one with a tight (static) or padded (DEEP R) capacity."""
    key = jax.random.key(seed)
    if method == "dense":
        return dense_classifier(
            784, 10, n_hidden=args.hidden, weight_gain=args.weight_gain, key=key
        )
    model = recurrent_classifier(
        784,
        10,
        n_hidden=args.hidden,
        p_in=p_in,
        p_rec=p_rec,
        weight_gain=args.weight_gain,
        key=key,
    )
    if args.init == "fan_in":
        model = _scale_sparse_weights(model, p_in, p_rec)
    # Static sparsity needs no spare slot; DEEP R gets capacity (1 + r) * longest row.
    return with_padding(model, args.padding if method == "deep_r" else 0.0)


def test_accuracy(model, test) -> float:
    correct = 0.0
    for spikes, labels in test.batches(250, seed=0, shuffle=False):
        correct += float(accuracy(model, spikes, labels)) * len(labels)
    return correct / len(test)


def run(name: str, method: str, p_in: float, p_rec: float, seed: int, args, train, test):
    model = build_model(method, p_in, p_rec, args, seed)
    train_method = trainer(method, learning_rate=args.lr, l1_strength=args.l1)
    state = train_method.init(model, key=jax.random.key(10_000 + seed))
    sparse = method != "dense"
    synapses = (
        [int(model.input.num_synapses), int(model.recurrent.num_synapses)]
        if sparse
        else [int(model.w_in.size), int(model.w_rec.size) - args.hidden]
    )
    slots = (
        [model.input.post.size, model.recurrent.post.size]
        if sparse
        else [model.w_in.size, model.w_rec.size]
    )
    record = dict(
        name=name,
        method=method,
        p_in=p_in,
        p_rec=p_rec,
        seed=seed,
        synapses_initial=synapses,
        slots=slots,
        epochs=[],
    )
    first_step = None
    for epoch in range(args.epochs):
        start = time.perf_counter()
        sums = dict(loss=0.0, accuracy=0.0, rate_hz=0.0)
        rewired = np.zeros((2, 3), np.int64)  # (input, recurrent) x (removed, added, shortfall)
        n = 0
        batches = train.batches(args.batch_size, seed=1000 * seed + epoch, drop_remainder=True)
        for batch in batches:
            t0 = time.perf_counter()
            model, state, info = train_method.step(model, state, batch)
            for key in sums:
                sums[key] += float(getattr(info, key))
            rewired += np.asarray([list(map(int, info.input)), list(map(int, info.recurrent))])
            if first_step is None:
                first_step = time.perf_counter() - t0  # includes compilation
            n += 1
        seconds = time.perf_counter() - start
        acc = test_accuracy(model, test)
        entry = {k: v / n for k, v in sums.items()}
        entry.update(
            epoch=epoch,
            seconds=seconds,
            test_accuracy=acc,
            removed=rewired[:, 0].tolist(),
            added=rewired[:, 1].tolist(),
            shortfall=rewired[:, 2].tolist(),
        )
        record["epochs"].append(entry)
        print(
            f"  {name:11s} seed {seed} epoch {epoch}: loss {entry['loss']:.3f} train "
            f"{entry['accuracy']:.3f} test {acc:.3f} rate {entry['rate_hz']:.1f} Hz "
            f"rewired {rewired[:, 0].tolist()} {seconds:.1f} s",
            flush=True,
        )
    record["first_step_seconds"] = first_step
    record["test_accuracy"] = record["epochs"][-1]["test_accuracy"]
    record["synapses_final"] = (
        [int(model.input.num_synapses), int(model.recurrent.num_synapses)] if sparse else synapses
    )
    return record


def summarize(records, published=PUBLISHED_NMNIST) -> list[dict]:
    rows = []
    for name, *_ in CONFIGS:
        runs = [r for r in records if r["name"] == name]
        if not runs:
            continue
        acc = 100 * np.asarray([r["test_accuracy"] for r in runs])
        # Epoch time: every epoch but the first (which includes compilation), all seeds.
        later = [e["seconds"] for r in runs for e in r["epochs"][1:]]
        first = [e["seconds"] for r in runs for e in r["epochs"][:1]]
        epochs = len(runs[0]["epochs"])
        removed = np.asarray([np.sum([e["removed"] for e in r["epochs"]], axis=0) for r in runs])
        shortfall = sum(int(np.sum([e["shortfall"] for e in r["epochs"]])) for r in runs)
        rows.append(
            dict(
                name=name,
                seeds=len(runs),
                mean=float(acc.mean()),
                sd=float(acc.std(ddof=1)) if len(runs) > 1 else 0.0,
                epoch_seconds=float(np.median(later if later else first)),
                synapses=runs[0]["synapses_initial"],
                synapses_final=runs[0]["synapses_final"],
                slots=runs[0]["slots"],
                removed_per_epoch=(removed.mean(axis=0) / epochs).tolist(),
                shortfall=shortfall,
                published=published.get(name),
            )
        )
    return rows


def markdown(rows) -> str:
    lines = [
        "| configuration | test accuracy % (mean +- sd) | seeds | s / epoch | synapses in + rec "
        "| slots in + rec | rewired per epoch in / rec | shortfall | paper, N-MNIST |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rewired = (
            " / ".join(f"{x:.0f}" for x in r["removed_per_epoch"])
            if r["name"].startswith("DEEP R")
            else "-"
        )
        lines.append(
            f"| {r['name']} | {r['mean']:.2f} +- {r['sd']:.2f} | {r['seeds']} "
            f"| {r['epoch_seconds']:.1f} | {r['synapses'][0]:,} + {r['synapses'][1]:,} "
            f"| {r['slots'][0]:,} + {r['slots'][1]:,} | {rewired} "
            f"| {r['shortfall'] if r['name'].startswith('DEEP R') else '-'} "
            f"| {r['published']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help=f"the documented experiment: {FULL}")
    # Scale flags default to None: the tiny smoke run, or FULL with --full; explicit values win.
    parser.add_argument("--hidden", type=int, help="hidden LIF neurons (64; full: 128)")
    parser.add_argument("--num-steps", type=int, help="time steps of 1 ms (30; full: 50)")
    parser.add_argument("--train-size", type=int, help="training digits (256; full: 4000)")
    parser.add_argument("--epochs", type=int, help="epochs (1; full: 10)")
    parser.add_argument("--seeds", type=int, help="seeds per configuration (1; full: 3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate")
    parser.add_argument("--l1", type=float, default=0.1, help="DEEP R L1 strength C")
    parser.add_argument("--padding", type=float, default=2.0, help="DEEP R spare capacity r")
    parser.add_argument("--weight-gain", type=float, default=1.0, help="initial weight scale")
    parser.add_argument(
        "--init",
        choices=["fan_in", "paper"],
        default="fan_in",
        help="sparse weight std: gain/sqrt(p n_pre) (fan_in) or gain/sqrt(n_pre) (paper)",
    )
    parser.add_argument(
        "--configs", nargs="+", default=None, help="subset of: " + ", ".join(c[0] for c in CONFIGS)
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    for name, value in (FULL if args.full else TINY).items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    train = load("mnist_offline", num_steps=args.num_steps)
    order = np.random.default_rng(0).permutation(len(train))
    train = train.subset(order[: args.train_size])
    test = load("mnist_offline", split="test", num_steps=args.num_steps)
    configs = [c for c in CONFIGS if args.configs is None or c[0] in args.configs]
    print(
        f"{len(train)} training / {len(test)} test digits, {args.num_steps} steps, "
        f"{args.hidden} LIF, {args.epochs} epochs, {args.seeds} seeds, on {jax.devices()[0]}",
        flush=True,
    )
    records = []
    start = time.perf_counter()
    for seed in range(args.seeds):
        for name, method, p_in, p_rec in configs:
            records.append(run(name, method, p_in, p_rec, seed, args, train, test))
    total = time.perf_counter() - start
    rows = summarize(records)
    print(markdown(rows))
    print(f"total {total / 60:.1f} min")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        meta = dict(
            jax=jax.__version__,
            device=str(jax.devices()[0]),
            machine=platform.machine(),
            total_seconds=total,
        )
        args.out.write_text(
            json.dumps(dict(settings=settings, meta=meta, summary=rows, runs=records), indent=1)
        )
        print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
