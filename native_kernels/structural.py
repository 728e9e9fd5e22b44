"""Native CPU kernels for removing (by mask or by list) and adding synapses, and for building
the column view (XLA FFI custom calls).

The editing kernels in ``structural.cc`` walk the changed synapses one by one and write only
there, into buffers that XLA aliases to the outputs: in place when the projection is donated
or a loop carry. Their references are the data-parallel XLA versions in ``jaxplastic`` (the
primitives ``remove_synapses``, ``remove_slots`` and ``add_synapses``, and
``build_column_view``, whose stable sort the column kernel replaces by one counting pass); the
results are identical bit for bit.

The shared library is compiled when the package is built (``hatch_build.py``); where no C++
compiler was available, :func:`available` is False and jaxplastic uses its XLA versions.
The kernels take any leading batch dimensions (``vmap``: one projection per entry), which
they share out over XLA's CPU thread pool; with fewer entries than threads, removal by mask,
addition and the column build also split one projection's work over the threads (ranges of
its slots, rows or columns), with the same results.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

LIBRARY = Path(__file__).with_name("libjaxplastic_structural.so")

# Outcome of each proposal of `add`, as written by the kernel.
ACCEPTED, DUPLICATE, ROW_FULL, COLUMN_FULL, OUT_OF_RANGE, NONE = range(6)


# The library's handler symbols and the custom-call targets they are registered under.
_TARGETS = {
    "JaxplasticRemove": "jaxplastic_remove",
    "JaxplasticRemoveSlots": "jaxplastic_remove_slots",
    "JaxplasticAdd": "jaxplastic_add",
    "JaxplasticColumns": "jaxplastic_columns",
}


@functools.cache
def load_error() -> str | None:
    """Loads the compiled library and registers its targets (once); None if that worked,
    else why not."""
    if not LIBRARY.exists():
        return (
            f"{LIBRARY.name} is missing: jaxplastic was installed without a C++ compiler "
            "(reinstall it on a machine with one)"
        )
    try:
        lib = ctypes.cdll.LoadLibrary(str(LIBRARY))
    except OSError as e:  # built for another machine or C++ runtime
        return f"{LIBRARY.name} does not load here: {e}"
    for symbol, target in _TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    return None


def available() -> bool:
    """Whether the native kernels can be used (the library is built and loads)."""
    return load_error() is None


def _require() -> None:
    if not available():
        raise RuntimeError(f"the native structural kernels are unavailable: {load_error()}")


def _like(x: jax.Array) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _split_column(results: list, column: Column | None) -> tuple[Column | None, list]:
    """The column view's three results, if the call had one, and the results after them."""
    return (None, results) if column is None else (tuple(results[:3]), results[3:])


# (position [..., pre, cap], pre_slot [..., post, col_cap], free_bits uint32[..., post,
# ceil(col_cap / 32)]): jaxplastic's ColumnView.
Column = tuple[jax.Array, jax.Array, jax.Array]


def remove(
    post: jax.Array,
    column: Column | None,
    synapses: dict[str, jax.Array],
    mask: jax.Array,
    n_post: int,
) -> tuple[jax.Array, jax.Array, jax.Array, Column | None, dict[str, jax.Array]]:
    """Frees the live slots under ``mask``; returns ``(removed, count, post, column,
    synapses)`` (``count``: ``int32[...]``, the number removed).

    ``post``, ``mask`` and each synapse variable are ``[..., pre, cap]``; ``column`` is
    ``(position, pre_slot, free_bits)`` (:data:`Column`) or None. A freed slot gets
    target ``n_post``, zero in every variable, and is unlinked from its column.
    """
    _require()
    names = list(synapses)
    proj = [post, *(column or ()), *(synapses[n] for n in names)]
    operands = [mask, *proj]
    results = [
        jax.ShapeDtypeStruct(mask.shape, jnp.bool_),
        jax.ShapeDtypeStruct(mask.shape[:-2], jnp.int32),
        *map(_like, proj),
    ]
    out = jax.ffi.ffi_call(
        "jaxplastic_remove",
        results,
        vmap_method="broadcast_all",
        input_output_aliases={i: i + 1 for i in range(1, len(operands))},
    )(*operands, n_post=np.int64(n_post), column=column is not None)
    removed, count, post = out[:3]
    column, rest = _split_column(out[3:], column)
    return removed, count, post, column, dict(zip(names, rest, strict=True))


