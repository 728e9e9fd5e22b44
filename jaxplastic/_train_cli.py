"""`jaxplastic train`: dense, static sparse or DEEP R classifiers with e-prop, on any dataset.

Trains the recurrent classifier of the GeNN structural-plasticity paper (Knight, Senk &
Nowotny 2025; MODELS.md section 1) with the library's epoch loop
(:func:`jaxplastic.learning.train_epochs`), prints per-epoch metrics, writes them to
``metrics.json`` / ``metrics.csv`` with a ``curves.png`` figure, and checkpoints the whole
state after every epoch; ``--resume`` continues from the latest checkpoint to the same result
as an uninterrupted run. Defaults are those of ``examples/deep_r_mnist.py --full``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ._cli_args import (
    check_output_folder,
    density,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)

HELP = (
    "train a recurrent spiking classifier (dense, static sparse or DEEP R; e-prop) with "
    "per-epoch checkpoints, metrics and plots; --resume continues a run"
)

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130
CHECKPOINT_PREFIX = "epoch_"


def add_data_arguments(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """``--dataset`` and ``--data-dir`` (shared with ``evaluate``)."""
    from .datasets import DATASETS, DEFAULT_DATASET

    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default=DEFAULT_DATASET if defaults else None,
        help=f"dataset of jaxplastic.datasets (default {DEFAULT_DATASET}, offline)"
        if defaults
        else "dataset (default: the checkpoint's)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="tfds data folder for datasets read from files (default $TFDS_DATA_DIR or "
        "~/tensorflow_datasets)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument(
        "--method",
        choices=("dense", "static", "deep_r"),
        default="deep_r",
        help="dense, static sparse, or sparse with DEEP R rewiring (default deep_r)",
    )
    parser.add_argument("--neuron", choices=("lif", "alif"), default="lif", help="(default lif)")
    parser.add_argument("--hidden", type=positive_int, default=128, help="(default 128)")
    parser.add_argument(
        "--p-in", type=density, default=0.01, help="input density in (0, 1] (default 0.01)"
    )
    parser.add_argument(
        "--p-rec", type=density, default=0.01, help="recurrent density in (0, 1] (default 0.01)"
    )
    parser.add_argument(
        "--padding",
        type=non_negative_float,
        default=None,
        help="spare row capacity r: capacity = ceil((1 + r) * longest row) (default 2 for "
        "deep_r, 0 for static)",
    )
    parser.add_argument(
        "--capacity-in", type=positive_int, default=None, help="explicit input row capacity"
    )
    parser.add_argument(
        "--capacity-rec", type=positive_int, default=None, help="explicit recurrent row capacity"
    )
    parser.add_argument(
        "--l1", type=non_negative_float, default=0.1, help="DEEP R L1 strength C (default 0.1)"
    )
    parser.add_argument(
        "--lr", type=positive_float, default=5e-3, help="Adam learning rate (default 5e-3)"
    )
    parser.add_argument("--epochs", type=positive_int, default=10, help="(default 10)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="(default 32)")
    parser.add_argument(
        "--num-steps", type=positive_int, default=50, help="1 ms time steps per example (50)"
    )
    parser.add_argument(
        "--train-size", type=positive_int, default=None, help="training examples (default all)"
    )
    parser.add_argument(
        "--test-size", type=positive_int, default=None, help="test examples (default all)"
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="(default 0)")
    parser.add_argument(
        "--init",
        choices=("fan_in", "paper"),
        default="fan_in",
        help="sparse weight std gain/sqrt(p n_pre) (fan_in, default) or gain/sqrt(n_pre)",
    )
    parser.add_argument(
        "--weight-gain", type=positive_float, default=1.0, help="initial weight scale (1)"
    )
    parser.add_argument(
        "--encoding", choices=("latency", "rate"), default="latency", help="image datasets"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/train"), help="output folder (default runs/train)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in OUT/checkpoints (same settings; "
        "--epochs may grow)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="start over in an OUT that holds a run"
    )
    parser.add_argument(
        "--checkpoint-every",
        type=non_negative_int,
        default=0,
        help="also checkpoint every N batches inside an epoch (default 0: once per epoch)",
    )
    parser.add_argument(
        "--keep", type=positive_int, default=2, help="checkpoints kept (default 2, newest)"
    )
    parser.add_argument("--no-plots", action="store_true", help="do not write curves.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# -- outputs -----------------------------------------------------------------------------------


def error(command: str, message: str) -> None:
    print(f"jaxplastic {command}: error: {message}", file=sys.stderr, flush=True)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


CSV_FIELDS = (
    "epoch",
    "loss",
    "train_accuracy",
    "test_accuracy",
    "rate_hz",
    "seconds",
    "removed_in",
    "removed_rec",
    "added_in",
    "added_rec",
    "shortfall_in",
    "shortfall_rec",
    "synapses_in",
    "synapses_rec",
    "resumed_mid_epoch",
    "first_in_process",
)


def metrics_csv(history) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in history:
        writer.writerow(
            [
                r["epoch"],
                f"{r['loss']:.6g}",
                f"{r['train_accuracy']:.6g}",
                f"{r['test_accuracy']:.6g}",
                f"{r['rate_hz']:.6g}",
                f"{r['seconds']:.4g}",
                *r["removed"],
                *r["added"],
                *r["shortfall"],
                *r["synapses"],
                int(r["resumed_mid_epoch"]),
                int(r.get("first_in_process", r["epoch"] == 1)),
            ]
        )
    return buffer.getvalue()


def plot_curves(path: Path, history, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), constrained_layout=True)
    axes[0].plot(epochs, [r["loss"] for r in history], "o-")
    axes[0].set(xlabel="epoch", ylabel="training loss (CE per step)", title="loss")
    axes[1].plot(epochs, [100 * r["train_accuracy"] for r in history], "o-", label="train")
    axes[1].plot(epochs, [100 * r["test_accuracy"] for r in history], "s-", label="test")
    axes[1].set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    axes[1].legend()
    axes[2].plot(epochs, [r["seconds"] for r in history], "o-")
    axes[2].set(xlabel="epoch", ylabel="s", title="epoch time (first: + compilation)")
    axes[2].set_ylim(bottom=0)
    axes[3].plot(epochs, [r["removed"][0] for r in history], "o-", label="input")
    axes[3].plot(epochs, [r["removed"][1] for r in history], "s-", label="recurrent")
    axes[3].set(xlabel="epoch", ylabel="synapses", title="rewired per epoch (DEEP R)")
    axes[3].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def checkpoint_path(folder: Path, epoch: int, batch: int) -> Path:
    suffix = "" if batch == 0 else f"_batch_{batch:06d}"
    return folder / f"{CHECKPOINT_PREFIX}{epoch:04d}{suffix}.npz"


def run_checkpoints(folder: Path) -> list[Path]:
    """The run's checkpoints, oldest first (by their position in training, from the name)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f"{CHECKPOINT_PREFIX}*.npz") if not p.name.startswith("."))


