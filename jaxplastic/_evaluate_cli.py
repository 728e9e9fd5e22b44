"""`jaxplastic evaluate`: the accuracy of a checkpointed classifier on a dataset split."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "accuracy of a classifier checkpoint (from `jaxplastic train`) on a dataset split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ._cli_args import positive_int
    from ._train_cli import add_data_arguments

    parser.add_argument(
        "checkpoint",
        type=Path,
        help="a checkpoint file, or a run folder (its latest checkpoint is used)",
    )
    add_data_arguments(parser, defaults=False)
    parser.add_argument("--split", choices=("train", "test"), default="test", help="(default test)")
    parser.add_argument(
        "--num-steps", type=positive_int, default=None, help="time steps (default: the run's)"
    )
    parser.add_argument(
        "--size", type=positive_int, default=None, help="examples (default: the run's subset)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=250, help="(default 250)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file, or the latest checkpoint of a run folder (or its checkpoints/)."""
    from ._checkpoint import CheckpointError
    from ._train_cli import run_checkpoints

    if path.is_dir():
        for folder in (path / "checkpoints", path):
            found = run_checkpoints(folder)
            if found:
                return found[-1]
        raise CheckpointError(f"{path}: no checkpoint in this folder or its checkpoints/")
    return path


def run(args: argparse.Namespace) -> int:
    from ._checkpoint import CheckpointError
    from ._train_cli import EXIT_BAD_INPUT, error

    try:
        path = resolve_checkpoint(args.checkpoint)
        import dataclasses

        from .learning._experiment import evaluate, load_data, load_run

        config, state = load_run(path)
    except CheckpointError as exc:
        error("evaluate", str(exc))
        return EXIT_BAD_INPUT
    changes = {}
    if args.dataset is not None and args.dataset != config.dataset:
        changes["dataset"] = args.dataset
    if args.data_dir is not None:
        changes["data_dir"] = args.data_dir
    if args.num_steps is not None:
        changes["num_steps"] = args.num_steps
    if args.size is not None or "dataset" in changes:
        changes["train_size" if args.split == "train" else "test_size"] = args.size
    try:
        data_config = dataclasses.replace(config, **changes, batch_size=1)
        train, test = load_data(data_config)
        dataset = train if args.split == "train" else test
        accuracy = evaluate(state.model, dataset, batch_size=args.batch_size)
    except (ValueError, TypeError, FileNotFoundError, ConnectionError) as exc:
        error("evaluate", str(exc))
        return EXIT_BAD_INPUT
    result = {
        "checkpoint": str(path),
        "epoch": state.epoch,
        "batch": state.batch,
        "method": config.method,
        "dataset": data_config.dataset,
        "split": args.split,
        "examples": len(dataset),
        "num_steps": data_config.num_steps,
        "accuracy": accuracy,
    }
    print(
        f"{path}: {config.method} after {state.epoch} epochs"
        + (f" and {state.batch} batches" if state.batch else "")
        + f": {args.split} accuracy {100 * accuracy:.2f} % on {len(dataset):,} examples of "
        f"{data_config.dataset} ({data_config.num_steps} steps)"
    )
    if args.json is not None:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1))
        except OSError as exc:
            error("evaluate", f"cannot write {args.json}: {exc.strerror or exc}")
            return EXIT_BAD_INPUT
    sys.stdout.flush()
    return 0