def remove_slots(
    post: jax.Array,
    column: Column | None,
    synapses: dict[str, jax.Array],
    rows: jax.Array,
    slots: jax.Array,
    valid: jax.Array,
    n_post: int,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, Column | None, dict[str, jax.Array]]:
    """Frees the live slots ``(rows[e], slots[e])`` where ``valid[e]``, in list order; an
    entry out of range, or naming a free slot (also one that an earlier entry freed), is
    skipped. Returns ``(removed, count, changed, post, column, synapses)``: ``removed``
    ``bool[..., k]`` (whether entry ``e`` freed a slot), ``count`` ``int32[...]`` and
    ``changed`` ``bool[..., pre, cap]`` (the freed slots).

    ``rows`` and ``slots`` are ``[..., k]`` of ``post``'s dtype, ``valid`` ``bool[..., k]``.
    """
    _require()
    names = list(synapses)
    proj = [post, *(column or ()), *(synapses[n] for n in names)]
    operands = [rows, slots, valid, *proj]
    results = [
        jax.ShapeDtypeStruct(rows.shape, jnp.bool_),
        jax.ShapeDtypeStruct(post.shape[:-2], jnp.int32),
        jax.ShapeDtypeStruct(post.shape, jnp.bool_),
        *map(_like, proj),
    ]
    out = jax.ffi.ffi_call(
        "jaxplastic_remove_slots",
        results,
        vmap_method="broadcast_all",
        input_output_aliases={3 + i: 3 + i for i in range(len(proj))},
    )(*operands, n_post=np.int64(n_post), column=column is not None)
    removed, count, changed, post = out[:4]
    column, rest = _split_column(out[4:], column)
    return removed, count, changed, post, column, dict(zip(names, rest, strict=True))


def add(
    post: jax.Array,
    column: Column | None,
    synapses: dict[str, jax.Array],
    changed: jax.Array,
    rows: jax.Array,
    targets: jax.Array,
    values: dict[str, jax.Array],
    n_post: int,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, Column | None, dict[str, jax.Array]]:
    """Adds proposals ``(rows[e], targets[e])`` greedily in order.

    ``rows`` and ``targets`` are ``[..., k]`` of ``post``'s dtype (target ``n_post``: no
    proposal); ``values`` maps some variables to their ``[..., k]`` initial values (the
    others stay zero). Returns ``(status, counts, post, changed, column, synapses)``:
    ``status`` ``int8[..., k]`` (:data:`ACCEPTED` ... :data:`NONE`), ``counts``
    ``int32[..., 5]`` (added, duplicate, row full, column full, out of range) and ``changed``
    with the new slots set.
    """
    _require()
    names = [n for n in synapses if n in values]
    proj = [post, changed, *(column or ()), *(synapses[n] for n in names)]
    operands = [rows, targets, *proj, *(values[n] for n in names)]
    batch = rows.shape[:-1]
    results = [
        jax.ShapeDtypeStruct(rows.shape, jnp.int8),
        jax.ShapeDtypeStruct((*batch, 5), jnp.int32),
        *map(_like, proj),
    ]
    out = jax.ffi.ffi_call(
        "jaxplastic_add",
        results,
        vmap_method="broadcast_all",
        input_output_aliases={2 + i: 2 + i for i in range(len(proj))},
    )(*operands, n_post=np.int64(n_post), column=column is not None)
    status, counts, post, changed = out[:4]
    column, rest = _split_column(out[4:], column)
    new = dict(synapses)
    new.update(zip(names, rest, strict=True))
    return status, counts, post, changed, column, new


def columns(
    post: jax.Array, n_post: int, column_capacity: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The column view of ``post`` (``[..., pre, cap]``, int32 or int64) from scratch:
    ``(pre_slot [..., n_post, column_capacity], position [..., pre, cap], counts
    int32[..., n_post])``, each column listing its slots in slot order.

    ``counts`` are the columns' lengths. Where one exceeds ``column_capacity`` its last slots
    are missing from ``pre_slot`` (their ``position`` is still their place in the column):
    the caller must report it.
    """
    _require()
    batch = post.shape[:-2]
    results = [
        jax.ShapeDtypeStruct((*batch, n_post, column_capacity), post.dtype),
        jax.ShapeDtypeStruct(post.shape, post.dtype),
        jax.ShapeDtypeStruct((*batch, n_post), jnp.int32),
    ]
    return tuple(
        jax.ffi.ffi_call("jaxplastic_columns", results, vmap_method="broadcast_all")(
            post, n_post=np.int64(n_post), column_capacity=np.int64(column_capacity)
        )
    )
