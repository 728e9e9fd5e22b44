"""`jaxplastic demo`: a sparse recurrent LIF network driven by Poisson input."""

from __future__ import annotations

import argparse

from ._cli_args import positive_int

HELP = "run a sparse recurrent LIF network driven by Poisson input and report its activity"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-input", type=positive_int, default=1000, help="Poisson inputs")
    parser.add_argument("--n-hidden", type=positive_int, default=1000, help="LIF neurons")
    parser.add_argument("--steps", type=positive_int, default=2000, help="1 ms time steps")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    r = run_demo(n_input=args.n_input, n_hidden=args.n_hidden, steps=args.steps, seed=args.seed)
    print(f"jaxplastic demo on {r['backend']}: Poisson input -> sparse recurrent LIF")
    for label, n, slots in (
        ("input -> hidden ", r["input_synapses"], r["input_capacity"]),
        ("hidden -> hidden", r["recurrent_synapses"], r["recurrent_capacity"]),
    ):
        print(f"  {label}: {n:>9,} synapses in {slots:,} slots")
    print(f"  input rate      : {r['input_rate_hz']:8.2f} Hz ({r['n_input']} neurons)")
    print(f"  hidden rate     : {r['hidden_rate_hz']:8.2f} Hz ({r['n_hidden']} neurons)")
    print(
        f"  speed           : {r['steps_per_second']:,.0f} steps/s "
        f"({r['steps']} steps of 1 ms = {r['model_seconds']:.1f} s model time in "
        f"{r['wall_seconds']:.2f} s; first run incl. compilation {r['first_run_seconds']:.2f} s)"
    )
    return 0
