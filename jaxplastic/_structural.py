"""Structural plasticity primitives: remove and add synapses inside ``jit``.

Slots are stable: removing a synapse frees its slot, adding one fills a free slot, nothing
ever moves. Every primitive keeps the invariants of :class:`RaggedConnectivity`, updates the
column view incrementally (touching only the changed synapses), and returns a
:class:`RewireInfo` with the ``changed`` slot mask and the counts. Additions that cannot be
placed are refused and counted by cause, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax import lax

from native_kernels import structural as _native

from ._connectivity import (
    _WORD,
    ColumnView,
    RaggedConnectivity,
    _pack_bits,
    _per_platform,
    _use_native_kernel,
)
from ._custom_types import Array, ArrayLike, Bool, Int, NativeImpl, PRNGKeyArray, Shaped

__all__ = [
    "RewireInfo",
    "RowUpdate",
    "RowView",
    "add_synapses",
    "remove_slots",
    "remove_synapses",
    "reset_slots",
    "update_rows",
]


class RewireInfo(NamedTuple):
    """What one structural step did.

    Attributes:
        changed: ``bool[pre, cap]``, slots whose synapse was removed or added (reset
            slot-aligned state such as optimiser moments there with :func:`reset_slots`).
        removed: number of synapses removed.
        added: number of synapses added.
        refused_duplicate: proposals whose target was already in the row (or proposed twice).
        refused_row_full: proposals refused because the row had no free slot left.
        refused_column_full: proposals refused because the target's column view was full.
        refused_out_of_range: proposals naming a row or target outside the projection.
    """

    changed: Bool[Array, "pre cap"]
    removed: Int[Array, ""]
    added: Int[Array, ""]
    refused_duplicate: Int[Array, ""]
    refused_row_full: Int[Array, ""]
    refused_column_full: Int[Array, ""]
    refused_out_of_range: Int[Array, ""]

    @property
    def refused(self) -> Int[Array, ""]:
        """Total number of refused proposals."""
        return (
            self.refused_duplicate
            + self.refused_row_full
            + self.refused_column_full
            + self.refused_out_of_range
        )

    def merge(self, other: RewireInfo) -> RewireInfo:
        """Combines the records of two steps applied one after the other."""
        return _summed(_or(self.changed, other.changed), self, other)


def _summed(changed: Bool[Array, "pre cap"], a: RewireInfo, b: RewireInfo) -> RewireInfo:
    """A record with mask ``changed`` and the counts of ``a`` and ``b`` added (``merge``, or a
    later step whose ``changed`` already includes the earlier one's)."""
    return RewireInfo(changed, *(x + y for x, y in zip(a[1:], b[1:], strict=True)))


def _or(a: Bool[Array, "..."], b: Bool[Array, "..."]) -> Bool[Array, "..."]:
    """``a | b``, computed on bytes: XLA's CPU code for a logical op between two boolean
    arrays is about 3x slower than the same op on ``uint8`` (with the conversions)."""
    return (a.astype(jnp.uint8) | b.astype(jnp.uint8)).astype(jnp.bool_)


def _zero_count() -> Int[Array, ""]:
    return jnp.zeros((), jnp.int32)


_LANES = 32  # uint32 words per row of the byte-lane count
_BYTE_ROWS = 255  # rows summed before a byte lane could overflow


def _count(x: Bool[Array, "..."]) -> Int[Array, ""]:
    """Number of True entries.

    A large mask (a ``[pre, cap]`` slot mask) is counted four entries per ``uint32`` word:
    booleans are bytes of 0 or 1, so summing up to 255 words lane by lane cannot carry from
    one byte into the next, and the reduction runs over the contiguous axis of 32 words.
    On CPU that is about three times faster than ``jnp.sum`` of the booleans.
    """
    if x.size < 4 * _LANES * _BYTE_ROWS:
        return jnp.sum(x, dtype=jnp.int32)
    words = _byte_words(x, _LANES * _BYTE_ROWS).reshape(-1, _BYTE_ROWS, _LANES)
    sums = jnp.sum(words, axis=1, dtype=jnp.uint32)  # [n_blocks, lanes], each byte <= 255
    mask = jnp.uint32(0xFF)
    lanes = (sums & mask) + ((sums >> 8) & mask) + ((sums >> 16) & mask) + (sums >> 24)
    return jnp.sum(lanes.astype(jnp.int32), dtype=jnp.int32)


def _any(x: Bool[Array, "..."]) -> Bool[Array, ""]:
    """Whether any entry is True, read four booleans per ``uint32`` word (on CPU about 1.5x
    faster than ``jnp.any`` of the booleans)."""
    return jnp.any(_byte_words(x, 1) != 0)


def _byte_words(x: Bool[Array, "..."], multiple: int) -> Shaped[Array, " words"]:
    """The booleans of ``x``, flattened and padded with False, as ``uint32`` words of four
    bytes of 0 or 1; the number of words is a multiple of ``multiple``."""
    block = 4 * multiple
    flat = x.reshape(-1).astype(jnp.uint8)
    flat = jnp.pad(flat, (0, -flat.shape[0] % block))
    return lax.bitcast_convert_type(flat.reshape(-1, 4), jnp.uint32)


_SCAN_BLOCK = 32


def _cumsum(x: Int[Array, " k"]) -> Int[Array, " k"]:
    """Inclusive prefix sum of a 1-D array of 0s and 1s, as int32.

    Blocks of 32 are summed by a product with a triangular matrix (exact: sums <= 32 in
    float32), then the block totals by a short cumsum. On CPU that is 1.3-1.8x faster than
    ``jnp.cumsum``, which XLA lowers to a reduce-window.
    """
    k = x.shape[0]
    n_blocks = -(-k // _SCAN_BLOCK)
    blocks = jnp.pad(x.astype(jnp.float32), (0, n_blocks * _SCAN_BLOCK - k))
    upper = np.triu(np.ones((_SCAN_BLOCK, _SCAN_BLOCK), np.float32))
    within = jnp.dot(
        blocks.reshape(n_blocks, _SCAN_BLOCK), upper, precision=lax.Precision.HIGHEST
    ).astype(jnp.int32)
    totals = within[:, -1]
    return (within + (jnp.cumsum(totals) - totals)[:, None]).reshape(-1)[:k]


# -- packed bit masks -------------------------------------------------------------------------


def _count_bits(words: Shaped[Array, "k words"]) -> Int[Array, " k"]:
    return jnp.sum(lax.population_count(words).astype(jnp.int32), axis=1, dtype=jnp.int32)


_UNROLL_WORDS = 16  # rows of up to this many words are walked word by word


def _nth_bit(words: Shaped[Array, "k words"], n: Int[Array, " k"], width: int) -> Int[Array, " k"]:
    """Index of the (n+1)-th set bit in each row of packed ``words`` (``width`` if none)."""
    k, n_words = words.shape
    n = n.astype(jnp.int32)
    if n_words > _UNROLL_WORDS:
        counts = lax.population_count(words).astype(jnp.int32)
        through = jnp.cumsum(counts, axis=1)  # set bits up to and including each word
        word = jnp.sum(through <= n[:, None], axis=1, dtype=jnp.int32)  # n_words if none
        here = jnp.arange(n_words, dtype=jnp.int32)[None, :] == word[:, None]
        rest = n - jnp.sum(jnp.where(here, through - counts, 0), axis=1, dtype=jnp.int32)
        x = jnp.sum(jnp.where(here, words, jnp.uint32(0)), axis=1, dtype=jnp.uint32)
    else:
        # Walk the words, counting down `rest` until the word that holds the bit. The words
        # are materialised first: XLA would otherwise fuse their packing into every use.
        words = lax.optimization_barrier(words)
        rest, word, x = n, jnp.full(k, n_words, jnp.int32), jnp.zeros(k, jnp.uint32)
        found = jnp.zeros(k, bool)
        for w in range(n_words):
            count = lax.population_count(words[:, w]).astype(jnp.int32)
            here = ~found & (rest < count)
            word = jnp.where(here, w, word)
            x = jnp.where(here, words[:, w], x)
            found = found | here
            rest = jnp.where(found, rest, rest - count)
    # Binary search inside the word: keep the half that holds the (rest+1)-th set bit.
    pos = jnp.zeros(k, jnp.uint32)
    for half in (16, 8, 4, 2, 1):
        low = (x >> pos) & jnp.uint32((1 << half) - 1)
        low_count = lax.population_count(low).astype(jnp.int32)
        up = rest >= low_count
        rest = jnp.where(up, rest - low_count, rest)
        pos = jnp.where(up, pos + jnp.uint32(half), pos)
    index = word * _WORD + pos.astype(jnp.int32)
    return jnp.where(word < n_words, index, width)


def _mark_entries(
    free_bits: Shaped[Array, "post words"],
    columns: Int[Array, "..."],
    entries: Int[Array, "..."],
    free: bool,
) -> Shaped[Array, "post words"]:
    """Sets (``free``) or clears the free bits of column entries ``(columns, entries)``,
    which must be distinct; an out-of-range column is skipped. Entries that share a word are
    summed into it: each adds or subtracts its own bit, so the sum is the OR (or AND NOT)."""
    bit = jnp.uint32(1) << (entries % _WORD).astype(jnp.uint32)
    if not free:
        bit = jnp.uint32(0) - bit  # two's complement: adding it subtracts the (set) bit
    return free_bits.at[columns, entries // _WORD].add(bit, mode="drop")


# -- implementation choice --------------------------------------------------------------------


def _native_fits(conn: RaggedConnectivity) -> bool:
    """Whether the native kernels handle this projection's index dtypes."""
    dtype = conn.post.dtype
    if dtype not in (jnp.int32, jnp.int64):
        return False
    col = conn.column
    return col is None or (
        col.pre_slot.dtype == dtype
        and col.position.dtype == dtype
        and col.free_bits.dtype == jnp.uint32
    )


def _use_native(conn: RaggedConnectivity, impl: NativeImpl) -> bool:
    """Static choice: the native CPU kernel (``"native"``, or ``"auto"`` where it is built and
    fits the projection) or the XLA implementation (``"xla"``)."""
    needs = (
        "the native kernels need int32 or int64 `post` and column arrays of the same dtype, "
        f"got post {conn.post.dtype}"
    )
    return _use_native_kernel(impl, _native_fits(conn), needs)


def _column_pair(conn: RaggedConnectivity) -> _native.Column | None:
    col = conn.column
    return None if col is None else (col.position, col.pre_slot, col.free_bits)


def _with(conn: RaggedConnectivity, post, column, synapses) -> RaggedConnectivity:
    if column is not None:
        position, pre_slot, free_bits = column
        column = ColumnView(pre_slot=pre_slot, position=position, free_bits=free_bits)
    return RaggedConnectivity(post, synapses, column, conn.n_post)


# -- removal ----------------------------------------------------------------------------------


def remove_synapses(
    conn: RaggedConnectivity, mask: Bool[ArrayLike, "pre cap"], *, impl: NativeImpl = "auto"
) -> tuple[RaggedConnectivity, RewireInfo]:
    """Removes the synapses at the masked slots.

    Frees each masked live slot (target := sentinel, every per-synapse variable := 0) and
    unlinks it from the column view in O(1) through ``column.position``. Masked free slots
    are ignored.

    Args:
        conn: the projection.
        mask: ``bool[pre, cap]``, slots to remove.
        impl: ``"auto"`` (default: the native CPU kernel when running on a CPU, where it was
            built), ``"native"`` or ``"xla"``. Results are identical.

    Returns:
        ``(conn, info)``: the new projection and a :class:`RewireInfo` (``removed`` counts the
        live slots freed; ``changed`` marks them).
    """
    mask = jnp.asarray(mask)
    if mask.shape != conn.post.shape or mask.dtype != jnp.bool_:
        raise ValueError(
            f"mask: expected a bool array of shape {conn.post.shape}, got {mask.dtype}{mask.shape}"
        )
    if _use_native(conn, impl):
        return _per_platform(impl, _remove_native, _remove_xla, conn, mask)
    return _remove_xla(conn, mask)


def _remove_native(
    conn: RaggedConnectivity, mask: Bool[Array, "pre cap"]
) -> tuple[RaggedConnectivity, RewireInfo]:
    removed, count, post, column, synapses = _native.remove(
        conn.post, _column_pair(conn), conn.synapses, mask, conn.n_post
    )
    z = _zero_count()
    return _with(conn, post, column, synapses), RewireInfo(removed, count, z, z, z, z, z)


def _remove_xla(
    conn: RaggedConnectivity, mask: Bool[Array, "pre cap"]
) -> tuple[RaggedConnectivity, RewireInfo]:
    # Through a conditional, whose result XLA materialises: as a plain expression it would be
    # fused into each of its uses and recomputed from the old targets, so that a `changed`
    # merged after a later edit needs a copy of them (prune + regrow: about 1.5x slower).
    removed = lax.cond(_any(mask), lambda: mask & conn.alive, lambda: jnp.zeros_like(mask))
    post = jnp.where(removed, conn.n_post, conn.post)
    synapses = {k: jnp.where(removed, jnp.zeros((), v.dtype), v) for k, v in conn.synapses.items()}
    column = conn.column
    if column is not None:
        # A gather from the column side: each column entry asks whether its slot was removed.
        # Compacting the removed slots and scattering only those was measured on CPU (10^6
        # slots): about 0.5 ms faster below 1 % removed, slower from a few %, and choosing
        # between the two at run time cost about what it saved; so the dense pass stays.
        flat_removed = jnp.append(removed.ravel(), False)
        sentinel = conn.n_pre * conn.capacity
        unlinked = flat_removed[column.pre_slot]
        pre_slot = jnp.where(unlinked, sentinel, column.pre_slot)
        position = jnp.where(removed, column.column_capacity, column.position)
        # Materialised: fused into a later gather of the words (an addition's), the packing
        # would be redone for every gathered word (prune + regrow: 2-3x slower).
        free_bits = lax.optimization_barrier(column.free_bits | _pack_bits(unlinked))
        column = ColumnView(pre_slot=pre_slot, position=position, free_bits=free_bits)
    new = RaggedConnectivity(post, synapses, column, conn.n_post)
    z = _zero_count()
    return new, RewireInfo(removed, _count(removed), z, z, z, z, z)


def _remove_in_rows(
    conn: RaggedConnectivity, rows: Int[Array, " k"], mask: Bool[Array, "k cap"]
) -> tuple[RaggedConnectivity, Bool[Array, "k cap"]]:
    """Removes masked slots of the given (distinct) rows; work is O(k * cap)."""
    old_post = conn.post[rows]
    removed = mask & (old_post != conn.n_post)
    post = conn.post.at[rows].set(jnp.where(removed, conn.n_post, old_post))
    synapses = {
        k: v.at[rows].set(jnp.where(removed, jnp.zeros((), v.dtype), v[rows]))
        for k, v in conn.synapses.items()
    }
    column = conn.column
    if column is not None:
        col_cap = column.column_capacity
        sentinel = conn.n_pre * conn.capacity
        old_pos = column.position[rows]
        col_rows = jnp.where(removed, old_post, conn.n_post)  # out of bounds -> dropped
        pre_slot = column.pre_slot.at[col_rows, old_pos].set(sentinel, mode="drop")
        position = column.position.at[rows].set(jnp.where(removed, col_cap, old_pos))
        free_bits = _mark_entries(column.free_bits, col_rows, old_pos, free=True)
        column = ColumnView(pre_slot=pre_slot, position=position, free_bits=free_bits)
    return RaggedConnectivity(post, synapses, column, conn.n_post), removed


def _remove_slots(
    conn: RaggedConnectivity,
    rows: Int[Array, " k"],
    slots: Int[Array, " k"],
    valid: Bool[Array, " k"],
) -> tuple[RaggedConnectivity, Bool[Array, " k"]]:
    """Removes the synapses at the listed slots ``(rows[e], slots[e])`` where ``valid``.

    The valid pairs must be distinct. Work is O(k): nothing proportional to the projection
    is read or written, so inside a loop the arrays are updated in place. Returns the new
    projection and which entries removed a live synapse.
    """
    n_pre, n_post = conn.n_pre, conn.n_post
    if conn.post.size == 0:  # no slots (and nothing to gather from)
        return conn, jnp.zeros(rows.shape, bool)
    old = conn.post.at[rows, slots].get(mode="fill", fill_value=n_post)
    removed = valid & (old != n_post)
    # Every write below is indexed by `write_rows`, which depends on the reads (`old`, and
    # `position` through `pos`): XLA must read before it writes, and updates in place.
    write_rows = jnp.where(removed, rows, n_pre)  # out of bounds -> dropped
    post = conn.post.at[write_rows, slots].set(n_post, mode="drop")
    synapses = {
        k: v.at[write_rows, slots].set(jnp.zeros((), v.dtype), mode="drop")
        for k, v in conn.synapses.items()
    }
    column = conn.column
    if column is not None:
        col_cap = column.column_capacity
        pos = column.position.at[write_rows, slots].get(mode="fill", fill_value=col_cap)
        col_rows = jnp.where(removed, old, n_post)  # out of bounds -> dropped
        pre_slot = column.pre_slot.at[col_rows, pos].set(n_pre * conn.capacity, mode="drop")
        # A slot listed twice must set its entry's free bit once (the bits are added): each
        # entry writes its index into `position` at its slot, and the one that reads its own
        # index back is the slot's first.
        index = (jnp.minimum(pos, 0) + jnp.arange(rows.shape[0])).astype(column.position.dtype)
        claimed = column.position.at[write_rows, slots].set(index, mode="drop")
        first = claimed.at[write_rows, slots].get(mode="fill", fill_value=-1) == index
        position = claimed.at[write_rows, slots].set(col_cap, mode="drop")
        free_bits = _mark_entries(
            column.free_bits, jnp.where(first, col_rows, n_post), pos, free=True
        )
        column = ColumnView(pre_slot=pre_slot, position=position, free_bits=free_bits)
    return RaggedConnectivity(post, synapses, column, n_post), removed


def _check_index_lists(
    rows: Int[ArrayLike, " k"], other: Int[ArrayLike, " k"], other_name: str
) -> tuple[Int[Array, " k"], Int[Array, " k"]]:
    """Checks that ``rows`` and ``other`` are 1-D integer arrays of equal length."""
    rows, other = jnp.asarray(rows), jnp.asarray(other)
    if rows.ndim != 1 or other.shape != rows.shape:
        raise ValueError(
            f"rows and {other_name}: expected 1-D arrays of equal length, got {rows.shape} and "
            f"{other.shape}"
        )
    for name, arr in (("rows", rows), (other_name, other)):
        if not jnp.issubdtype(arr.dtype, jnp.integer):
            raise TypeError(f"{name}: expected an integer dtype, got {arr.dtype}")
    return rows, other


def remove_slots(
    conn: RaggedConnectivity,
    rows: Int[ArrayLike, " k"],
    slots: Int[ArrayLike, " k"],
    valid: Bool[ArrayLike, " k"] | None = None,
    *,
    impl: NativeImpl = "auto",
) -> tuple[RaggedConnectivity, RewireInfo]:
    """Removes the synapses at the listed slots ``(rows[e], slots[e])``.

    The same result as :func:`remove_synapses` with a mask of the listed slots, but the
    projection's arrays are only written at the listed slots (O(k) scatters, in place when the
    projection is donated or a loop carry), and the column view is unlinked through
    ``column.position`` at those slots only; only the returned ``changed`` mask (and its count)
    spans the whole projection. Entries that are not ``valid``, out of range, or name a free
    slot are ignored; a slot listed twice is removed once.

    Args:
        conn: the projection.
        rows: ``[k]`` presynaptic rows.
        slots: ``[k]`` slot indices in ``[0, cap)``.
        valid: optional ``bool[k]``; entries where it is False are ignored (default: all).
        impl: ``"auto"`` (default: the native CPU kernel when running on a CPU, where it was
            built: one pass over the list), ``"native"`` or ``"xla"``. Results are identical.

    Returns:
        ``(conn, info)``: the new projection and a :class:`RewireInfo` whose ``changed`` marks
        the freed slots and ``removed`` counts them.

    Example:
        >>> import jax.numpy as jnp, jaxplastic as jp
        >>> conn = jp.from_edges([0, 0, 1], [1, 2, 0], n_pre=2, n_post=3, capacity=2)
        >>> conn, info = jp.remove_slots(conn, jnp.array([0, 1]), jnp.array([1, 0]))
        >>> int(info.removed), int(conn.num_synapses)
        (2, 1)
    """
    rows, slots = _check_index_lists(rows, slots, "slots")
    if valid is None:
        valid = jnp.ones(rows.shape, bool)
    valid = jnp.asarray(valid)
    if valid.shape != rows.shape or valid.dtype != jnp.bool_:
        raise ValueError(
            f"valid: expected a bool array of shape {rows.shape}, got {valid.dtype}{valid.shape}"
        )
    rows = rows.astype(conn.post.dtype)
    slots = slots.astype(conn.post.dtype)
    # Negative indices would wrap around in a gather: out of range entries are ignored instead.
    in_range = (rows >= 0) & (rows < conn.n_pre) & (slots >= 0) & (slots < conn.capacity)
    valid = valid & in_range
    if _use_native(conn, impl):
        return _per_platform(
            impl, _remove_slots_native, _remove_slots_xla, conn, rows, slots, valid
        )
    return _remove_slots_xla(conn, rows, slots, valid)


def _remove_slots_native(
    conn: RaggedConnectivity,
    rows: Int[Array, " k"],
    slots: Int[Array, " k"],
    valid: Bool[Array, " k"],
) -> tuple[RaggedConnectivity, RewireInfo]:
    _, count, changed, post, column, synapses = _native.remove_slots(
        conn.post, _column_pair(conn), conn.synapses, rows, slots, valid, conn.n_post
    )
    z = _zero_count()
    return _with(conn, post, column, synapses), RewireInfo(changed, count, z, z, z, z, z)


def _remove_slots_xla(
    conn: RaggedConnectivity,
    rows: Int[Array, " k"],
    slots: Int[Array, " k"],
    valid: Bool[Array, " k"],
) -> tuple[RaggedConnectivity, RewireInfo]:
    conn, removed = _remove_slots(conn, rows, slots, valid)
    # A repeated slot reads the same live synapse twice and writes the same values twice, so
    # the projection is right; counting the changed mask counts it once.
    write_rows = jnp.where(removed, rows, conn.n_pre)  # out of bounds -> dropped
    changed = jnp.zeros(conn.post.shape, bool).at[write_rows, slots].set(True, mode="drop")
    z = _zero_count()
    return conn, RewireInfo(changed, _count(changed), z, z, z, z, z)


# -- addition ---------------------------------------------------------------------------------


def _stable_sort(key: Int[Array, " k"], num_keys: int) -> tuple[Int[Array, " k"], Int[Array, " k"]]:
    """Sorts ``key`` (values in ``[0, num_keys)``) stably: ``(sorted key, permutation)``.

    When ``num_keys * k`` fits an unsigned 32-bit word, key and position are packed into one
    word and sorted as a single array, several times faster on CPU than a sort that carries
    the permutation as a second operand.
    """
    k = key.shape[0]
    index = jnp.arange(k, dtype=jnp.int32)
    if num_keys * k <= np.iinfo(np.uint32).max:
        packed = jnp.sort(key.astype(jnp.uint32) * jnp.uint32(k) + index.astype(jnp.uint32))
        sorted_key = (packed // jnp.uint32(k)).astype(key.dtype)
        return sorted_key, (packed % jnp.uint32(k)).astype(jnp.int32)
    return lax.sort((key, index), num_keys=1, is_stable=True)


class _Groups(NamedTuple):
    """Proposals grouped by a key (row or target), in proposal order inside each group."""

    order: Int[Array, " k"] | None  # the proposal at each sorted position (None: identity)
    inverse: Int[Array, " k"] | None  # the sorted position of each proposal (None: identity)
    start: Int[Array, " k"]  # for each sorted position, where its group starts


def _group_by(key: Int[Array, " k"], num_keys: int) -> _Groups:
    """One stable sort by ``key``; every rank within these groups then costs a cumsum."""
    k = key.shape[0]
    index = jnp.arange(k, dtype=jnp.int32)
    sorted_key, order = _stable_sort(key, num_keys)
    start = _group_starts(sorted_key)
    inverse = jnp.zeros(k, jnp.int32).at[order].set(index, unique_indices=True)
    return _Groups(order, inverse, start)


def _sorted_groups(key: Int[Array, " k"]) -> _Groups:
    """The groups of a ``key`` that is already sorted: no sort, no permutation."""
    return _Groups(None, None, _group_starts(key))


def _group_starts(sorted_key: Int[Array, " k"]) -> Int[Array, " k"]:
    """For each position of a sorted key, where its run of equal keys starts.

    Runs are numbered by a prefix sum and each run's start is scattered to its number: a
    few cheap operations, where a running maximum of the starts is a reduce-window on CPU.
    """
    k = sorted_key.shape[0]
    index = jnp.arange(k, dtype=jnp.int32)
    is_start = jnp.concatenate([index[:1] == 0, sorted_key[1:] != sorted_key[:-1]])
    run = _cumsum(is_start) - 1
    at = jnp.where(is_start, run, k + index)  # one writer per run; the rest out of bounds
    starts = jnp.zeros(k, jnp.int32).at[at].set(index, mode="drop", unique_indices=True)
    return starts[run]


def _rank_in_group(groups: _Groups, include: Bool[Array, " k"]) -> Int[Array, " k"]:
    """For each proposal, how many included proposals of the same group come before it."""
    inc = (include if groups.order is None else include[groups.order]).astype(jnp.int32)
    before = _cumsum(inc) - inc
    rank = before - before[groups.start]
    return rank if groups.inverse is None else rank[groups.inverse]


_WINDOW = 8  # a row's proposals compared pairwise when no row has more than _WINDOW + 1


def _repeated_in_rows(
    by_row: _Groups, targets: Int[Array, " k"], candidate: Bool[Array, " k"], n_post: int
) -> Bool[Array, " k"]:
    """Candidates whose ``(row, target)`` an earlier candidate already proposed.

    In row order each row's proposals are contiguous and in proposal order, so a repeat lies
    at most (row's proposals - 1) positions back. When no row has more than ``_WINDOW + 1``
    proposals, comparing each with the ``_WINDOW`` before it is exact and costs a few
    elementwise passes; otherwise a stable sort by target inside the row order puts equal
    pairs side by side (two passes of a least-significant-key-first sort).
    """
    k = targets.shape[0]
    index = jnp.arange(k, dtype=jnp.int32)
    order = index if by_row.order is None else by_row.order
    sorted_target, sorted_candidate = targets[order], candidate[order]
    # How far back the earliest candidate of its row lies, at most.
    longest = jnp.max(jnp.where(sorted_candidate, index - by_row.start, 0), initial=0)

    def by_window(_):
        repeat = jnp.zeros(k, bool)
        for w in range(1, min(_WINDOW, k - 1) + 1):
            same = (
                (by_row.start[w:] <= index[:-w])  # position i - w lies in the same row
                & (sorted_target[w:] == sorted_target[:-w])
                & sorted_candidate[:-w]
            )
            repeat = repeat.at[w:].set(repeat[w:] | same)
        return repeat & sorted_candidate

    def by_sort(_):
        # Non-candidates get a key of their own: between two equal candidates they would
        # break the adjacency (an out-of-range proposal sits at the safe row 0, target 0).
        key = jnp.where(sorted_candidate, sorted_target, n_post)
        then_target, then = _stable_sort(key, n_post + 1)
        start, cand = by_row.start[then], sorted_candidate[then]
        same = (
            (start[1:] == start[:-1]) & (then_target[1:] == then_target[:-1]) & cand[1:] & cand[:-1]
        )
        return jnp.zeros(k, bool).at[then[1:]].set(same, unique_indices=True)

    repeat_sorted = lax.cond(longest <= _WINDOW, by_window, by_sort, None)
    return repeat_sorted if by_row.inverse is None else repeat_sorted[by_row.inverse]


def _free_words(
    table: Int[Array, "n width"], index: Int[Array, " k"], sentinel: int
) -> Shaped[Array, "k words"]:
    """Packed free-entry masks (``table == sentinel``) of the rows ``index`` of ``table``."""
    if index.shape[0] < table.shape[0]:
        return _pack_bits(table[index] == sentinel)
    # At least one proposal per row: pack every row once and gather a few words per proposal.
    # The packed words are materialised first: XLA would otherwise fuse the packing into the
    # gather and redo it for every proposal.
    words = lax.optimization_barrier(_pack_bits(table == sentinel))
    return words[index]


def add_synapses(
    conn: RaggedConnectivity,
    rows: Int[ArrayLike, " k"],
    targets: Int[ArrayLike, " k"],
    values: Mapping[str, Shaped[ArrayLike, " k"]] | None = None,
    *,
    impl: NativeImpl = "auto",
) -> tuple[RaggedConnectivity, RewireInfo]:
    """Adds synapses ``rows[e] -> targets[e]`` into free slots, refusing what cannot fit.

    Proposals are taken in order, greedily: each is placed if its row and its target's column
    still have room after the earlier accepted proposals. Refused (and counted by cause):
    a row or target out of range, a target already in the row or proposed twice for the same
    row, a full row, a full column (when the projection has a column view). A target equal to
    the sentinel ``n_post`` means "no proposal" and is neither added nor counted. Work is
    O(k * (cap + column_capacity) + k log k); nothing is rebuilt.

    Args:
        conn: the projection.
        rows: ``[k]`` presynaptic rows.
        targets: ``[k]`` postsynaptic targets (``n_post`` for none).
        values: initial per-synapse values, name -> ``[k]``; variables not named start at 0.
        impl: ``"auto"`` (default: the native CPU kernel when running on a CPU, where it was
            built), ``"native"`` or ``"xla"``. Results are identical.

    Returns:
        ``(conn, info)`` with ``info.changed`` marking the filled slots.
    """
    rows, targets, values = _check_proposals(conn, rows, targets, values)
    conn, info, _ = _add(conn, rows, targets, values, impl=impl)
    return conn, info


def _check_proposals(
    conn: RaggedConnectivity,
    rows: Int[ArrayLike, " k"],
    targets: Int[ArrayLike, " k"],
    values: Mapping[str, Shaped[ArrayLike, " k"]] | None,
) -> tuple[Int[Array, " k"], Int[Array, " k"], dict[str, Shaped[ArrayLike, " k"]]]:
    """Validates the proposals of :func:`add_synapses` (eagerly, on shapes and dtypes)."""
    rows, targets = _check_index_lists(rows, targets, "targets")
    values = dict(values or {})
    unknown = set(values) - set(conn.synapses)
    if unknown:
        raise ValueError(
            f"values: unknown per-synapse variables {sorted(unknown)}; "
            f"the projection has {sorted(conn.synapses)}"
        )
    for name, v in values.items():
        if jnp.shape(v) != rows.shape:
            raise ValueError(f"values[{name!r}]: expected shape {rows.shape}, got {jnp.shape(v)}")
    return rows, targets, values


def _add(
    conn: RaggedConnectivity,
    rows: Int[Array, " k"],
    targets: Int[Array, " k"],
    values: Mapping[str, Shaped[ArrayLike, " k"]],
    rows_sorted: bool = False,
    changed: Bool[Array, "pre cap"] | None = None,
    impl: NativeImpl = "auto",
) -> tuple[RaggedConnectivity, RewireInfo, Bool[Array, " k"]]:
    """:func:`add_synapses` on checked inputs; also returns which proposals were placed.

    ``rows_sorted`` promises that ``rows`` is non-decreasing and in range: the proposals are
    then already grouped by row, and the sort by row is skipped. ``changed``, if given, is
    an earlier step's mask: the returned ``changed`` is it with the added slots set.
    """
    values = dict(values)
    if _use_native(conn, impl):
        if changed is None:
            changed = jnp.zeros(conn.post.shape, bool)

        def xla(conn, rows, targets, values, changed):
            return _add_xla(conn, rows, targets, values, rows_sorted, changed)

        return _per_platform(impl, _add_native, xla, conn, rows, targets, values, changed)
    return _add_xla(conn, rows, targets, values, rows_sorted, changed)


def _add_native(
    conn: RaggedConnectivity,
    rows: Int[Array, " k"],
    targets: Int[Array, " k"],
    values: dict[str, Shaped[ArrayLike, " k"]],
    changed: Bool[Array, "pre cap"],
) -> tuple[RaggedConnectivity, RewireInfo, Bool[Array, " k"]]:
    """:func:`_add` by the native CPU kernel: one sequential greedy pass over the proposals."""
    k, dtype = rows.shape[0], conn.post.dtype
    values = {
        name: jnp.broadcast_to(jnp.asarray(v, conn.synapses[name].dtype), (k,))
        for name, v in values.items()
    }
    status, counts, post, changed, column, synapses = _native.add(
        conn.post,
        _column_pair(conn),
        conn.synapses,
        changed,
        rows.astype(dtype),
        targets.astype(dtype),
        values,
        conn.n_post,
    )
    info = RewireInfo(changed, _zero_count(), *(counts[c] for c in range(5)))
    return _with(conn, post, column, synapses), info, status == _native.ACCEPTED


def _add_xla(
    conn: RaggedConnectivity,
    rows: Int[Array, " k"],
    targets: Int[Array, " k"],
    values: dict[str, Shaped[ArrayLike, " k"]],
    rows_sorted: bool,
    changed: Bool[Array, "pre cap"] | None,
) -> tuple[RaggedConnectivity, RewireInfo, Bool[Array, " k"]]:
    n_pre, cap, n_post = conn.n_pre, conn.capacity, conn.n_post
    k = rows.shape[0]
    rows = rows.astype(conn.post.dtype)
    targets = targets.astype(conn.post.dtype)
    proposed = targets != n_post
    in_range = (rows >= 0) & (rows < n_pre) & (targets >= 0) & (targets < n_post)
    out_of_range = proposed & ~in_range
    if n_pre == 0 or n_post == 0:  # no proposal can be in range (and nothing to gather)
        z = _zero_count()
        changed = jnp.zeros(conn.post.shape, bool) if changed is None else changed
        info = RewireInfo(changed, z, z, z, z, z, _count(out_of_range))
        return conn, info, jnp.zeros(k, bool)
    safe_rows = jnp.where(in_range, rows, 0)
    safe_targets = jnp.where(in_range, targets, 0)

    candidate = proposed & in_range
    exists = jnp.any(conn.post[safe_rows] == safe_targets[:, None], axis=1)
    row_free = _free_words(conn.post, safe_rows, n_post)  # [k, ceil(cap / 32)]
    by_row = _sorted_groups(safe_rows) if rows_sorted else _group_by(safe_rows, n_pre)
    repeated = _repeated_in_rows(by_row, safe_targets, candidate, n_post)
    duplicate = candidate & (exists | repeated)
    candidate = candidate & ~duplicate

    room_row = _count_bits(row_free)
    column = conn.column
    if column is not None:
        col_free = column.free_bits[safe_targets]  # [k, ceil(col_cap / 32)]
        room_col = _count_bits(col_free)
        by_target = _group_by(safe_targets, n_post)

    # Greedy acceptance in proposal order, computed in parallel: each round accepts every
    # proposal that fits even if all undecided earlier ones were accepted, and refuses every
    # one that cannot fit even if none of them were. The earliest undecided proposal is
    # always decided, so this ends; it usually takes one round. Without a column view the
    # columns never refuse, so only the row side is ranked.
    def undecided(state):
        accepted, row_full, col_full = state
        return jnp.any(candidate & ~accepted & ~row_full & ~col_full)

    # In the first round nothing is accepted yet: the upper ranks are ranks among all
    # candidates, and the lower ranks are all zero.
    first_row_rank = _rank_in_group(by_row, candidate)
    first_col_rank = None if column is None else _rank_in_group(by_target, candidate)

    def round_(state, first=False):
        accepted, row_full, col_full = state
        open_ = candidate & ~accepted & ~row_full & ~col_full
        upper = accepted | open_
        row_fits = (first_row_rank if first else _rank_in_group(by_row, upper)) < room_row
        row_over = room_row <= (0 if first else _rank_in_group(by_row, accepted))
        if column is None:
            col_fits, col_over = True, False
        else:
            col_rank = first_col_rank if first else _rank_in_group(by_target, upper)
            col_fits = col_rank < room_col
            col_over = room_col <= (0 if first else _rank_in_group(by_target, accepted))
        accept = open_ & row_fits & col_fits
        refuse_r = open_ & ~accept & row_over
        # The row is checked first, as in a sequential pass: a column refusal is final only
        # once the row is known to have room.
        refuse_c = open_ & ~accept & row_fits & col_over
        return accepted | accept, row_full | refuse_r, col_full | refuse_c

    none = jnp.zeros(k, bool)
    first = round_((none, none, none), first=True)
    accepted, row_full, col_full = lax.while_loop(undecided, round_, first)

    # Nothing refused (the usual case): every candidate was accepted, and the ranks among the
    # accepted are the first round's ranks among the candidates.
    def final_ranks(_):
        row_rank = _rank_in_group(by_row, accepted)
        return row_rank, row_rank if column is None else _rank_in_group(by_target, accepted)

    refused = jnp.any(row_full | col_full)
    row_rank, col_rank = lax.cond(
        refused,
        final_ranks,
        lambda _: (first_row_rank, first_row_rank if column is None else first_col_rank),
        None,
    )
    slot = _nth_bit(row_free, row_rank, cap)
    # Accepted proposals fill distinct slots and distinct column positions. The others are
    # sent to distinct out-of-bounds rows (dropped), so that every index of the scatters below
    # is unique: XLA then writes them in parallel, about three times faster on a CPU.
    index_dtype = safe_rows.dtype
    unique = max(n_pre, n_post) + k <= np.iinfo(index_dtype).max
    skip = jnp.arange(k, dtype=index_dtype) if unique else jnp.zeros(k, index_dtype)
    write_rows = jnp.where(accepted, safe_rows, n_pre + skip)
    scatter = {"mode": "drop", "unique_indices": unique}
    post = conn.post.at[write_rows, slot].set(safe_targets, **scatter)
    synapses = {}
    for name, v in conn.synapses.items():
        new = jnp.asarray(values[name], v.dtype) if name in values else jnp.zeros(k, v.dtype)
        synapses[name] = v.at[write_rows, slot].set(new, **scatter)
    if changed is None:
        changed = jnp.zeros(conn.post.shape, bool)
    changed = changed.at[write_rows, slot].set(True, **scatter)
    if column is not None:
        pos = _nth_bit(col_free, col_rank, column.column_capacity)
        flat = safe_rows * cap + slot.astype(index_dtype)
        write_cols = jnp.where(accepted, safe_targets, n_post + skip)
        pre_slot = column.pre_slot.at[write_cols, pos].set(
            flat.astype(column.pre_slot.dtype), **scatter
        )
        position = column.position.at[write_rows, slot].set(
            pos.astype(column.position.dtype), **scatter
        )
        free_bits = _mark_entries(column.free_bits, write_cols, pos, free=False)
        column = ColumnView(pre_slot=pre_slot, position=position, free_bits=free_bits)
    new_conn = RaggedConnectivity(post, synapses, column, n_post)
    info = RewireInfo(
        changed=changed,
        removed=_zero_count(),
        added=_count(accepted),
        refused_duplicate=_count(duplicate),
        refused_row_full=_count(row_full),
        refused_column_full=_count(col_full),
        refused_out_of_range=_count(out_of_range),
    )
    return new_conn, info, accepted


_MIN_CHUNK = 1024


def _each_row(x: Shaped[Array, " m"], width: int) -> Shaped[Array, " k"]:
    """``jnp.repeat(x, width)`` by broadcasting (``jnp.repeat`` with a static total length
    is a scatter, a prefix sum and a gather)."""
    return jnp.broadcast_to(x[:, None], (x.shape[0], width)).reshape(-1)


def _add_row_blocks(
    conn: RaggedConnectivity,
    row_index: Int[Array, " m"],
    targets: Int[Array, "m width"],
    values: Mapping[str, Shaped[ArrayLike, "m width"]],
    rows_sorted: bool,
    before: RewireInfo,
    impl: NativeImpl = "auto",
) -> tuple[RaggedConnectivity, RewireInfo]:
    """:func:`add_synapses` of ``width`` proposals for each of the distinct rows ``row_index``
    (increasing when ``rows_sorted``), after a step that ``before`` records; returns the
    record of both."""
    if not _use_native(conn, impl):
        return _add_row_blocks_xla(conn, row_index, targets, values, rows_sorted, before)

    def native(conn, row_index, targets, values, before):
        m, width = targets.shape
        rows = _each_row(row_index.astype(conn.post.dtype), width)
        flat = {name: jnp.reshape(v, -1) for name, v in values.items()}
        conn, added, _ = _add_native(conn, rows, targets.reshape(-1), flat, before.changed)
        return conn, _summed(added.changed, before, added)

    def xla(conn, row_index, targets, values, before):
        return _add_row_blocks_xla(conn, row_index, targets, values, rows_sorted, before)

    return _per_platform(impl, native, xla, conn, row_index, targets, dict(values), before)


def _add_row_blocks_xla(
    conn: RaggedConnectivity,
    row_index: Int[Array, " m"],
    targets: Int[Array, "m width"],
    values: Mapping[str, Shaped[ArrayLike, "m width"]],
    rows_sorted: bool,
    before: RewireInfo,
) -> tuple[RaggedConnectivity, RewireInfo]:
    """:func:`_add_row_blocks` by XLA.

    A rule proposes a fixed number per row, mostly "none" (``n_post``). The real proposals
    are compacted, in order, into chunks of whole rows of at most ``size`` proposals, and
    each chunk is added in turn (usually one). Chunks share no row, so each chunk's
    duplicates and row ranks are its own, and adding them one after the other is greedy in
    proposal order over the columns as well: the result is :func:`add_synapses` of all the
    proposals at once, bit for bit, for the work of the real ones.
    """
    m, width = targets.shape
    k = m * width
    n_post = conn.n_post
    index_dtype = conn.post.dtype
    flat_targets = targets.reshape(k).astype(index_dtype)
    proposed = flat_targets != n_post
    in_range = (flat_targets >= 0) & (flat_targets < n_post)
    real = proposed & in_range
    out_of_range = _count(proposed & ~in_range)
    before = before._replace(refused_out_of_range=before.refused_out_of_range + out_of_range)
    if k == 0:  # a rule that proposes nothing
        return conn, before
    # Static chunk size: an eighth of the proposals (at least a row's worth).
    size = max(width, min(k, max(_MIN_CHUNK, k // 8)))
    stride = size - width + 1  # rows starting within one stride fit in one chunk
    through = _cumsum(real)  # [k] real proposals up to and including each
    row_end = through.reshape(m, width)[:, -1]
    row_start = row_end - jnp.sum(real.reshape(m, width), axis=1, dtype=jnp.int32)
    chunk_of_row = row_start // stride
    n_chunks = jnp.max(jnp.where(row_end > row_start, chunk_of_row + 1, 0), initial=0)
    chunk = _each_row(chunk_of_row, width)
    position = through - 1 - chunk * stride  # place inside its chunk, in [0, size)
    rows = _each_row(row_index.astype(index_dtype), width)
    flat_values = {
        name: jnp.asarray(v, conn.synapses[name].dtype).reshape(k) for name, v in values.items()
    }
    skip = size + jnp.arange(k, dtype=jnp.int32)  # distinct out-of-bounds places: dropped

    def one_chunk(state):
        c, conn, info = state
        place = jnp.where(real & (chunk == c), position, skip)

        def compact(x, fill):
            return jnp.full(size, fill, x.dtype).at[place].set(x, mode="drop", unique_indices=True)

        chunk_values = {name: compact(v, 0) for name, v in flat_values.items()}
        chunk_rows = compact(rows, 0)
        if rows_sorted:  # the empty places before and after the chunk's rows keep them sorted
            chunk_rows = lax.cummax(chunk_rows, axis=0)
        # The chunk's slots are set on the running `changed` mask: no mask per chunk to merge.
        conn, added, _ = _add(
            conn,
            chunk_rows,
            compact(flat_targets, n_post),
            chunk_values,
            rows_sorted,
            changed=info.changed,
            impl="xla",
        )
        return c + 1, conn, _summed(added.changed, info, added)

    _, conn, info = lax.while_loop(
        lambda state: state[0] < n_chunks, one_chunk, (jnp.zeros((), jnp.int32), conn, before)
    )
    return conn, info


# -- the generic per-row update ---------------------------------------------------------------


class RowView(eqx.Module):
    """One row of a projection, as a structural rule sees it.

    Attributes:
        index: the presynaptic neuron (row) index, a scalar.
        post: ``[cap]`` targets; the sentinel ``n_post`` marks a free slot.
        alive: ``[cap]`` live-slot mask.
        synapses: per-synapse variables of the row, name -> ``[cap]``.
        n_post: number of postsynaptic neurons (static).
    """

    index: Int[Array, ""]
    post: Int[Array, " cap"]
    alive: Bool[Array, " cap"]
    synapses: dict[str, Shaped[Array, " cap"]]
    n_post: int = eqx.field(static=True)


class RowUpdate(NamedTuple):
    """What a structural rule asks for one row.

    Attributes:
        remove: ``bool[cap]``, slots whose synapse to remove.
        add_post: ``int[k]`` proposed new targets; the sentinel ``n_post`` means none.
        add_values: initial values of the proposed synapses, name -> ``[k]``; variables
            not named start at 0.
    """

    remove: Bool[Array, " cap"]
    add_post: Int[Array, " k"]
    add_values: Mapping[str, Shaped[Array, " k"]] = {}


Rule = Callable[[RowView, Any, Any, PRNGKeyArray], RowUpdate]


def update_rows(
    conn: RaggedConnectivity,
    rule: Rule,
    key: PRNGKeyArray,
    *,
    pre: Any = None,
    post: Any = None,
    rows: Int[ArrayLike, " m"] | None = None,
    impl: NativeImpl = "auto",
) -> tuple[RaggedConnectivity, RewireInfo]:
    """Applies a per-row structural rule to every row in parallel: remove, then add.

    The JAX counterpart of GeNN's custom connectivity update. ``rule(row, pre_row, post, key)``
    is a pure function of one :class:`RowView`, that row's presynaptic variables (``pre``
    indexed at the row: any pytree with a leading ``pre`` axis), the whole postsynaptic
    population's variables (``post``, read-only) and a per-row PRNG key; it returns a
    :class:`RowUpdate`. The library ``vmap``s it over the rows, removes the flagged synapses,
    then adds the proposals in row order with :func:`add_synapses` semantics. The cost of the
    addition follows the real proposals (not ``n_post``), not the fixed number ``k`` a rule
    returns per row: the native kernel skips the others in its single pass, and the XLA
    version compacts the real ones first.

    Args:
        conn: the projection.
        rule: the per-row rule.
        key: PRNG key; row ``i`` receives ``jax.random.fold_in(key, i)``.
        pre: pytree of presynaptic variables with leading axis ``n_pre`` (or None).
        post: pytree of postsynaptic variables (or None), passed whole to every row.
        rows: optional ``[m]`` distinct rows to visit (static ``m``); the rest are untouched
            and the work is O(m * cap). Default: every row.
        impl: ``"auto"`` (default: the native CPU kernels when running on a CPU, where they
            were built), ``"native"`` or ``"xla"``, for the removal and the addition.

    Returns:
        ``(conn, info)``: the new projection and a :class:`RewireInfo` for the whole step.

    Example:
        >>> def prune_weak(row, pre, post, key):
        ...     return RowUpdate(row.alive & (row.synapses["weight"] < 0.1),
        ...                      jnp.full((1,), row.n_post))
        >>> conn, info = update_rows(conn, prune_weak, jax.random.key(0))
    """
    if rows is None:
        row_index = jnp.arange(conn.n_pre, dtype=conn.post.dtype)
    else:
        row_index = jnp.asarray(rows)
        if row_index.ndim != 1 or not jnp.issubdtype(row_index.dtype, jnp.integer):
            raise ValueError(
                f"rows: expected a 1-D integer array, got {row_index.dtype}{row_index.shape}"
            )
        row_index = row_index.astype(conn.post.dtype)
        srt = jnp.sort(row_index)
        bad = jnp.any((row_index < 0) | (row_index >= conn.n_pre)) | jnp.any(srt[1:] == srt[:-1])
        row_index = eqx.error_if(
            row_index, bad, "update_rows: `rows` must be distinct and in range"
        )
    for leaf in jax.tree.leaves(pre):
        if jnp.shape(leaf)[:1] != (conn.n_pre,):
            raise ValueError(
                f"pre: expected every leaf to have leading axis n_pre={conn.n_pre}, "
                f"got shape {jnp.shape(leaf)}"
            )

    def one_row(i, row_post, row_synapses, pre_row):
        view = RowView(
            index=i,
            post=row_post,
            alive=row_post != conn.n_post,
            synapses=row_synapses,
            n_post=conn.n_post,
        )
        update = rule(view, pre_row, post, jr.fold_in(key, i))
        if not isinstance(update, RowUpdate):
            update = RowUpdate(*update)
        return update

    if rows is None:  # every row: vmap over the arrays themselves, no gather
        row_args = (conn.post, conn.synapses, pre)
    else:
        row_args = jax.tree.map(lambda x: x[row_index], (conn.post, conn.synapses, pre))
    update = jax.vmap(one_row)(row_index, *row_args)
    remove = jnp.asarray(update.remove)
    add_post = jnp.asarray(update.add_post)
    m = row_index.shape[0]
    if remove.shape != (m, conn.capacity) or remove.dtype != jnp.bool_:
        raise ValueError(
            f"rule: expected `remove` to be bool[{conn.capacity}] per row, got "
            f"{remove.dtype}{remove.shape[1:]}"
        )
    if add_post.ndim != 2:
        raise ValueError(
            f"rule: expected `add_post` to be int[k] per row, got {add_post.shape[1:]}"
        )

    if rows is None:
        conn, removed = remove_synapses(conn, remove, impl=impl)
    else:
        conn, removed_rows = _remove_in_rows(conn, row_index, remove)
        removed_mask = jnp.zeros(conn.post.shape, bool).at[row_index].set(removed_rows)
        z = _zero_count()
        removed = RewireInfo(removed_mask, _count(removed_rows), z, z, z, z, z)
    kk = add_post.shape[1]
    add_values = dict(update.add_values)
    _check_proposals(
        conn,
        _each_row(row_index, kk),
        add_post.reshape(-1),
        {name: jnp.reshape(v, -1) for name, v in add_values.items()},
    )
    return _add_row_blocks(conn, row_index, add_post, add_values, rows is None, removed, impl)


# -- slot-aligned state -----------------------------------------------------------------------


def reset_slots(tree: Any, changed: Bool[Array, "pre cap"]) -> Any:
    """Zeroes the entries at changed slots in every slot-aligned leaf of ``tree``.

    A leaf is slot-aligned when its trailing dimensions equal ``changed.shape`` (leading
    axes, such as a batch of eligibility traces, broadcast). Other leaves (scalars such as
    optax's step count, dense matrices of other shapes) are returned untouched. Apply it to
    the part of a state that belongs to one projection when two projections share a shape.

    Args:
        tree: any pytree, e.g. an optax state or eligibility traces.
        changed: ``bool[pre, cap]`` from :class:`RewireInfo`.

    Returns:
        The tree with the changed slots zeroed.
    """
    shape = changed.shape

    def reset(leaf):
        if not isinstance(leaf, jax.Array | jnp.ndarray) or leaf.shape[-len(shape) :] != shape:
            return leaf
        if leaf.ndim < len(shape):
            return leaf
        return jnp.where(changed, jnp.zeros((), leaf.dtype), leaf)

    return jax.tree.map(reset, tree)