def _prune(folder: Path, keep: int) -> None:
    for old in run_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)


def _summary(history) -> dict[str, Any]:
    if not history:
        return {"epochs_done": 0}
    # Epoch time: without epochs that include compilation (the first of each process) or
    # that were resumed part-way.
    steady = [
        r["seconds"]
        for r in history
        if not r["resumed_mid_epoch"] and not r.get("first_in_process", r["epoch"] == 1)
    ]
    return {
        "epochs_done": len(history),
        "final_test_accuracy": history[-1]["test_accuracy"],
        "final_train_accuracy": history[-1]["train_accuracy"],
        "median_epoch_seconds": statistics.median(steady or [history[0]["seconds"]]),
        "first_epoch_seconds": history[0]["seconds"],
        "removed_per_epoch": [sum(r["removed"][i] for r in history) / len(history) for i in (0, 1)],
        "shortfall": [sum(r["shortfall"][i] for r in history) for i in (0, 1)],
    }


# -- the command -------------------------------------------------------------------------------


def config_from_args(args):
    from .learning._experiment import ClassifierConfig

    return ClassifierConfig(
        dataset=args.dataset,
        method=args.method,
        neuron=args.neuron,
        hidden=args.hidden,
        p_in=args.p_in,
        p_rec=args.p_rec,
        padding=args.padding,
        capacity_in=args.capacity_in,
        capacity_rec=args.capacity_rec,
        l1=args.l1,
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        num_steps=args.num_steps,
        train_size=args.train_size,
        test_size=args.test_size,
        seed=args.seed,
        init=args.init,
        weight_gain=args.weight_gain,
        encoding=args.encoding,
        data_dir=args.data_dir,
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        error("train", str(exc))
        return EXIT_BAD_INPUT
    message = check_output_folder(args.out)
    if message is not None:
        error("train", message)
        return EXIT_BAD_INPUT
    ckpt_dir = args.out / "checkpoints"
    existing = run_checkpoints(ckpt_dir)
    if existing and not (args.resume or args.overwrite):
        error(
            "train",
            f"{ckpt_dir} already holds a run ({existing[-1].name}); pass --resume to continue "
            "it or --overwrite to start over",
        )
        return EXIT_BAD_INPUT

    import jax
    import numpy as np

    from ._checkpoint import CheckpointError
    from .learning._experiment import (
        NonFiniteLossError,
        init_run,
        load_data,
        load_run,
        save_run,
        train_epochs,
    )

    try:
        train, test = load_data(config)
    except (ValueError, TypeError, FileNotFoundError, ConnectionError) as exc:
        error("train", f"dataset {config.dataset!r}: {exc}")
        return EXIT_BAD_INPUT

    if args.overwrite and not args.resume:
        for old in existing:
            old.unlink()
        existing = []
    resumed_from = None
    try:
        if args.resume and existing:
            resumed_from = existing[-1]
            config, state = load_run(resumed_from, config)
            if (state.model.n_in, state.model.n_out) != (train.num_inputs, train.num_classes):
                raise CheckpointError(
                    f"{resumed_from}: the model has {state.model.n_in} inputs and "
                    f"{state.model.n_out} outputs, the dataset {train.num_inputs} and "
                    f"{train.num_classes}"
                )
        else:
            state = init_run(config, train.num_inputs, train.num_classes)
    except CheckpointError as exc:
        error("train", f"cannot resume: {exc}")
        return EXIT_BAD_INPUT
    except ValueError as exc:
        error("train", str(exc))
        return EXIT_BAD_INPUT

    model = state.model
    sparse = hasattr(model, "input")
    if sparse:
        shape = (
            f"{int(model.input.num_synapses):,} + {int(model.recurrent.num_synapses):,} synapses "
            f"in {model.input.post.size:,} + {model.recurrent.post.size:,} slots"
        )
    else:
        shape = f"{model.w_in.size:,} + {model.w_rec.size:,} weights"
    n_batches = train.num_batches(config.batch_size, drop_remainder=True)
    print(
        f"jaxplastic train on {jax.default_backend()}: {config.method} {config.neuron.upper()} "
        f"{model.n_in}-{model.n_hidden}-{model.n_out}, {shape}; {config.dataset} "
        f"{len(train):,} train / {len(test):,} test, {config.num_steps} steps, "
        f"{config.epochs} epochs of {n_batches} batches of {config.batch_size}, seed {config.seed}",
        flush=True,
    )
    if args.resume:
        if resumed_from is None:
            print(f"  --resume: no checkpoint in {ckpt_dir}; starting from scratch", flush=True)
        else:
            print(
                f"  resumed from {resumed_from.name}: epoch {state.epoch} done, batch "
                f"{state.batch} of epoch {state.epoch + 1}",
                flush=True,
            )

    title = (
        f"{config.method} {config.neuron}, {config.dataset}, p_in {config.p_in:g} p_rec "
        f"{config.p_rec:g}, seed {config.seed}"
        if sparse
        else f"dense {config.neuron}, {config.dataset}, seed {config.seed}"
    )
    outputs = {"metrics": args.out / "metrics.json", "csv": args.out / "metrics.csv"}
    started = time.perf_counter()

    def write_metrics(history, status: str) -> None:
        metrics = {
            "command": "jaxplastic train",
            "status": status,
            "config": config.to_dict(),
            "backend": jax.default_backend(),
            "jax": jax.__version__,
            "model": {
                "n_in": model.n_in,
                "n_hidden": model.n_hidden,
                "n_out": model.n_out,
                "slots": (
                    [int(model.input.post.size), int(model.recurrent.post.size)]
                    if sparse
                    else [int(model.w_in.size), int(model.w_rec.size)]
                ),
                "synapses_initial": (
                    [int(model.input.num_synapses), int(model.recurrent.num_synapses)]
                    if sparse
                    else [int(model.w_in.size), int(model.w_rec.size) - model.n_hidden]
                ),
            },
            "train_size": len(train),
            "test_size": len(test),
            "batches_per_epoch": n_batches,
            "summary": _summary(history),
            "epochs": list(history),
        }
        write_atomic(outputs["metrics"], json.dumps(metrics, indent=1))
        write_atomic(outputs["csv"], metrics_csv(history))
        if not args.no_plots and history:
            plot_curves(args.out / "curves.png", history, title)

    def save(run_state) -> Path:
        path = save_run(
            checkpoint_path(ckpt_dir, run_state.epoch, run_state.batch), config, run_state
        )
        _prune(ckpt_dir, args.keep)
        return path

    bar = None

    def on_batch(run_state, info) -> None:
        nonlocal bar
        if args.no_progress:
            return
        from tqdm import tqdm

        if bar is None:
            bar = tqdm(
                total=n_batches,
                initial=run_state.batch - 1,
                desc=f"epoch {run_state.epoch + 1}/{config.epochs}",
                unit="batch",
                file=sys.stderr,
                leave=False,
            )
        bar.update(1)
        bar.set_postfix(loss=f"{float(info.loss):.3f}", acc=f"{float(info.accuracy):.2f}")
        if run_state.batch == n_batches:
            bar.close()
            bar = None

    def on_epoch(run_state, record) -> None:
        path = save(run_state)
        write_metrics(run_state.history, "running" if run_state.epoch < config.epochs else "done")
        rewired = (
            f", rewired in {record['removed'][0]} / rec {record['removed'][1]} "
            f"(shortfall {sum(record['shortfall'])}), synapses {record['synapses'][0]:,} + "
            f"{record['synapses'][1]:,}"
            if config.method == "deep_r"
            else ""
        )
        print(
            f"  epoch {record['epoch']}/{config.epochs}: loss {record['loss']:.4f}, train "
            f"{100 * record['train_accuracy']:.2f} %, test {100 * record['test_accuracy']:.2f} %, "
            f"rate {record['rate_hz']:.1f} Hz, {record['seconds']:.1f} s{rewired}; "
            f"saved {path.name}",
            flush=True,
        )

    def on_checkpoint(run_state) -> None:
        path = save(run_state)
        print(
            f"  epoch {run_state.epoch + 1}, batch {run_state.batch}: saved {path.name}", flush=True
        )

    def stopped():
        """Ends the progress bar after a failed or interrupted run; the last checkpoint."""
        if bar is not None:
            bar.close()
        last = run_checkpoints(ckpt_dir)
        return last[-1] if last else None

    if state.epoch >= config.epochs:
        print(f"  nothing to do: the checkpoint has {state.epoch} epochs, --epochs {config.epochs}")
        write_metrics(state.history, "done")
        return 0
    try:
        final = train_epochs(
            config,
            state,
            train,
            test,
            on_batch=on_batch,
            on_epoch=on_epoch,
            checkpoint_every=args.checkpoint_every or None,
            on_checkpoint=on_checkpoint,
        )
    except NonFiniteLossError as exc:
        last = stopped()
        kept = f"; the last good checkpoint is {last}" if last else ""
        error("train", f"{exc}{kept}")
        return EXIT_DIVERGED
    except OSError as exc:
        last = stopped()
        kept = f"; the last complete checkpoint is {last}" if last else ""
        error("train", f"cannot write the outputs: {exc.strerror or exc}{kept}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        last = stopped()
        where = f" from {last.name}" if last else ""
        error("train", f"interrupted; continue{where} with the same command and --resume")
        return EXIT_INTERRUPTED

    history = final.history
    total = time.perf_counter() - started
    accuracy = np.asarray([r["test_accuracy"] for r in history])
    print(
        f"  final test accuracy {100 * accuracy[-1]:.2f} % after {len(history)} epochs "
        f"({total:.1f} s in this process); wrote {outputs['metrics']}, {outputs['csv'].name}"
        + ("" if args.no_plots else ", curves.png")
        + f" and checkpoints in {ckpt_dir}",
        flush=True,
    )
    return 0
