"""Paired A/B of two builds of the native structural kernels, in one process.

Builds ``A`` and ``B`` of ``native_kernels/structural.cc`` (shared libraries compiled as
``hatch_build.py`` does) are loaded side by side under different FFI target names, and each
structural step of ``rewiring.py`` (1 % changed, with and without the column view) is timed
with both, interleaved call by call, each call from a cold cache. It prints the medians, the
paired ratio ``A / B`` per step and each build's column upkeep.

Each build's steps are traced anew (``rewiring.Case`` calls ``jax.clear_caches()``): ``jit``
caches a trace by the function traced, so a second build traced through the same functions
would silently reuse the first build's target, and an A/B would time one build twice. The
check that each compiled step calls its own build's target guards that.

Usage::

    INC="$(python -c 'import jax.ffi; print(jax.ffi.include_dir())')"
    g++ -O3 -std=c++17 -shared -fPIC -I "$INC" native_kernels/structural.cc -o /tmp/a.so
    # ... and the variant into /tmp/b.so
    python benchmarks/native_ab.py /tmp/a.so /tmp/b.so --repeats 41
    python benchmarks/native_ab.py /tmp/a.so /tmp/b.so --ops remove add
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import rewiring as rw  # noqa: E402

import jaxplastic._connectivity as connectivity  # noqa: E402
import jaxplastic._structural as structural  # noqa: E402
from native_kernels import structural as native  # noqa: E402

OPS = ("remove", "remove_slots", "add", "prune+regrow", "update_rows", "rebuild")
REBUILD = "rebuild"  # build_column_view(impl="native") of the projection, the baseline


def load_build(library: Path, tag: str) -> types.ModuleType:
    """The binding of ``native_kernels/structural.py`` bound to ``library``, its FFI targets
    renamed ``jaxplastic<tag>_...`` so that two builds can be registered at once."""
    source = Path(native.__file__).read_text()
    source = source.replace(
        'Path(__file__).with_name("libjaxplastic_structural.so")', f"Path({str(library)!r})"
    )
    source = source.replace('"jaxplastic_', f'"jaxplastic{tag}_')
    module = types.ModuleType(f"native_{tag}")
    module.__file__ = str(library)
    exec(compile(source, module.__name__, "exec"), module.__dict__)
    if module.load_error() is not None:
        raise SystemExit(f"{library}: {module.load_error()}")
    return module


def steps(conn, rng, n_changed: int) -> dict[str, tuple]:
    """Each op: (function of (projection, inputs), inputs)."""
    mask = rw.removal_mask(rng, conn, n_changed)
    remove_rows, slots = (jnp.asarray(x, jnp.int32) for x in np.nonzero(np.asarray(mask)))
    proposals = rw.proposals(rng, conn, n_changed)
    fraction = n_changed / int(conn.num_synapses)
    k_max = rw.rule_width(int(np.asarray(conn.alive).sum(1).max()), fraction, conn.n_pre)
    update_rows = rw.make_step_update_rows(rw.magnitude_quantile(conn, fraction), k_max)
    return {
        "remove": (lambda c, x: rw.step_remove(c, x, "native"), mask),
        "remove_slots": (lambda c, x: rw.step_remove_slots(c, *x, "native"), (remove_rows, slots)),
        "add": (lambda c, x: rw.step_add(c, *x, "native"), proposals),
        "prune+regrow": (
            lambda c, x: rw.step_prune_regrow(c, x[0], *x[1], "native"),
            (mask, proposals),
        ),
        "update_rows": (lambda c, x: update_rows(c, x, "native"), jax.random.key(0)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="build A (shared library)")
    parser.add_argument("b", type=Path, help="build B (shared library)")
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    builds = {"a": load_build(args.a, "a"), "b": load_build(args.b, "b")}
    rng = np.random.default_rng(args.seed)
    conn = rw.make_projection(rng, args.n, 100, 80, 160)
    n_changed = max(1, round(args.fraction * int(conn.num_synapses)))
    ops = steps(conn, rng, n_changed)
    rebuild = rw.make_rebuild(conn.n_post, conn.column_capacity, "native")
    # Each op's variants: (label, function, arguments, donated). A step is timed with and
    # without the column view (their difference is the upkeep), the rebuild once.
    variants = {REBUILD: [("-", rebuild, (conn.post,), False)]}
    for op in args.ops:
        if op != REBUILD:
            fn, inputs = ops[op]
            variants[op] = [
                (column, fn, (c, inputs), True)
                for column, c in (("column", conn), ("no column", conn.without_column_view()))
            ]
    cases: dict[tuple, rw.Case] = {}
    for tag, module in builds.items():
        structural._native = connectivity._native = module
        for op in args.ops:
            for column, fn, fn_args, donate in variants[op]:
                # rw.Case clears jit's caches before it traces, so this build is traced anew.
                case = rw.Case(f"{op} {column} {tag}", fn, fn_args, donate, {})
                if f"jaxplastic{tag}_" not in case.compiled.as_text():
                    raise SystemExit(f"{op} ({column}) of build {tag} does not call its build")
                cases[op, column, tag] = case
    structural._native = connectivity._native = native

    evict = rw.cache_evictor()
    order = list(cases.values())
    for r in range(args.repeats):
        shift = r % len(order)
        for case in order[shift:] + order[:shift]:
            case.measure(evict)

    print(
        f"{args.a} (A) vs {args.b} (B), {n_changed} changed, median of {args.repeats}, cold cache"
    )
    print("| step | column | A (ms) | B (ms) | A / B (paired) |")
    print("|---|---|---:|---:|---:|")
    for op in args.ops:
        for column, *_ in variants[op]:
            a, b = cases[op, column, "a"], cases[op, column, "b"]
            print(
                f"| {op} | {column} | {a.median_ms:.3f} | {b.median_ms:.3f} "
                f"| {rw.paired_ratio(a, b):.3f} |"
            )
    print()
    for op in (op for op in args.ops if op != REBUILD):
        upkeep = {
            tag: rw.paired_median_ms(cases[op, "column", tag], cases[op, "no column", tag])
            for tag in builds
        }
        print(f"  {op}: upkeep A {upkeep['a']:.3f} ms, B {upkeep['b']:.3f} ms")


if __name__ == "__main__":
    main()
