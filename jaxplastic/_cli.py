"""The `jaxplastic` command line: one subcommand per module, imported only when run.

Each subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int`` (the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys

_COMMANDS = {
    "demo": "jaxplastic._demo_cli",
    "topomap": "jaxplastic.models._topomap_cli",
    "train": "jaxplastic._train_cli",
    "evaluate": "jaxplastic._evaluate_cli",
    "export": "jaxplastic._export_cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxplastic",
        description="Spiking networks with structural plasticity in JAX.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in _COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
