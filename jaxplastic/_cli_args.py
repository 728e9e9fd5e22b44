"""Argument types and checks shared by the command-line subcommands.

Each type turns one command-line string into a value or raises
``argparse.ArgumentTypeError`` with a message that names what was expected, so argparse
prints it and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def density(text: str) -> float:
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"expected a density in (0, 1] (a fraction: 0.01 is 1 %), got {text}"
        )
    return value


def check_output_folder(path: Path) -> str | None:
    """Creates the folder and checks that it is writable; returns an error message or None."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".jaxplastic_write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return f"cannot write to output folder {str(path)!r}: {exc.strerror or exc}"
    return None
