"""Fixed-capacity ragged connectivity: the central state of every projection.

A projection from ``n_pre`` to ``n_post`` neurons stores, for every presynaptic neuron, a row
of ``capacity`` slots. ``post[i, s]`` is the target of slot ``s`` of row ``i``; a free slot holds
the sentinel ``n_post``. Per-synapse variables (``weight`` and any others) are arrays of the same
shape kept together in one dict, zero in free slots. Shapes never change after construction:
rewiring rewrites values in place, so everything compiles once.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax import lax

from native_kernels import structural as _native

from ._custom_types import (
    Array,
    ArrayLike,
    Bool,
    Float,
    Int,
    NativeImpl,
    PRNGKeyArray,
    Shaped,
    UInt32,
)

__all__ = [
    "ColumnView",
    "RaggedConnectivity",
    "fixed_probability",
    "from_dense",
    "from_edges",
]

_INT32_MAX = np.iinfo(np.int32).max

Initializer = Callable[[PRNGKeyArray, tuple[int, ...], Any], Array]


def _is_concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(xs))


_IMPLS = ("auto", "native", "xla")  # the values of NativeImpl


def _index_dtype():
    return jnp.int64 if jax.config.read("jax_enable_x64") else jnp.int32


def _check_index_width(n_pre: int, n_post: int, capacity: int, column_capacity: int = 0) -> None:
    """Refuses sizes whose flat slot index (``n_pre * capacity``) would overflow int32."""
    if jax.config.read("jax_enable_x64"):
        return
    largest = max(n_pre * capacity, n_post * max(column_capacity, 1), n_post)
    if largest >= _INT32_MAX:
        raise ValueError(
            f"projection too large for int32 slot indices: n_pre * capacity = {n_pre * capacity}, "
            f"n_post = {n_post}, n_post * column_capacity = {n_post * column_capacity}; the "
            f"largest must stay below {_INT32_MAX}. Enable 64-bit indices with "
            "jax.config.update('jax_enable_x64', True) or split the projection."
        )


class ColumnView(eqx.Module):
    """Postsynaptic (column) index of a ragged projection.

    ``pre_slot[j, c]`` is the flat slot index ``i * capacity + s`` of the ``c``-th incoming
    synapse of postsynaptic neuron ``j``, or the sentinel ``n_pre * capacity`` for a free column
    entry. ``position[i, s]`` is where slot ``(i, s)`` sits in its column (``column_capacity``
    for a free slot), so a synapse is unlinked from its column in O(1). ``free_bits[j, w]``
    packs column ``j``'s free entries: bit ``b`` is set iff entry ``32 w + b`` is free (bits
    past ``column_capacity`` are 0), so an addition finds its column's lowest free entry in
    a few words (``n_post * ceil(column_capacity / 32)`` words in all, small enough to stay in
    cache) instead of scanning the column.

    The view is exactly the transpose of the live slots; the structural primitives keep it so
    incrementally. Order inside a column is not meaningful. ``free_bits`` may be left out
    (``ColumnView(pre_slot, position)``): it is then computed from ``pre_slot``.
    """

    pre_slot: Int[Array, "post colcap"]
    position: Int[Array, "pre cap"]
    free_bits: UInt32[Array, "post colwords"]

    def __init__(
        self,
        pre_slot: Int[Array, "post colcap"],
        position: Int[Array, "pre cap"],
        free_bits: UInt32[Array, "post colwords"] | None = None,
    ):
        self.pre_slot = pre_slot
        self.position = position
        if free_bits is None:
            free_bits = _free_bits_of(pre_slot, position)
        self.free_bits = free_bits

    @property
    def column_capacity(self) -> int:
        return self.pre_slot.shape[1]


_WORD = 32
_UNROLL = 512  # widest row packed column by column


def _free_bits_of(
    pre_slot: Int[ArrayLike, "*batch post colcap"], position: Int[ArrayLike, "*batch pre cap"]
) -> UInt32[Array, "*batch post colwords"]:
    """A column view's ``free_bits`` from its ``pre_slot``, whose free entries hold the sentinel
    ``pre * cap``; leading (network) axes are kept."""
    pre_slot, position = jnp.asarray(pre_slot), jnp.asarray(position)
    free = pre_slot == position.shape[-2] * position.shape[-1]
    bits = _pack_bits(free.reshape(math.prod(free.shape[:-1]), free.shape[-1]))
    return bits.reshape(*free.shape[:-1], bits.shape[-1])


def _pack_bits(mask: Bool[Array, "k n"]) -> UInt32[Array, "k words"]:
    """Packs each row of ``mask`` into ``uint32`` words, bit ``j % 32`` of word ``j // 32``.

    Rows stay small (a few words instead of ``n`` booleans), and counting or selecting their
    set bits takes a few elementwise passes, with no scan along the row (a cumsum along a
    short axis is slow on CPU). Up to ``_UNROLL`` columns, four booleans (bytes of 0 or 1)
    are read as one ``uint32`` and turned into a 4-bit nibble by one multiplication, and eight
    nibbles are ORed into a word: elementwise work that XLA fuses, about twice as fast on a
    CPU as ORing the booleans one by one, and many times faster than a reduction over a
    short axis.
    """
    k, width = mask.shape
    n_words = -(-width // _WORD)
    if n_words == 0:
        return jnp.zeros((k, 0), jnp.uint32)
    if width > _UNROLL:
        padded = jnp.pad(mask, ((0, 0), (0, n_words * _WORD - width)))
        bits = padded.reshape(k, n_words, _WORD).astype(jnp.uint32)
        shifts = jnp.arange(_WORD, dtype=jnp.uint32)[None, None, :]
        return jnp.sum(bits << shifts, axis=2, dtype=jnp.uint32)
    n_nibbles = -(-width // 4)
    if width % 4:
        mask = jnp.pad(mask, ((0, 0), (0, 4 * n_nibbles - width)))
    quads = lax.bitcast_convert_type(mask.astype(jnp.uint8).reshape(k, n_nibbles, 4), jnp.uint32)
    # Bytes b0..b3 (each 0 or 1) of a little-endian word: b_i * 2^(8i) times
    # 2^24 + 2^17 + 2^10 + 2^3 puts b_i at bit 24 + i, and nothing else reaches bits 24-31.
    nibbles = (quads * jnp.uint32(0x01020408)) >> jnp.uint32(24)
    words = []
    for w in range(n_words):
        word = nibbles[:, 8 * w]
        for j in range(1, min(8, n_nibbles - 8 * w)):
            word = word | (nibbles[:, 8 * w + j] << jnp.uint32(4 * j))
        words.append(word)
    return jnp.stack(words, axis=1)


def _free_bits_from_counts(
    counts: Int[Array, " post"], column_capacity: int
) -> UInt32[Array, "post colwords"]:
    """The packed free entries of columns whose live entries are ``[0, counts[j])`` (as a
    rebuild lays them out): bits ``counts[j] .. column_capacity - 1``."""
    n_words = -(-column_capacity // _WORD)
    start = jnp.arange(n_words, dtype=jnp.int32) * _WORD
    ones = jnp.uint32(0xFFFFFFFF)

    def below(n):  # the low n bits, n in [0, 32]
        low = (jnp.uint32(1) << jnp.clip(n, 0, 31).astype(jnp.uint32)) - 1
        return jnp.where(n >= 32, ones, low)

    live = jnp.clip(jnp.minimum(counts, column_capacity)[:, None] - start[None, :], 0, 32)
    valid = jnp.clip(column_capacity - start, 0, 32)
    return below(valid)[None, :] & ~below(live)


class RaggedConnectivity(eqx.Module):
    """One projection with fixed-capacity ragged rows, rewirable inside ``jit``.

    Attributes:
        post: ``int32[pre, cap]`` target of each slot; the sentinel ``n_post`` marks a free slot.
        synapses: dict of per-synapse variables, each ``[pre, cap]``; must contain ``"weight"``.
            Every variable is zero in a free slot.
        column: optional :class:`ColumnView` for postsynaptic access, or ``None``.
        n_post: number of postsynaptic neurons (static).

    Invariants (checked at construction when values are concrete; kept by every primitive):
    a live target lies in ``[0, n_post)``; no row holds a target twice; every variable is zero
    in a free slot and finite everywhere; the column view is the exact transpose of the live
    slots and no column exceeds its capacity.

    Build one with :func:`fixed_probability`, :func:`from_dense` or :func:`from_edges`.
    """

    post: Int[Array, "pre cap"]
    synapses: dict[str, Shaped[Array, "pre cap"]]
    column: ColumnView | None
    n_post: int = eqx.field(static=True)

    def __check_init__(self):
        if not isinstance(self.n_post, int) or isinstance(self.n_post, bool) or self.n_post < 1:
            raise ValueError(f"n_post: expected a positive Python int, got {self.n_post!r}")
        post = self.post
        if not hasattr(post, "shape") or post.ndim != 2:
            raise ValueError(
                f"post: expected a 2-D [n_pre, capacity] array, got shape {jnp.shape(post)}"
            )
        if not jnp.issubdtype(post.dtype, jnp.integer):
            raise TypeError(f"post: expected an integer dtype, got {post.dtype}")
        n_pre, cap = post.shape
        if "weight" not in self.synapses:
            raise ValueError(
                f"synapses: expected a 'weight' entry, got keys {sorted(self.synapses)}"
            )
        for name, value in self.synapses.items():
            if jnp.shape(value) != post.shape:
                raise ValueError(
                    f"synapses[{name!r}]: expected shape {post.shape} (same as post), "
                    f"got {jnp.shape(value)}"
                )
        col_cap = 0
        if self.column is not None:
            col_cap = self.column.column_capacity
            if self.column.pre_slot.shape != (self.n_post, col_cap):
                raise ValueError(
                    f"column.pre_slot: expected shape ({self.n_post}, column_capacity), "
                    f"got {self.column.pre_slot.shape}"
                )
            if self.column.position.shape != post.shape:
                raise ValueError(
                    f"column.position: expected shape {post.shape}, "
                    f"got {self.column.position.shape}"
                )
            words = (self.n_post, -(-col_cap // 32))
            free_bits = self.column.free_bits
            if free_bits.shape != words or free_bits.dtype != jnp.uint32:
                raise ValueError(
                    f"column.free_bits: expected uint32{words} (ceil(column_capacity / 32) "
                    f"words per column), got {free_bits.dtype}{free_bits.shape}"
                )
        _check_index_width(n_pre, self.n_post, cap, col_cap)
        if _is_concrete(self.post, self.synapses, self.column):
            _check_values(self)

    # -- sizes -------------------------------------------------------------------------------
    @property
    def n_pre(self) -> int:
        return self.post.shape[0]

    @property
    def capacity(self) -> int:
        return self.post.shape[1]

    @property
    def column_capacity(self) -> int | None:
        return None if self.column is None else self.column.column_capacity

    @property
    def weight(self) -> Float[Array, "pre cap"]:
        return self.synapses["weight"]

    @property
    def alive(self) -> Bool[Array, "pre cap"]:
        """Live-slot mask, derived from the sentinel."""
        return self.post != self.n_post

    @property
    def row_lengths(self) -> Int[Array, " pre"]:
        return jnp.sum(self.alive, axis=1, dtype=jnp.int32)

    @property
    def column_lengths(self) -> Int[Array, " post"]:
        return jnp.bincount(self.post.ravel(), length=self.n_post + 1)[: self.n_post]

    @property
    def num_synapses(self) -> Int[Array, ""]:
        return jnp.sum(self.alive, dtype=jnp.int32)

    # -- conversions --------------------------------------------------------------------------
    def to_dense(self, name: str = "weight") -> Shaped[Array, "pre post"]:
        """Dense ``[n_pre, n_post]`` matrix of one per-synapse variable (zero where absent)."""
        value = self.synapses[name]
        rows = jnp.broadcast_to(jnp.arange(self.n_pre)[:, None], self.post.shape)
        dense = jnp.zeros((self.n_pre, self.n_post + 1), value.dtype)
        return dense.at[rows, self.post].set(value)[:, : self.n_post]

    def with_column_view(self, column_capacity: int) -> RaggedConnectivity:
        """Returns this projection with a freshly built column view of the given capacity."""
        column = build_column_view(self.post, self.n_post, column_capacity)
        return RaggedConnectivity(self.post, self.synapses, column, self.n_post)

    def without_column_view(self) -> RaggedConnectivity:
        return RaggedConnectivity(self.post, self.synapses, None, self.n_post)

    def rebuild_column_view(self) -> RaggedConnectivity:
        """Rebuilds the column view from scratch (the oracle for incremental upkeep)."""
        if self.column is None:
            raise ValueError("rebuild_column_view: this projection has no column view")
        return self.with_column_view(self.column.column_capacity)


def build_column_view(
    post: Int[Array, "pre cap"], n_post: int, column_capacity: int, *, impl: NativeImpl = "auto"
) -> ColumnView:
    """Builds the column index of ``post`` from scratch: every column lists its synapses in
    slot order (row-major), from entry 0.

    ``impl``: ``"xla"`` sorts all slots by target (a stable sort); ``"native"`` counts them
    into their columns in one pass (the native CPU kernel, O(pre * cap)); ``"auto"``
    (default) takes the native kernel when running on a CPU where it was built. Both give
    the same arrays.

    Raises ``ValueError`` (eagerly) or an ``eqx.error_if`` runtime error (under ``jit``) if a
    column holds more than ``column_capacity`` synapses.
    """
    if not isinstance(column_capacity, int) or column_capacity < 1:
        raise ValueError(f"column_capacity: expected a positive int, got {column_capacity!r}")
    n_pre, cap = post.shape
    _check_index_width(n_pre, n_post, cap, column_capacity)
    pre_slot, position, free_bits, counts = _column_arrays(post, n_post, column_capacity, impl)
    if _is_concrete(counts):
        counts_np = np.asarray(counts)
        if counts_np.size and counts_np.max() > column_capacity:
            j = int(counts_np.argmax())
            raise ValueError(
                f"column {j} holds {counts_np[j]} synapses, over column_capacity="
                f"{column_capacity}; pass a larger column_capacity"
            )
    else:
        position = eqx.error_if(
            position, jnp.any(counts > column_capacity), "a column exceeds column_capacity"
        )
    return ColumnView(pre_slot=pre_slot, position=position, free_bits=free_bits)


def _use_native_kernel(impl: NativeImpl, fits: bool, needs: str) -> bool:
    """Static choice between an operation's native CPU kernel and its XLA version:
    ``"native"`` (which raises, saying why, if the kernel is not built or ``fits`` is False;
    ``needs`` says what it needs), ``"auto"`` (the kernel where it is built and fits) or
    ``"xla"``."""
    if impl not in _IMPLS:
        raise ValueError(f"impl: expected one of {_IMPLS}, got {impl!r}")
    if impl == "xla":
        return False
    if impl == "native":
        if not _native.available():
            raise RuntimeError(
                f"impl='native': the native CPU kernels are unavailable ({_native.load_error()});"
                " use impl='auto' or 'xla'"
            )
        if not fits:
            raise ValueError(f"impl='native': {needs}")
        return True
    return fits and _native.available()


def _per_platform(impl: NativeImpl, native: Callable, xla: Callable, *args):
    """``native(*args)`` when compiled for a CPU, else ``xla(*args)``; ``impl="native"``
    always takes the native kernel (a CPU-only custom call)."""
    if impl == "native":
        return native(*args)
    return jax.lax.platform_dependent(*args, cpu=native, default=xla)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _column_arrays(post, n_post, column_capacity, impl):
    """``(pre_slot, position, free_bits, counts)`` of :func:`build_column_view` (``counts``:
    int32 column lengths, which may exceed ``column_capacity``)."""
    fits = post.dtype == _index_dtype()
    needs = f"expected `post` of the index dtype {jnp.dtype(_index_dtype())}, got {post.dtype}"
    if not _use_native_kernel(impl, fits, needs):
        pre_slot, position, counts = _column_arrays_xla(post, n_post, column_capacity)
    else:
        pre_slot, position, counts = _per_platform(
            impl,
            lambda p: _native.columns(p, n_post, column_capacity),
            lambda p: _column_arrays_xla(p, n_post, column_capacity),
            post,
        )
    return pre_slot, position, _free_bits_from_counts(counts, column_capacity), counts


def _column_arrays_xla(post, n_post, column_capacity):
    n_pre, cap = post.shape
    idx = _index_dtype()
    num_slots = n_pre * cap
    target = post.ravel()
    order = jnp.argsort(target, stable=True)
    sorted_target = target[order]
    live = target != n_post
    # The free slots are left out of the counts (on a GPU, every one of them would be an
    # atomic add to the same counter).
    counts = jnp.zeros(n_post, jnp.int32).at[jnp.where(live, target, n_post)].add(1, mode="drop")
    # Each column's first place in the sorted order: the slots of lower targets before it
    # (a searchsorted here is a 20-step loop of small kernels on a GPU). The free slots
    # sort last, from start[n_post] on; their positions are replaced below.
    start = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(counts)])
    pos_sorted = jnp.arange(num_slots, dtype=idx) - start[sorted_target].astype(idx)
    position = jnp.zeros(num_slots, idx).at[order].set(pos_sorted, unique_indices=True)
    position = jnp.where(live, position, column_capacity)
    pre_slot = jnp.full((n_post, column_capacity), num_slots, idx)
    pre_slot = pre_slot.at[target, position].set(jnp.arange(num_slots, dtype=idx), mode="drop")
    return pre_slot, position.reshape(n_pre, cap), counts


def _check_values(conn: RaggedConnectivity) -> None:
    """Eager value checks of every invariant, naming the offending row, slot or value."""
    post = np.asarray(conn.post)
    n_post = conn.n_post
    bad = (post < 0) | (post > n_post)
    if bad.any():
        i, s = np.argwhere(bad)[0]
        raise ValueError(
            f"post[{i}, {s}] = {post[i, s]} is out of range: expected a target in "
            f"[0, {n_post}) or the free-slot sentinel {n_post}"
        )
    alive = post != n_post
    if post.size:
        srt = np.sort(post, axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] != n_post)
        if dup.any():
            i, k = np.argwhere(dup)[0]
            raise ValueError(f"row {i} holds target {srt[i, k]} twice (duplicate synapse)")
    for name, value in conn.synapses.items():
        v = np.asarray(value)
        if v.dtype.kind in "fc" or v.dtype == jnp.bfloat16:
            finite = np.isfinite(v.astype(np.float32) if v.dtype == jnp.bfloat16 else v)
            if not finite.all():
                i, s = np.argwhere(~finite)[0]
                raise ValueError(f"synapses[{name!r}][{i}, {s}] = {v[i, s]} is not finite")
        nonzero_free = (v != 0) & ~alive
        if nonzero_free.any():
            i, s = np.argwhere(nonzero_free)[0]
            raise ValueError(
                f"synapses[{name!r}][{i}, {s}] = {v[i, s]} but slot ({i}, {s}) is free: "
                "every per-synapse variable must be zero in a free slot"
            )
    if conn.column is not None:
        _check_column_view(conn, post, alive)


def _check_column_view(conn: RaggedConnectivity, post: np.ndarray, alive: np.ndarray) -> None:
    pre_slot = np.asarray(conn.column.pre_slot)
    position = np.asarray(conn.column.position)
    n_pre, cap = post.shape
    num_slots = n_pre * cap
    col_cap = pre_slot.shape[1]
    if ((pre_slot < 0) | (pre_slot > num_slots)).any():
        j, c = np.argwhere((pre_slot < 0) | (pre_slot > num_slots))[0]
        raise ValueError(f"column.pre_slot[{j}, {c}] = {pre_slot[j, c]} is out of range")
    live_cols = pre_slot != num_slots
    flat = pre_slot[live_cols]
    cols = np.nonzero(live_cols)[0]
    rows, slots = np.divmod(flat, cap)
    wrong = post[rows, slots] != cols
    if wrong.any():
        k = int(np.argmax(wrong))
        raise ValueError(
            f"column view lists slot ({rows[k]}, {slots[k]}) under column {cols[k]}, but that "
            f"slot targets {post[rows[k], slots[k]]}"
        )
    if len(np.unique(flat)) != len(flat):
        raise ValueError("column view lists one slot twice")
    if len(flat) != int(alive.sum()):
        counts = np.bincount(post[alive], minlength=conn.n_post)
        listed = live_cols.sum(axis=1)
        j = int(np.argmax(counts != listed))
        raise ValueError(
            f"column view of neuron {j} lists {listed[j]} synapses but {counts[j]} target it "
            f"(column_capacity={col_cap})"
        )
    expected = np.where(alive, 0, col_cap)
    pos_live = position[alive]
    if (position[~alive] != expected[~alive]).any():
        i, s = np.argwhere((position != expected) & ~alive)[0]
        raise ValueError(f"column.position[{i}, {s}] must be {col_cap} for a free slot")
    r, s = np.nonzero(alive)
    if (
        (pos_live < 0).any()
        or (pos_live >= col_cap).any()
        or (pre_slot[post[r, s], np.clip(pos_live, 0, col_cap - 1)] != r * cap + s).any()
    ):
        raise ValueError("column.position does not point back at each live slot")
    n_words = conn.column.free_bits.shape[1]
    free = np.pad(pre_slot == num_slots, ((0, 0), (0, 32 * n_words - col_cap)))
    expected_bits = np.packbits(free.reshape(-1, n_words, 32), axis=2, bitorder="little")
    expected_bits = expected_bits.view(np.uint32).reshape(-1, n_words)
    free_bits = np.asarray(conn.column.free_bits)
    wrong = free_bits != expected_bits
    if wrong.any():
        j, w = np.argwhere(wrong)[0]
        raise ValueError(
            f"column.free_bits[{j}, {w}] = {free_bits[j, w]:#010x} does not mark column {j}'s "
            f"free entries {32 * w}..{32 * w + 31} (expected {expected_bits[j, w]:#010x})"
        )


# -- initialisation helpers ------------------------------------------------------------------


def _init_values(
    init: float | Initializer, key: PRNGKeyArray, shape: tuple[int, ...], dtype
) -> Array:
    if callable(init):
        value = jnp.asarray(init(key, shape, dtype), dtype)
        if value.shape != shape:
            raise ValueError(f"initializer returned shape {value.shape}, expected {shape}")
        return value
    return jnp.full(shape, init, dtype)


def _init_synapses(
    key: PRNGKeyArray,
    alive: Bool[Array, "pre cap"],
    weight: float | Initializer,
    variables: Mapping[str, float | Initializer] | None,
    dtype,
) -> dict[str, Array]:
    names = ["weight", *(variables or {})]
    inits = {"weight": weight, **(variables or {})}
    keys = jr.split(key, len(names))
    out = {}
    for k, name in zip(keys, names, strict=True):
        value = _init_values(inits[name], k, alive.shape, dtype)
        out[name] = jnp.where(alive, value, jnp.zeros((), dtype))
    return out


def _binomial_capacity(n_trials: int, p: float, n_rows: int, tail: float = 1e-6) -> int:
    """Smallest c with P(any of n_rows Binomial(n_trials, p) draws > c) below ``tail``."""
    if p >= 1.0 or n_trials == 0:
        return max(n_trials, 1)
    from scipy.stats import binom

    c = int(binom.isf(tail / max(n_rows, 1), n_trials, p))
    return max(min(c + 1, n_trials), 1)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7))
def _sample_rows(key, p, n_pre, n_post, n_targets, capacity, autapses, certain):
    """Pairwise-Bernoulli targets of every row by geometric skipping; jitted as one program
    (op-by-op dispatch of these few ops costs seconds of compilation per new shape)."""
    # cap + 1 gaps: the last one tells whether the row would overflow its capacity.
    # One key per row and a 1-D draw per row: the same seed gives the same network whatever
    # the capacity (padding), since a 1-D draw's prefix does not depend on its length.
    u = jax.vmap(
        lambda k: jr.uniform(k, (capacity + 1,), minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
    )(jr.split(key, n_pre))
    ceiling = n_targets + 1
    if certain:
        gaps = jnp.ones(u.shape, jnp.int32)
    else:
        gaps = jnp.floor(jnp.log(u) / jnp.log1p(-p)) + 1.0
        gaps = jnp.minimum(gaps, ceiling).astype(jnp.int32)
    position = jax.lax.associative_scan(lambda a, b: jnp.minimum(a + b, ceiling), gaps, axis=1) - 1
    overflow = position[:, capacity] < n_targets
    position = position[:, :capacity]
    live = position < n_targets
    target = position
    if not autapses:
        target = target + (target >= jnp.arange(n_pre)[:, None]).astype(target.dtype)
    post = jnp.where(live, target, n_post).astype(_index_dtype())
    return post, live, overflow


def fixed_probability(
    key: PRNGKeyArray,
    n_pre: int,
    n_post: int,
    p: float,
    *,
    capacity: int | None = None,
    padding: float = 1.0,
    autapses: bool = True,
    weight: float | Initializer = 1.0,
    variables: Mapping[str, float | Initializer] | None = None,
    column_capacity: int | None = None,
    dtype=jnp.float32,
) -> RaggedConnectivity:
    """Pairwise-Bernoulli connectivity: each (pre, post) pair is connected with probability p.

    Each row's targets are drawn exactly by geometric skipping (gaps ~ Geometric(p) between
    successive targets), so work is O(n_pre * capacity), never O(n_pre * n_post).

    Args:
        key: PRNG key.
        n_pre, n_post: population sizes.
        p: connection probability in (0, 1].
        capacity: slots per row. Default: ``ceil(padding * c)`` where ``c`` bounds the largest
            Binomial row length with probability ``1 - 1e-6``.
        padding: spare-capacity factor (>= 1) applied to the default capacity.
        autapses: if False, ``n_pre == n_post`` and no neuron connects to itself.
        weight: constant or ``jax.nn.initializers``-style callable ``(key, shape, dtype)``.
        variables: extra per-synapse variables, name -> constant or initializer.
        column_capacity: if given, also build a column view of this capacity.
        dtype: dtype of the per-synapse variables.

    Returns:
        A :class:`RaggedConnectivity` with targets sorted ascending in each row.

    Raises:
        ValueError: bad sizes or probability, or a drawn row longer than ``capacity``.

    Example:
        >>> conn = fixed_probability(jax.random.key(0), 100, 100, 0.1, autapses=False)
        >>> conn.to_dense().shape
        (100, 100)
    """
    for name, value in (("n_pre", n_pre), ("n_post", n_post)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if not (0.0 < float(p) <= 1.0):
        raise ValueError(f"p: expected a probability in (0, 1], got {p}")
    if padding < 1.0:
        raise ValueError(f"padding: expected a factor >= 1, got {padding}")
    if not autapses and n_pre != n_post:
        raise ValueError(
            "autapses=False needs a recurrent projection (n_pre == n_post), "
            f"got {n_pre} != {n_post}"
        )
    n_targets = n_post if autapses else n_post - 1
    if capacity is None:
        capacity = max(1, math.ceil(padding * _binomial_capacity(n_targets, float(p), n_pre)))
    if not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity: expected a positive int, got {capacity!r}")
    _check_index_width(n_pre, n_post, capacity, column_capacity or 0)
    k_gap, k_init = jr.split(key)
    post, live, overflow = _sample_rows(
        k_gap, jnp.float32(p), n_pre, n_post, n_targets, capacity, autapses, float(p) >= 1.0
    )
    if _is_concrete(overflow):
        if bool(np.asarray(overflow).any()):
            i = int(np.argmax(np.asarray(overflow)))
            raise ValueError(
                f"row {i} drew more than capacity={capacity} targets; pass a larger capacity "
                "(or padding)"
            )
    else:
        post = eqx.error_if(post, jnp.any(overflow), "a row drew more targets than capacity")
    synapses = _init_synapses(k_init, live, weight, variables, dtype)
    column = None if column_capacity is None else build_column_view(post, n_post, column_capacity)
    return RaggedConnectivity(post=post, synapses=synapses, column=column, n_post=n_post)


def from_dense(
    weights: Shaped[ArrayLike, "pre post"],
    *,
    capacity: int | None = None,
    column_capacity: int | None = None,
    variables: Mapping[str, Shaped[ArrayLike, "pre post"]] | None = None,
) -> RaggedConnectivity:
    """Builds a projection whose synapses are the nonzero entries of a dense matrix.

    Args:
        weights: ``[n_pre, n_post]`` dense weights; each nonzero entry becomes a synapse.
        capacity: slots per row; default (eager only) is the longest row. Under ``jit`` pass it.
        column_capacity: if given, also build a column view.
        variables: extra dense ``[n_pre, n_post]`` per-synapse variables, read at the synapses.

    Raises:
        ValueError: wrong rank, non-finite weights, or a row longer than ``capacity``.
    """
    weights = jnp.asarray(weights)
    if weights.ndim != 2:
        raise ValueError(f"weights: expected a 2-D [n_pre, n_post] array, got {weights.shape}")
    n_pre, n_post = weights.shape
    live = weights != 0
    counts = jnp.sum(live, axis=1, dtype=jnp.int32)
    if capacity is None:
        if not _is_concrete(counts):
            raise ValueError("from_dense under jit needs an explicit static `capacity`")
        capacity = max(int(np.asarray(counts).max(initial=0)), 1)
    if not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity: expected a positive int, got {capacity!r}")
    _check_index_width(n_pre, n_post, capacity, column_capacity or 0)
    if _is_concrete(counts) and int(np.asarray(counts).max(initial=0)) > capacity:
        i = int(np.argmax(np.asarray(counts)))
        raise ValueError(f"row {i} has {int(counts[i])} nonzero entries, over capacity={capacity}")
    order = jnp.argsort(~live, axis=1, stable=True)[:, :capacity]
    slot_live = jnp.take_along_axis(live, order, axis=1)
    post = jnp.where(slot_live, order, n_post).astype(_index_dtype())
    dense_vars = {"weight": weights, **{k: jnp.asarray(v) for k, v in (variables or {}).items()}}
    synapses = {}
    for name, dense in dense_vars.items():
        if dense.shape != weights.shape:
            raise ValueError(
                f"variables[{name!r}]: expected shape {weights.shape}, got {dense.shape}"
            )
        value = jnp.take_along_axis(dense, order, axis=1)
        synapses[name] = jnp.where(slot_live, value, jnp.zeros((), value.dtype))
    column = None if column_capacity is None else build_column_view(post, n_post, column_capacity)
    return RaggedConnectivity(post=post, synapses=synapses, column=column, n_post=n_post)


def from_edges(
    pre: Int[ArrayLike, " edge"],
    post: Int[ArrayLike, " edge"],
    weight: Shaped[ArrayLike, " edge"] | float = 1.0,
    *,
    n_pre: int,
    n_post: int,
    capacity: int | None = None,
    column_capacity: int | None = None,
    variables: Mapping[str, Shaped[ArrayLike, " edge"]] | None = None,
    dtype=jnp.float32,
) -> RaggedConnectivity:
    """Builds a projection from explicit edge lists ``(pre[e], post[e], weight[e])``.

    Edges of one row fill its slots in ascending target order.

    Args:
        pre, post: ``[edge]`` integer endpoints, in ``[0, n_pre)`` and ``[0, n_post)``.
        weight: ``[edge]`` weights or one constant.
        n_pre, n_post: population sizes.
        capacity: slots per row; default (eager only) is the longest row.
        column_capacity: if given, also build a column view.
        variables: extra ``[edge]`` per-synapse variables.
        dtype: dtype for a constant ``weight``.

    Raises:
        ValueError: out-of-range endpoints, a duplicated (pre, post) pair, or a row over
            ``capacity``; each message names the offending edge or row.
    """
    pre = jnp.asarray(pre)
    post_e = jnp.asarray(post)
    for name, value in (("pre", pre), ("post", post_e)):
        if value.ndim != 1 or not jnp.issubdtype(value.dtype, jnp.integer):
            raise ValueError(
                f"{name}: expected a 1-D integer array, got {value.dtype}{value.shape}"
            )
    if pre.shape != post_e.shape:
        raise ValueError(
            f"pre and post: expected equal lengths, got {pre.shape} and {post_e.shape}"
        )
    for name, value in (("n_pre", n_pre), ("n_post", n_post)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    n_edges = pre.shape[0]
    weight_e = jnp.broadcast_to(jnp.asarray(weight, None if jnp.ndim(weight) else dtype), pre.shape)
    values = {"weight": weight_e, **{k: jnp.asarray(v) for k, v in (variables or {}).items()}}
    for name, value in values.items():
        if value.shape != pre.shape:
            raise ValueError(
                f"{name}: expected shape {pre.shape} (one per edge), got {value.shape}"
            )
    if _is_concrete(pre, post_e):
        pre_np, post_np = np.asarray(pre), np.asarray(post_e)
        for name, arr, n in (("pre", pre_np, n_pre), ("post", post_np, n_post)):
            bad = (arr < 0) | (arr >= n)
            if bad.any():
                e = int(np.argmax(bad))
                raise ValueError(f"edge {e}: {name} = {arr[e]} is out of range [0, {n})")
    idx = _index_dtype()
    order = jnp.lexsort((post_e, pre))
    spre, spost = pre[order], post_e[order]
    counts = jnp.bincount(pre, length=n_pre)
    start = jnp.cumsum(counts) - counts
    slot = jnp.arange(n_edges, dtype=idx) - start[spre].astype(idx)
    dup = jnp.zeros(n_edges, bool)
    if n_edges > 1:
        dup = dup.at[1:].set((spre[1:] == spre[:-1]) & (spost[1:] == spost[:-1]))
    if capacity is None:
        if not _is_concrete(counts):
            raise ValueError("from_edges under jit needs an explicit static `capacity`")
        capacity = max(int(np.asarray(counts).max(initial=0)), 1)
    if not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity: expected a positive int, got {capacity!r}")
    _check_index_width(n_pre, n_post, capacity, column_capacity or 0)
    if _is_concrete(dup, counts):
        if bool(np.asarray(dup).any()):
            k = int(np.argmax(np.asarray(dup)))
            e = int(np.asarray(order)[k])
            raise ValueError(
                f"edge {e}: duplicate synapse ({int(spre[k])} -> {int(spost[k])}); "
                "each (pre, post) pair may appear once"
            )
        if int(np.asarray(counts).max(initial=0)) > capacity:
            i = int(np.argmax(np.asarray(counts)))
            raise ValueError(f"row {i} has {int(counts[i])} edges, over capacity={capacity}")
    else:
        slot = eqx.error_if(slot, jnp.any(dup), "duplicate (pre, post) edge")
        slot = eqx.error_if(slot, jnp.any(counts > capacity), "a row has more edges than capacity")
    post_arr = (
        jnp.full((n_pre, capacity), n_post, idx).at[spre, slot].set(spost.astype(idx), mode="drop")
    )
    synapses = {
        name: jnp.zeros((n_pre, capacity), value.dtype)
        .at[spre, slot]
        .set(value[order], mode="drop")
        for name, value in values.items()
    }
    column = (
        None if column_capacity is None else build_column_view(post_arr, n_post, column_capacity)
    )
    return RaggedConnectivity(post=post_arr, synapses=synapses, column=column, n_post=n_post)
