"""`jaxplastic export`: a checkpointed classifier's connectivity and weights as plain `.npz`."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = (
    "write a trained classifier (checkpoint of `jaxplastic train`) as plain numpy arrays "
    "(.npz: COO connectivity and weights) for other tools"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", type=Path, help="a checkpoint file, or a run folder (latest checkpoint)"
    )
    parser.add_argument("output", type=Path, help="the .npz file to write")


def run(args: argparse.Namespace) -> int:
    from ._checkpoint import CheckpointError
    from ._evaluate_cli import resolve_checkpoint
    from ._train_cli import EXIT_BAD_INPUT, error

    try:
        path = resolve_checkpoint(args.checkpoint)
        from .learning._experiment import export_npz, load_run

        config, state = load_run(path)
    except CheckpointError as exc:
        error("export", str(exc))
        return EXIT_BAD_INPUT
    try:
        written = export_npz(state.model, args.output)
    except OSError as exc:
        error("export", f"cannot write {args.output}: {exc.strerror or exc}")
        return EXIT_BAD_INPUT
    model = state.model
    if hasattr(model, "input"):
        what = (
            f"{int(model.input.num_synapses):,} input + {int(model.recurrent.num_synapses):,} "
            "recurrent synapses"
        )
    else:
        what = f"dense {model.n_in}x{model.n_hidden} + {model.n_hidden}x{model.n_hidden} weights"
    print(
        f"wrote {written}: {config.method} {model.n_in}-{model.n_hidden}-{model.n_out}, {what} "
        f"(epoch {state.epoch}); read it with numpy.load"
    )
    return 0
