"""Additive all-to-all STDP with per-neuron traces on ragged projections, event-driven.

Each neuron carries a trace that decays exponentially and jumps by 1 at each of its spikes:
the presynaptic trace $x$ (time constant $\\tau_+$) and the postsynaptic trace $y$
($\\tau_-$). A presynaptic spike depresses every synapse of its row,
$w \\leftarrow \\mathrm{clip}(w - A_- y_{post})$; a postsynaptic spike potentiates every synapse
of its column, $w \\leftarrow \\mathrm{clip}(w + A_+ x_{pre})$, found through the projection's
:class:`~jaxplastic.ColumnView`. Summed over a spike train this is the all-to-all pairing rule
$\\Delta w = \\sum A_+ e^{-\\Delta t/\\tau_+}$ over (pre before post) pairs
$- \\sum A_- e^{-\\Delta t/\\tau_-}$ over (post before pre) pairs, with every update clipped
to ``[w_min, w_max]``.

Timing convention (one step of ``dt``): the traces used for pairing are the previous traces
decayed by one step, *before* this step's spikes are added, so spikes of the same step never
pair (GeNN's ``t - st_post > 0`` test); within a step, depression (presynaptic spikes) comes
before potentiation (postsynaptic spikes), as GeNN runs its presynaptic update before its
postsynaptic one; then the traces take this step's spikes.

The work is proportional to the spikes, not to the synapses: the spiking rows (or columns)
are compacted into blocks of ``max_spikes`` and only those are gathered and scattered. The
first block is handled directly; a loop then handles further blocks while spikes remain, so
no spike is ever dropped however many neurons fire (the pattern of the XLA propagation path).

References:
    Song, Miller & Abbott (2000), "Competitive Hebbian learning through spike-timing-dependent
    synaptic plasticity", Nature Neuroscience 3, 919-926. Morrison, Diesmann & Gerstner (2008),
    "Phenomenological models of synaptic plasticity based on spike timing", Biological
    Cybernetics 98, 459-478. Bamford, Murray & Willshaw (2010), "Synaptic rewiring for
    topographic mapping and receptive field development", Neural Networks 23(4), 517-527.
    Knight, Senk & Nowotny (2025), arXiv:2510.19764 (GeNN structural plasticity; its
    ``STDPAllToAllSpikePairing`` model).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
from jax import lax

from .._connectivity import RaggedConnectivity
from .._custom_types import Array, ArrayLike, Float, Int, Shaped

__all__ = [
    "AdditiveSTDP",
    "STDPTraces",
    "compact_spikes",
    "depress_rows",
    "depress_rows_reference",
    "potentiate_columns",
    "potentiate_columns_reference",
]

# Default number of spiking neurons handled per vectorised block: large enough for the sparse
# activity of most networks in one block, small enough that a quiet step wastes little work.
_DEFAULT_MAX_SPIKES = 32


def _default_max_spikes(n: int) -> int:
    return max(1, min(n, _DEFAULT_MAX_SPIKES))


def _check_max_spikes(max_spikes, n: int) -> int:
    if max_spikes is None:
        return _default_max_spikes(n)
    if isinstance(max_spikes, bool) or not isinstance(max_spikes, int) or max_spikes < 1:
        raise ValueError(f"max_spikes: expected a positive int, got {max_spikes!r}")
    return min(max_spikes, n)


def _check_vector(name: str, value, n: int) -> Array:
    value = jnp.asarray(value)
    if value.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {value.shape}")
    return value


def _active(spikes) -> Array:
    """Boolean spike mask from bool or numeric spikes (strict-promotion safe)."""
    spikes = jnp.asarray(spikes)
    if spikes.dtype == jnp.bool_:
        return spikes
    return spikes != jnp.zeros((), spikes.dtype)


def _pack_words(active: Array) -> Array:
    """``uint32[ceil(n / 32)]``: bit ``j % 32`` of word ``j // 32`` is ``active[j]``."""
    n = active.shape[0]
    n_words = -(-n // 32)
    bits = jnp.pad(active, (0, n_words * 32 - n)).reshape(n_words, 32)
    shifts = jnp.left_shift(jnp.uint32(1), jnp.arange(32, dtype=jnp.uint32))
    return jnp.sum(jnp.where(bits, shifts[None, :], jnp.uint32(0)), axis=1, dtype=jnp.uint32)


def _nth_set_bit(word: Array, rank: Array) -> Array:
    """Position of the ``(rank + 1)``-th set bit of each ``uint32`` word (a binary search with
    popcounts; the caller guarantees that the word has that many set bits)."""
    pos = jnp.zeros(word.shape, jnp.uint32)
    rank = rank.astype(jnp.int32)
    for half in (16, 8, 4, 2, 1):
        low = jnp.right_shift(word, pos) & jnp.uint32((1 << half) - 1)
        low_count = lax.population_count(low).astype(jnp.int32)
        up = rank >= low_count
        rank = jnp.where(up, rank - low_count, rank)
        pos = jnp.where(up, pos + jnp.uint32(half), pos)
    return pos.astype(jnp.int32)


def compact_spikes(
    spikes: Shaped[ArrayLike, " n"],
    max_spikes: int,
    *,
    after: Int[ArrayLike, ""] | None = None,
) -> tuple[Int[Array, " k"], Int[Array, ""]]:
    """Indices of the first ``max_spikes`` spiking neurons, in ascending order, and their count.

    The spikes are packed into 32-bit words; a prefix sum of the words' popcounts locates
    the word that holds each of the first ``max_spikes`` set bits, and a binary search with
    popcounts the bit inside it. The work is one pass over the ``n`` spikes plus
    O(``max_spikes`` * log n): several times cheaper on a CPU than ``lax.top_k`` or a prefix
    sum over the neurons.

    Args:
        spikes: ``[n]`` spikes (bool or 0/1 numbers).
        max_spikes: static number of indices to return (``<= n``).
        after: optional index: only neurons with a larger index count (a cursor, to take the
            block that follows an earlier one).

    Returns:
        ``(index, count)``: ``int32[max_spikes]`` distinct indices in ascending order, the
        sentinel ``n`` after the last one, and the number of (counted) spiking neurons.
    """
    active = _active(spikes)
    n = active.shape[0]
    if after is not None:
        active = active & (jnp.arange(n, dtype=jnp.int32) > jnp.asarray(after, jnp.int32))
    words = _pack_words(active)
    n_words = words.shape[0]
    counts = lax.population_count(words).astype(jnp.int32)
    ends = jnp.cumsum(counts, dtype=jnp.int32)  # set bits up to and including each word
    k = jnp.arange(max_spikes, dtype=jnp.int32)
    if max_spikes * n_words <= 4096:
        word = jnp.sum(ends[None, :] <= k[:, None], axis=1, dtype=jnp.int32)
    else:
        word = jnp.searchsorted(ends, k, side="right", method="scan_unrolled").astype(jnp.int32)
    safe = jnp.minimum(word, n_words - 1)
    bit = _nth_set_bit(words[safe], k - (ends[safe] - counts[safe]))
    count = ends[-1]
    index = jnp.where(k < count, safe * 32 + bit, n)
    return index, count


def _any(x: Array, axis_name) -> Array:
    """``jnp.any(x)``, reduced over the named ``vmap`` axis too when one is given: a loop whose
    predicate is the same for every member of a batch needs no per-member select (which
    would copy every array the loop carries)."""
    x = jnp.any(x)
    if axis_name is None:
        return x
    return lax.pmax(x.astype(jnp.int32), axis_name) > 0


def _after_first_blocks(masks, firsts, counts, process, carry, axis_name=None):
    """Runs ``process(blocks, carry)`` over the spiking neurons that the first blocks missed.

    ``masks`` are bool spike vectors, ``firsts`` their first blocks as :func:`compact_spikes`
    gives them (the first spiking indices in ascending order) and ``counts`` their numbers of
    spiking neurons. Each iteration takes, for every mask, the next block of spiking
    neurons after the last one handled (a cursor, so nothing is copied or cleared when no
    block is missing: the loop then stops at once). Under ``vmap`` with ``axis_name`` the
    loop runs while any member has spikes left, the others processing empty blocks.
    """
    sizes = tuple(first.shape[0] for first in firsts)

    def last(block, n):
        return jnp.max(jnp.where(block < n, block, -1))

    cursors = tuple(last(f, m.shape[0]) for f, m in zip(firsts, masks, strict=True))
    left = tuple(
        c - jnp.sum(f < m.shape[0], dtype=jnp.int32)
        for c, f, m in zip(counts, firsts, masks, strict=True)
    )

    def more(state):
        return _any(jnp.stack(state[1]) > 0, axis_name)

    def next_blocks(state):
        cursors, left, carry = state
        blocks = tuple(
            compact_spikes(m, size, after=cur)[0]
            for m, size, cur in zip(masks, sizes, cursors, strict=True)
        )
        carry = process(blocks, carry)
        cursors = tuple(
            jnp.maximum(cur, last(b, m.shape[0]))
            for cur, b, m in zip(cursors, blocks, masks, strict=True)
        )
        left = tuple(
            rest - jnp.sum(b < m.shape[0], dtype=jnp.int32)
            for rest, b, m in zip(left, blocks, masks, strict=True)
        )
        return cursors, left, carry

    return lax.while_loop(more, next_blocks, (cursors, left, carry))[2]


def _in_two_parts(firsts, counts, heads, process, carry, axis_name=None):
    """Runs ``process(blocks, carry)`` over first blocks in two parts: a head, then the rest
    only when some block has spiking indices past its head.

    ``firsts`` are first blocks as :func:`compact_spikes` gives them (``int[B]``: the spiking
    indices in ascending order, then sentinels past the last neuron), ``counts`` their
    numbers of spiking neurons and ``heads`` the static lengths of the heads. The heads are
    processed unconditionally; the rests (``first[head:]``) in a loop that runs once or not
    at all. Each entry is processed exactly once, so the result is that of
    ``process(firsts, carry)`` whenever ``process`` touches disjoint state per entry (and up
    to the order of floating-point sums otherwise), while a step with fewer spikes than the
    heads costs only the heads. Under ``vmap`` with ``axis_name`` the rests run when any
    member needs them (no per-member select of the carry).
    """
    heads = [max(0, min(int(h), first.shape[0])) for first, h in zip(firsts, heads, strict=True)]
    carry = process(tuple(f[:h] for f, h in zip(firsts, heads, strict=True)), carry)
    if all(h == first.shape[0] for first, h in zip(firsts, heads, strict=True)):
        return carry
    rest = jnp.stack([count > h for count, h in zip(counts, heads, strict=True)])
    trips = _any(rest, axis_name).astype(jnp.int32)

    def body(_, carry):
        return process(tuple(f[h:] for f, h in zip(firsts, heads, strict=True)), carry)

    return lax.fori_loop(0, trips, body, carry)


def _for_each_block(spikes, max_spikes, events, process, carry, axis_name=None):
    """Runs ``process(index, carry)`` on the first block of spiking neurons, then on further
    blocks while spikes remain. ``events`` (optional) is a precomputed first block: distinct
    indices, sentinel ``n``; entries that are not spiking neurons are ignored. Blocks never
    repeat a neuron, so the result does not depend on their order when ``process`` touches
    disjoint slots per neuron."""
    n = spikes.shape[0]
    active = _active(spikes)
    if events is None:
        index, count = compact_spikes(active, max_spikes)
        carry = process(index, carry)
        return _after_first_blocks(
            (active,), (index,), (count,), lambda b, c: process(b[0], c), carry, axis_name
        )
    index = jnp.asarray(events).astype(jnp.int32)
    # Entries that are not spiking neurons (a sentinel, or a stale index) are ignored, and
    # the first block may be any set of spiking neurons: the rest is every spike it missed.
    index = jnp.where(active.at[index].get(mode="fill", fill_value=False), index, n)
    carry = process(index, carry)
    rest = active.at[index].set(False, mode="drop")
    count = jnp.sum(rest, dtype=jnp.int32)
    none = jnp.full((max_spikes,), n, jnp.int32)
    return _after_first_blocks(
        (rest,), (none,), (count,), lambda b, c: process(b[0], c), carry, axis_name
    )


def _depress_block(post, weight, rows, post_trace, a_minus, w_min, w_max, delivered, n_post):
    """Delivers (into ``delivered``, unless None) and depresses the rows ``rows`` (sentinel:
    any index past the last row). ``a_minus`` None delivers only."""
    targets = post.at[rows].get(mode="fill", fill_value=n_post)  # [k, cap]
    w = weight.at[rows].get(mode="fill", fill_value=0)
    if delivered is not None:
        delivered = delivered.at[targets].add(w.astype(delivered.dtype), mode="drop")
    if a_minus is not None:
        trace = post_trace.at[targets].get(mode="fill", fill_value=0)
        new = jnp.where(targets != n_post, jnp.clip(w - a_minus * trace, w_min, w_max), 0)
        weight = weight.at[rows].set(new.astype(weight.dtype), mode="drop")
    return weight, delivered


def _potentiate_block(weight, pre_slot, columns, pre_trace, a_plus, w_min, w_max):
    """Potentiates the columns ``columns`` (sentinel: any index past the last column)."""
    n_pre, cap = weight.shape
    flat = weight.reshape(-1)
    slots = pre_slot.at[columns].get(mode="fill", fill_value=n_pre * cap)  # [k, colcap]
    w = flat.at[slots].get(mode="fill", fill_value=0)
    trace = pre_trace.at[slots // cap].get(mode="fill", fill_value=0)  # sentinel -> n_pre
    new = jnp.clip(w + a_plus * trace, w_min, w_max)
    flat = flat.at[slots].set(new.astype(weight.dtype), mode="drop")
    return flat.reshape(weight.shape)


def depress_rows(
    conn: RaggedConnectivity,
    spikes: Shaped[ArrayLike, " pre"],
    post_trace: Float[ArrayLike, " post"],
    *,
    a_minus: float | Float[ArrayLike, ""],
    w_min: float = 0.0,
    w_max: float = 1.0,
    max_spikes: int | None = None,
    events: Int[ArrayLike, " k"] | None = None,
    deliver: bool = False,
    axis_name: str | None = None,
) -> RaggedConnectivity | tuple[RaggedConnectivity, Float[Array, " post"]]:
    """Depresses the rows of the spiking presynaptic neurons (optionally delivering them first).

    For every spiking row $i$ and live slot $s$ with target $j$:
    $w_{is} \\leftarrow \\mathrm{clip}(w_{is} - A_- y_j, w_{min}, w_{max})$. With
    ``deliver=True`` the function also returns the input that the spikes carry to the
    postsynaptic neurons, computed from the weights *before* the depression (GeNN's
    ``addToPost(g)`` then update order), which equals
    ``propagate(conn, spikes)`` on the old projection. Work is O(spikes * capacity).

    Args:
        conn: the projection.
        spikes: ``[pre]`` spikes of this step (bool or 0/1).
        post_trace: ``[post]`` postsynaptic traces $y$ to pair with (already decayed to this
            step, without this step's spikes).
        a_minus: depression amplitude $A_-$ (weight units).
        w_min, w_max: clipping bounds.
        max_spikes: spiking rows per vectorised block (static); more rows are handled in
            further blocks, none dropped. Default ``min(pre, 32)``.
        events: optional precomputed first block: ``int[k]`` distinct rows, ``k ==
            max_spikes`` (e.g. from :func:`compact_spikes`); entries that are not spiking rows
            (such as the sentinel ``pre``) are ignored.
        deliver: also return the delivered input (static).
        axis_name: when the call runs under ``vmap(..., axis_name=...)``, that name (static):
            the loop over further blocks then runs while any member of the batch has spikes
            left, instead of selecting per member (which copies the weights every time a
            member needs a second block).

    Returns:
        The new projection, or ``(conn, delivered)`` with ``delivered: float[post]``.
    """
    n_pre, n_post = conn.n_pre, conn.n_post
    spikes = _check_vector("spikes", spikes, n_pre)
    post_trace = _check_vector("post_trace", post_trace, n_post)
    max_spikes = _check_max_spikes(max_spikes, n_pre)
    if events is not None and jnp.shape(events) != (max_spikes,):
        raise ValueError(f"events: expected shape ({max_spikes},), got {jnp.shape(events)}")
    weight = conn.weight
    trace = post_trace.astype(weight.dtype)
    post = conn.post

    def process(index, carry):
        weight, out = carry
        return _depress_block(
            post, weight, index, trace, a_minus, w_min, w_max, out if deliver else None, n_post
        )

    out = jnp.zeros((n_post,), weight.dtype) if deliver else None
    weight, out = _for_each_block(spikes, max_spikes, events, process, (weight, out), axis_name)
    new_conn = eqx.tree_at(lambda c: c.synapses["weight"], conn, weight)
    if deliver:
        return new_conn, out
    return new_conn


def potentiate_columns(
    conn: RaggedConnectivity,
    spikes: Shaped[ArrayLike, " post"],
    pre_trace: Float[ArrayLike, " pre"],
    *,
    a_plus: float | Float[ArrayLike, ""],
    w_min: float = 0.0,
    w_max: float = 1.0,
    max_spikes: int | None = None,
    events: Int[ArrayLike, " k"] | None = None,
    axis_name: str | None = None,
) -> RaggedConnectivity:
    """Potentiates the columns of the spiking postsynaptic neurons through the column view.

    For every spiking postsynaptic neuron $j$ and each synapse $(i, s)$ targeting it:
    $w_{is} \\leftarrow \\mathrm{clip}(w_{is} + A_+ x_i, w_{min}, w_{max})$. Work is
    O(spikes * column_capacity).

    Args:
        conn: the projection; it must have a column view.
        spikes: ``[post]`` spikes of this step (bool or 0/1).
        pre_trace: ``[pre]`` presynaptic traces $x$ to pair with (already decayed to this
            step, without this step's spikes).
        a_plus: potentiation amplitude $A_+$ (weight units).
        w_min, w_max: clipping bounds.
        max_spikes: spiking columns per vectorised block (static); more are handled in
            further blocks, none dropped. Default ``min(post, 32)``.
        events: optional precomputed first block, as in :func:`depress_rows`.
        axis_name: the name of the ``vmap`` axis the call runs under, if any (static), as in
            :func:`depress_rows`.

    Returns:
        The new projection.

    Raises:
        ValueError: the projection has no column view.
    """
    if conn.column is None:
        raise ValueError(
            "potentiate_columns: conn has no column view; build one with "
            "conn.with_column_view(column_capacity)"
        )
    n_pre, n_post = conn.n_pre, conn.n_post
    spikes = _check_vector("spikes", spikes, n_post)
    pre_trace = _check_vector("pre_trace", pre_trace, n_pre)
    max_spikes = _check_max_spikes(max_spikes, n_post)
    if events is not None and jnp.shape(events) != (max_spikes,):
        raise ValueError(f"events: expected shape ({max_spikes},), got {jnp.shape(events)}")
    trace = pre_trace.astype(conn.weight.dtype)
    pre_slot = conn.column.pre_slot

    def process(index, weight):
        return _potentiate_block(weight, pre_slot, index, trace, a_plus, w_min, w_max)

    weight = _for_each_block(spikes, max_spikes, events, process, conn.weight, axis_name)
    return eqx.tree_at(lambda c: c.synapses["weight"], conn, weight)


# -- dense references (the test oracles; O(synapses)) ------------------------------------------


def depress_rows_reference(
    conn: RaggedConnectivity,
    spikes: Shaped[ArrayLike, " pre"],
    post_trace: Float[ArrayLike, " post"],
    *,
    a_minus: float,
    w_min: float = 0.0,
    w_max: float = 1.0,
) -> tuple[RaggedConnectivity, Float[Array, " post"]]:
    """Dense-mask reference of :func:`depress_rows` with ``deliver=True`` (every slot visited)."""
    spikes = _active(spikes)
    trace = jnp.append(jnp.asarray(post_trace, conn.weight.dtype), jnp.zeros(1, conn.weight.dtype))
    w = conn.weight
    hit = spikes[:, None] & conn.alive
    delivered = (
        jnp.zeros(conn.n_post + 1, w.dtype).at[conn.post].add(jnp.where(hit, w, 0))[: conn.n_post]
    )
    new = jnp.where(hit, jnp.clip(w - a_minus * trace[conn.post], w_min, w_max), w)
    return eqx.tree_at(lambda c: c.synapses["weight"], conn, new), delivered


def potentiate_columns_reference(
    conn: RaggedConnectivity,
    spikes: Shaped[ArrayLike, " post"],
    pre_trace: Float[ArrayLike, " pre"],
    *,
    a_plus: float,
    w_min: float = 0.0,
    w_max: float = 1.0,
) -> RaggedConnectivity:
    """Dense-mask reference of :func:`potentiate_columns` (every slot visited, no column view)."""
    spikes = jnp.append(_active(spikes), jnp.zeros(1, bool))
    w = conn.weight
    hit = spikes[conn.post] & conn.alive
    x = jnp.asarray(pre_trace, w.dtype)[:, None]
    new = jnp.where(hit, jnp.clip(w + a_plus * x, w_min, w_max), w)
    return eqx.tree_at(lambda c: c.synapses["weight"], conn, new)


# -- the rule as a Module ----------------------------------------------------------------------


class STDPTraces(NamedTuple):
    """Per-neuron STDP traces of one projection.

    Attributes:
        pre: ``[pre]`` presynaptic traces $x$ (decay $\\tau_+$), after the last step's spikes.
        post: ``[post]`` postsynaptic traces $y$ (decay $\\tau_-$), after the last step's spikes.
    """

    pre: Float[Array, " pre"]
    post: Float[Array, " post"]


class AdditiveSTDP(eqx.Module):
    """Additive all-to-all STDP with exponential traces, event-driven on a ragged projection.

    Each step of ``dt`` ms (see the module docstring for the timing convention):

    1. $x \\leftarrow x e^{-dt/\\tau_+}$, $y \\leftarrow y e^{-dt/\\tau_-}$;
    2. every presynaptic spike $i$: $w_{ij} \\leftarrow \\mathrm{clip}(w_{ij} - A_- y_j)$ over
       its row (:func:`depress_rows`);
    3. every postsynaptic spike $j$: $w_{ij} \\leftarrow \\mathrm{clip}(w_{ij} + A_+ x_i)$ over
       its column (:func:`potentiate_columns`);
    4. $x \\leftarrow x + s_{pre}$, $y \\leftarrow y + s_{post}$.

    The amplitudes are in weight units: the defaults are the topographic-map values of GeNN
    (Knight, Senk & Nowotny 2025), $A_+ = 0.1\\, g_{max} = 0.02$ and
    $A_- = 1.2\\, A_+ \\tau_+/\\tau_- = 0.0075$ with $g_{max} = 0.2$ (SpiNNaker and GeNN
    scale Bamford's dimensionless $A_+ = 0.1$ by the maximum weight).

    Example:
        >>> import jax.numpy as jnp, jax.random as jr
        >>> import jaxplastic as jp
        >>> from jaxplastic.plasticity import AdditiveSTDP
        >>> conn = jp.fixed_probability(jr.key(0), 20, 20, 0.2, weight=0.1, column_capacity=20)
        >>> stdp = AdditiveSTDP()
        >>> traces = stdp.init(20, 20)
        >>> spikes = jnp.zeros(20).at[3].set(1.0)
        >>> conn, traces = stdp.step(conn, traces, spikes, spikes, dt=0.1)

    References:
        Song, Miller & Abbott (2000), Nature Neuroscience 3, 919-926. Bamford, Murray &
        Willshaw (2010), Neural Networks 23(4), 517-527. Knight, Senk & Nowotny (2025),
        arXiv:2510.19764.
    """

    tau_plus: float = 20.0
    tau_minus: float = 64.0
    a_plus: float = 0.02
    a_minus: float = 0.0075
    w_min: float = 0.0
    w_max: float = 0.2

    def __check_init__(self):
        for name in ("tau_plus", "tau_minus"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(
                    f"AdditiveSTDP: {name}: expected a finite value > 0, got {value!r}"
                )
        for name in ("a_plus", "a_minus"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"AdditiveSTDP: {name}: expected a finite value >= 0, got {value!r}"
                )
        if not self.w_min <= self.w_max:
            raise ValueError(
                f"AdditiveSTDP: w_min, w_max: expected w_min <= w_max, got {self.w_min}, "
                f"{self.w_max}"
            )

    def init(self, n_pre: int, n_post: int) -> STDPTraces:
        """Zero traces for ``n_pre`` presynaptic and ``n_post`` postsynaptic neurons."""
        return STDPTraces(pre=jnp.zeros((n_pre,)), post=jnp.zeros((n_post,)))

    def decay(self, traces: STDPTraces, *, dt: float) -> STDPTraces:
        """Decays both traces by one step of ``dt`` ms."""
        return STDPTraces(
            pre=traces.pre * math.exp(-dt / self.tau_plus),
            post=traces.post * math.exp(-dt / self.tau_minus),
        )

    def step(
        self,
        conn: RaggedConnectivity,
        traces: STDPTraces,
        pre_spikes: Shaped[ArrayLike, " pre"],
        post_spikes: Shaped[ArrayLike, " post"],
        *,
        dt: float,
        max_spikes: int | None = None,
    ) -> tuple[RaggedConnectivity, STDPTraces]:
        """One step of STDP on one projection with its own traces.

        Args:
            conn: the projection, with a column view.
            traces: the traces after the previous step.
            pre_spikes: ``[pre]`` presynaptic spikes of this step.
            post_spikes: ``[post]`` postsynaptic spikes of this step.
            dt: step size (ms).
            max_spikes: spiking neurons per vectorised block (static; none is ever dropped).

        Returns:
            ``(conn, traces)`` after this step.
        """
        decayed = self.decay(traces, dt=dt)
        conn = depress_rows(
            conn,
            pre_spikes,
            decayed.post,
            a_minus=self.a_minus,
            w_min=self.w_min,
            w_max=self.w_max,
            max_spikes=max_spikes,
        )
        conn = potentiate_columns(
            conn,
            post_spikes,
            decayed.pre,
            a_plus=self.a_plus,
            w_min=self.w_min,
            w_max=self.w_max,
            max_spikes=max_spikes,
        )
        dtype = decayed.pre.dtype
        return conn, STDPTraces(
            pre=decayed.pre + _active(pre_spikes).astype(dtype),
            post=decayed.post + _active(post_spikes).astype(dtype),
        )
