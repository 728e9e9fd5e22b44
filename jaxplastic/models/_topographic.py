"""Topographic map formation with STDP and structural plasticity (Bamford et al. 2010, GeNN).

Two square layers of ``(16 s)^2`` neurons on a torus (``s`` the scale): a layer of Poisson
inputs driven by a spatially correlated stimulus that jumps every 20 ms, and a layer of
conductance-based LIF neurons. The target layer receives a feed-forward projection from the
inputs and a lateral projection from itself; both start from a distance-dependent pairwise
Bernoulli rule, learn with additive all-to-all STDP, and are rewired every millisecond by the
rule of Bamford et al. as the GeNN structural-plasticity paper runs it.

Units (GeNN's): time ms, potential mV, capacitance nF, current nA, conductance uS, rate Hz.
A synaptic weight is the peak conductance (uS) that one spike adds to its target's
exponentially decaying conductance (``tau_syn = 5 ms``, reversal 0 mV); ``g_max = 0.2 uS``.

Everything that happens per step is proportional to the spikes, and everything that happens per
rewiring update to the number of attempts: no step sweeps the synapses. The host only loops
over chunks (e.g. one second of model time, a ``lax.scan`` of 50 stimulus intervals of 20
``1 ms`` rewiring periods of 10 steps), so the stimulus jumps, the input draws and the
rewiring all run on the device.

References:
    Bamford, Murray & Willshaw (2010), "Synaptic rewiring for topographic mapping and
    receptive field development", Neural Networks 23(4), 517-527.
    Bogdan, Rowley, Rhodes & Furber (2018), "Structural plasticity on the SpiNNaker many-core
    neuromorphic system", Frontiers in Neuroscience 12, 434.
    Knight, Senk & Nowotny (2025), "Structural plasticity for sparse spiking networks on GPUs"
    (GeNN structural plasticity), arXiv:2510.19764; code: github jhnnsnk/genn_structural_plasticity.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax import lax

from .._connectivity import RaggedConnectivity
from .._custom_types import Array, Float, Int, PRNGKeyArray
from .._neurons import ConductanceLIF, ConductanceLIFState
from .._propagate import propagate
from .._structural import RowUpdate, RowView, update_rows
from ..plasticity.stdp import AdditiveSTDP, compact_spikes, depress_rows, potentiate_columns

__all__ = [
    "ChunkRecord",
    "MapQuality",
    "RewiringCounts",
    "RewiringSource",
    "TopographicMap",
    "TopographicState",
    "bamford_rewire",
    "connection_stats",
    "displacement_maps",
    "distance_dependent_connectivity",
    "expected_degree",
    "map_quality",
    "run_topographic",
]

BLOCK = 16  # neurons per side of one block; a network at scale s is s x s blocks


# ---------------------------------------------------------------------------------------------
# Geometry.
# ---------------------------------------------------------------------------------------------


def _wrap(d, side):
    """Signed torus displacement in ``[-side/2, side/2)``."""
    return (d + side // 2) % side - side // 2


def _torus_d2(i, j, side):
    """Squared torus distance between grid indices ``i`` and ``j`` (index = y * side + x)."""
    dx = _wrap(j % side - i % side, side)
    dy = _wrap(j // side - i // side, side)
    return (dx * dx + dy * dy).astype(jnp.float32)


def _distance_bins(side: int) -> int:
    """Number of unit-width distance bins covering the torus (largest distance side/sqrt 2)."""
    return int(side / math.sqrt(2.0)) + 1


def _kernel_offsets(
    side: int, p_peak: float, sigma: float, autapses: bool, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets ``(dx, dy)`` with their probability ``p(d)``, truncated where ``p < cutoff``.

    The window is the square of half-width ``R = ceil(sigma * sqrt(2 ln(p_peak / cutoff)))``;
    when it covers the torus (``2R + 1 >= side``) every displacement is listed exactly once.
    """
    if cutoff > 0:
        radius = math.ceil(sigma * math.sqrt(2.0 * math.log(max(p_peak / cutoff, 1.0))))
    else:
        radius = side
    if 2 * radius + 1 >= side:
        axis = np.arange(-(side // 2), side - side // 2)
    else:
        axis = np.arange(-radius, radius + 1)
    dx, dy = np.meshgrid(axis, axis, indexing="xy")
    dx, dy = dx.ravel(), dy.ravel()
    p = p_peak * np.exp(-(dx**2 + dy**2) / (2.0 * sigma**2))
    keep = p >= cutoff
    if not autapses:
        keep &= (dx != 0) | (dy != 0)
    return dx[keep].astype(np.int32), dy[keep].astype(np.int32), p[keep].astype(np.float32)


def expected_degree(side: int, p_peak: float, sigma: float, *, autapses: bool = True) -> float:
    """Expected in- (= out-) degree of the distance-dependent rule on a ``side x side`` torus.

    The exact lattice sum $K = \\sum_{(dx, dy)} p_{peak} e^{-d^2 / 2\\sigma^2}$ over every
    displacement of the torus (without ``(0, 0)`` when autapses are excluded). The continuum
    value $2 \\pi p_{peak} \\sigma^2$ (6.28 for both projections here) differs by the
    autapse term: the lateral lattice sum without autapses is 5.28.
    """
    _, _, p = _kernel_offsets(side, p_peak, sigma, autapses, cutoff=0.0)
    return float(np.sum(p, dtype=np.float64))


def distance_dependent_connectivity(
    key: PRNGKeyArray,
    side: int,
    *,
    p_peak: float,
    sigma: float,
    autapses: bool = True,
    capacity: int = 64,
    column_capacity: int | None = 32,
    weight: float = 0.2,
    cutoff: float = 1e-7,
) -> RaggedConnectivity:
    """Pairwise-Bernoulli connectivity between two ``side x side`` torus layers.

    Each pair is connected independently with probability
    $p(d) = p_{peak} e^{-d^2 / 2\\sigma^2}$, $d$ the torus distance between the grid positions
    (index ``y * side + x`` in both layers). Work and memory are O(n * window), never
    O(n^2): each source draws one uniform per displacement with ``p(d) >= cutoff``, i.e.
    within distance $\\sigma \\sqrt{2 \\ln(p_{peak} / cutoff)}$ (13.4 for the feed-forward
    rule, 561 displacements; 5.7 for the lateral one, 100). The truncation drops, per neuron,
    about $2\\pi\\sigma^2 \\cdot$ ``cutoff`` synapses in expectation (4e-6 feed-forward,
    6e-7 lateral: about 0.06 synapses in the whole network at scale 7). Jittable and
    ``vmap``-able over keys.

    Args:
        key: PRNG key.
        side: grid side length; both layers have ``side**2`` neurons.
        p_peak: connection probability at distance 0.
        sigma: width of the Gaussian kernel (grid units).
        autapses: if False, no neuron connects to itself (a recurrent projection).
        capacity: slots per row (static).
        column_capacity: capacity of the column view (static), or None for no column view.
        weight: initial weight of every synapse.
        cutoff: displacements with ``p(d) < cutoff`` are never connected.

    Returns:
        A :class:`~jaxplastic.RaggedConnectivity` with a column view; row targets ascend in
        window order.

    Raises:
        ValueError: eagerly, or at run time under ``jit`` (``eqx.error_if``), when a row or a
            column draws more synapses than its capacity.
    """
    dx, dy, p = _kernel_offsets(side, p_peak, sigma, autapses, cutoff)
    n = side * side
    pre = jnp.arange(n, dtype=jnp.int32)
    x, y = pre % side, pre // side
    u = jr.uniform(key, (n, dx.size))
    connect = u < jnp.asarray(p)[None, :]
    target = ((y[:, None] + dy[None, :]) % side) * side + (x[:, None] + dx[None, :]) % side
    slot = jnp.cumsum(connect, axis=1, dtype=jnp.int32) - 1
    count = slot[:, -1] + 1
    slot = jnp.where(connect, slot, capacity)  # unconnected -> out of bounds -> dropped
    rows = jnp.broadcast_to(pre[:, None], slot.shape)
    post = jnp.full((n, capacity), n, jnp.int32).at[rows, slot].set(target, mode="drop")
    overflow = jnp.any(count > capacity)
    if isinstance(overflow, jax.core.Tracer):
        post = eqx.error_if(post, overflow, "distance_dependent_connectivity: a row is full")
    elif bool(overflow):
        raise ValueError(
            f"distance_dependent_connectivity: a row drew {int(count.max())} synapses, over "
            f"capacity={capacity}"
        )
    live = post != n
    synapses = {"weight": jnp.where(live, jnp.float32(weight), jnp.float32(0.0))}
    conn = RaggedConnectivity(post, synapses, None, n)
    return conn if column_capacity is None else conn.with_column_view(column_capacity)


# ---------------------------------------------------------------------------------------------
# The rewiring rule on the structural primitive.
# ---------------------------------------------------------------------------------------------


class RewiringSource(NamedTuple):
    """One presynaptic torus layer whose rows a projection holds, as the rewiring sees it.

    Attributes:
        start: first row of this layer in the projection (its rows are ``start + index``,
            ``index = y * side + x`` on the layer's grid).
        attempts: rewiring attempts per update on this layer's rows (GeNN: 10 per 16x16 block).
        p_peak: formation probability at distance 0.
        sigma: width of the formation kernel (grid units).
        autapses: whether a row may connect to the target at its own grid position (False
            for a recurrent projection).
    """

    start: int
    attempts: int
    p_peak: float
    sigma: float
    autapses: bool = True


class RewiringCounts(NamedTuple):
    """What the rewiring did over some period, per source layer.

    Attributes:
        formed: ``int32[sources, bins]`` synapses formed, by torus distance (bin ``k`` holds
            distances in ``[k, k + 1)``).
        eliminated: ``int32[sources, bins]`` synapses eliminated, by distance.
        attempts: ``int32[sources]`` rewiring attempts made.
        refused: proposals the structural primitive refused (full row or full column).
    """

    formed: Int[Array, "sources bins"]
    eliminated: Int[Array, "sources bins"]
    attempts: Int[Array, " sources"]
    refused: Int[Array, ""]

    @staticmethod
    def zeros(num_sources: int, side: int) -> RewiringCounts:
        bins = _distance_bins(side)
        z = jnp.zeros((num_sources, bins), jnp.int32)
        return RewiringCounts(z, z, jnp.zeros(num_sources, jnp.int32), jnp.zeros((), jnp.int32))

    def __add__(self, other: RewiringCounts) -> RewiringCounts:  # type: ignore[override]
        return RewiringCounts(*(a + b for a, b in zip(self, other, strict=True)))


class _Attempts(NamedTuple):
    """One update's attempts, as every row's rule looks them up (``[m]`` each)."""

    round: Int[Array, ""]
    rows: Int[Array, " m"]
    rank: Int[Array, " m"]  # how many earlier attempts share the row
    targets: Int[Array, " m"]
    uniform: Float[Array, " m"]
    start: Int[Array, " m"]  # first row of the attempt's source layer
    p_peak: Float[Array, " m"]
    two_sigma2: Float[Array, " m"]
    autapses: Array  # bool[m]


# Up to this many attempts per update, the bookkeeping compares every pair of attempts
# (O(m^2), no sort: tiny sorts dominate the cost on a CPU); above it, it sorts (O(m log m)).
_PAIRWISE_MAX_ATTEMPTS = 256


def _rank_in_sorted_groups(group: Array) -> Array:
    """For each entry of a sorted array, how many earlier entries share its value."""
    index = jnp.arange(group.shape[0], dtype=jnp.int32)
    is_start = jnp.concatenate([jnp.ones((1,), bool), group[1:] != group[:-1]])
    return index - lax.cummax(jnp.where(is_start, index, 0), axis=0)


def _earlier_same(values: Array) -> Array:
    """``bool[m, m]``: entry ``[a, b]`` is True when ``b < a`` and ``values[b] == values[a]``."""
    m = values.shape[0]
    index = jnp.arange(m)
    return (index[None, :] < index[:, None]) & (values[None, :] == values[:, None])


def _distinct_targets(key, rows, targets, rank, n_post, pairwise: bool):
    """Uniform targets for the attempts, distinct within each row (GeNN samples each row's
    targets without replacement). Every attempt has drawn a uniform target (``targets``);
    attempts that repeat an earlier (row, target) pair redraw until none does. The procedure
    only compares labels, so it is invariant under any relabelling of the targets, and each
    row's targets are a uniformly random set of distinct neurons.

    ``rank`` is each attempt's rank among the attempts of its row. Unless ``pairwise`` (every
    pair compared), the attempts are sorted by row, so an attempt's row-mates are the
    ``rank`` attempts just before it."""
    m = rows.shape[0]
    index = jnp.arange(m, dtype=jnp.int32)
    same_row = _earlier_same(rows) if pairwise else None
    most = jnp.max(rank)

    def repeated(targets):
        if pairwise:
            return jnp.any(same_row & (targets[None, :] == targets[:, None]), axis=1)

        def shift(s, dup):
            earlier = jnp.maximum(index - s, 0)
            return dup | ((rank >= s) & (targets[earlier] == targets))

        return lax.fori_loop(1, most + 1, shift, jnp.zeros(m, bool))

    def redraw(state):
        i, targets, dup = state
        fresh = jr.randint(jr.fold_in(key, i), (m,), 0, n_post, dtype=jnp.int32)
        targets = jnp.where(dup, fresh, targets)
        return i + 1, targets, repeated(targets)

    _, targets, _ = lax.while_loop(
        lambda s: jnp.any(s[2]), redraw, (jnp.int32(1), targets, repeated(targets))
    )
    return targets


def _visit_rows(rows, first, pairwise: bool):
    """``[m]`` distinct rows: every row with an attempt once, padded with distinct rows that
    have none (the smallest missing row numbers), so that ``update_rows`` can take them."""
    m = rows.shape[0]
    index = jnp.arange(m, dtype=jnp.int32)
    if pairwise:
        candidate = jnp.arange(2 * m, dtype=rows.dtype)  # holds >= m rows without attempts
        member = jnp.any(first[None, :] & (rows[None, :] == candidate[:, None]), axis=1)
        free_rank = jnp.cumsum(~member) - 1
        need = jnp.cumsum(~first) - 1  # the q-th attempt that is not its row's first
        pick = (~member)[None, :] & (free_rank[None, :] == need[:, None])
        return jnp.where(first, rows, candidate[jnp.argmax(pick, axis=1)])
    big = jnp.iinfo(jnp.int32).max // 2
    unique = jnp.sort(jnp.where(first, rows, big))
    n_unique = jnp.sum(first, dtype=jnp.int32)
    # The q-th missing number is q + #{i : unique_i - i <= q}.
    gaps = jnp.where(index < n_unique, unique - index, big)
    q = index - n_unique
    missing = q + jnp.searchsorted(gaps, q, side="right").astype(jnp.int32)
    return jnp.where(index < n_unique, unique, missing)


def bamford_rewire(
    conn: RaggedConnectivity,
    key: PRNGKeyArray,
    *,
    side: int,
    sources: tuple[RewiringSource, ...],
    weight_threshold: float = 0.1,
    p_elim_depressed: float = 1.0,
    p_elim_potentiated: float = 0.0068,
    new_weight: float = 0.2,
) -> tuple[RaggedConnectivity, RewiringCounts]:
    """One rewiring update of a projection from torus layers onto a ``side x side`` torus layer.

    The rule of Bamford et al. (2010) as the GeNN paper runs it (``BamfordStructuralPlasticity``,
    one custom connectivity update per projection). For each source layer, ``attempts`` of
    its rows are drawn uniformly with replacement (so a row gets a Binomial number of
    attempts), and each row draws that many distinct candidate targets uniformly over the
    whole target layer. A candidate that is connected is eliminated with probability
    ``p_elim_depressed`` if its weight is below ``weight_threshold`` and ``p_elim_potentiated``
    otherwise; a candidate that is not connected is connected with probability
    $p(d) = p_{peak} e^{-d^2 / 2 \\sigma^2}$ ($d$ the torus distance between the grid
    positions) at weight ``new_weight``, unless the row or the target's column is full (the
    column capacity then acts as an in-degree cap: Bamford's original competition).

    Written on :func:`~jaxplastic.update_rows` with ``rows=`` the rows visited, so the work is
    O(attempts * capacity), independent of the network size (above 256 attempts, plus the
    fill of a row-indexed table of the rows' first attempts: O(n_pre) int32 writes, cheaper
    than a binary search per row on a CPU). A row with several attempts
    takes them one per round (as many rounds as the most attempts of one row: usually 1 or
    2); the decisions of different rounds concern different (row, target) pairs, so the rounds
    reproduce GeNN's single pass over each row.

    Args:
        conn: the projection, with a column view; rows ``[start, start + side**2)`` of each
            source hold that layer's neurons.
        key: PRNG key.
        side: grid side of every layer.
        sources: the source layers (static).
        weight_threshold: elimination threshold (weight units).
        p_elim_depressed, p_elim_potentiated: elimination probabilities below / above it.
        new_weight: weight of a new synapse.

    Returns:
        ``(conn, counts)``: the new projection and its :class:`RewiringCounts`.

    References:
        Bamford, Murray & Willshaw (2010), Neural Networks 23(4), 517-527.
        Knight, Senk & Nowotny (2025), arXiv:2510.19764.
    """
    n = side * side
    if conn.column is None:
        raise ValueError("bamford_rewire: conn needs a column view")
    if conn.n_post != n:
        raise ValueError(f"bamford_rewire: expected n_post = side**2 = {n}, got {conn.n_post}")
    for source in sources:
        if not 0 <= source.start <= conn.n_pre - n:
            raise ValueError(f"bamford_rewire: source rows {source.start}+{n} out of range")
        if not isinstance(source.attempts, int) or not 1 <= source.attempts <= n:
            raise ValueError(f"bamford_rewire: attempts: expected 1..{n}, got {source.attempts}")
    m = sum(source.attempts for source in sources)
    if 2 * m > conn.n_pre:
        raise ValueError("bamford_rewire: more attempts than the projection has rows to pad")
    pairwise = m <= _PAIRWISE_MAX_ATTEMPTS
    which = np.repeat(np.arange(len(sources)), [source.attempts for source in sources])
    start = jnp.asarray(np.array([source.start for source in sources], np.int32)[which])
    source_of = jnp.asarray(which, jnp.int32)
    static = dict(
        start=start,
        p_peak=jnp.asarray(np.array([s.p_peak for s in sources], np.float32)[which]),
        two_sigma2=jnp.asarray(np.array([2 * s.sigma**2 for s in sources], np.float32)[which]),
        autapses=jnp.asarray(np.array([s.autapses for s in sources], bool)[which]),
    )
    # All the randomness of the update from one threefry call (each call is a loop of small
    # operations on a CPU): rows and targets by a modulo (bias below n / 2^32 <= 3e-6), the
    # uniforms from the top 24 bits. Repeated (row, target) pairs redraw with fresh keys.
    bits = jr.bits(key, (3, m), jnp.uint32)
    rows = start + (bits[0] % jnp.uint32(n)).astype(jnp.int32)
    targets = (bits[1] % jnp.uint32(n)).astype(jnp.int32)
    uniform = (bits[2] >> jnp.uint32(8)).astype(jnp.float32) * jnp.float32(2.0**-24)
    if pairwise:
        rank = jnp.sum(_earlier_same(rows), axis=1, dtype=jnp.int32)
        first_attempt = None
    else:
        # Sort the attempts by row (one sort of row and position packed into a word), so that
        # a row's attempts are contiguous; each row then finds its first attempt in a table
        # indexed by row (an O(n) fill per update, cheaper than a binary search per row).
        packed = jnp.sort(rows.astype(jnp.uint32) * jnp.uint32(m) + jnp.arange(m, dtype=jnp.uint32))
        order = (packed % jnp.uint32(m)).astype(jnp.int32)
        rows, targets, uniform = rows[order], targets[order], uniform[order]
        static = {k: v[order] for k, v in static.items()}
        source_of = source_of[order]
        rank = _rank_in_sorted_groups(rows)
        first_attempt = (
            jnp.full(conn.n_pre, m, jnp.int32)
            .at[jnp.where(rank == 0, rows, conn.n_pre)]
            .set(jnp.arange(m, dtype=jnp.int32), mode="drop")
        )
    targets = _distinct_targets(jr.fold_in(key, 1), rows, targets, rank, n, pairwise)
    rounds = jnp.max(rank) + 1
    visit = _visit_rows(rows, rank == 0, pairwise)
    dtype = conn.weight.dtype

    def rule(row: RowView, first, data: _Attempts, key) -> RowUpdate:
        if pairwise:
            hit = (data.rows == row.index) & (data.rank == data.round)
            valid = jnp.any(hit)
            a = jnp.argmax(hit)
        else:  # `first`: this row's first attempt (m if none); its attempts are contiguous
            a = first + data.round
            valid = a < m
            a = jnp.minimum(a, m - 1)
            valid = valid & (data.rows[a] == row.index)
        target = data.targets[a].astype(row.post.dtype)
        u = data.uniform[a]
        match = valid & (row.post == target)
        connected = jnp.any(match)
        w = jnp.sum(jnp.where(match, row.synapses["weight"], jnp.zeros((), dtype)))
        p_elim = jnp.where(w < weight_threshold, p_elim_depressed, p_elim_potentiated)
        remove = match & (u < p_elim)
        position = row.index - data.start[a]
        p_form = data.p_peak[a] * jnp.exp(-_torus_d2(position, target, side) / data.two_sigma2[a])
        p_form = jnp.where(~data.autapses[a] & (target == position), 0.0, p_form)
        form = valid & ~connected & (u < p_form)
        add_post = jnp.where(form, target, row.n_post)[None]
        return RowUpdate(remove, add_post, {"weight": jnp.full((1,), new_weight, dtype)})

    bins = _distance_bins(side)
    # Only the candidates can change, so formations and eliminations are counted per attempt
    # (is the candidate connected before and after the round?), never per slot.
    if pairwise:
        slot_of_row = jnp.argmax(rows[None, :] == rows[:, None], axis=1)  # its first attempt
    else:
        slot_of_row = jnp.cumsum(rank == 0) - 1  # rank among the distinct (sorted) rows
    position = rows - static["start"]
    distance_bin = jnp.minimum(
        jnp.sqrt(_torus_d2(position, targets, side)).astype(jnp.int32), bins - 1
    )
    hist_index = source_of * bins + distance_bin

    def histograms(before, after):
        """Formations and eliminations in this round, per source, by distance."""
        was = jnp.any(before[slot_of_row] == targets[:, None], axis=1)
        now = jnp.any(after[slot_of_row] == targets[:, None], axis=1)

        def count(mask):
            counts = (
                jnp.zeros(len(sources) * bins, jnp.int32).at[hist_index].add(mask.astype(jnp.int32))
            )
            return counts.reshape(len(sources), bins)

        return count(now & ~was), count(was & ~now)

    def one_round(j, conn):
        before = conn.post[visit]
        # `rows` equals `visit` (targets are never negative) but depends on `before`, so that
        # XLA reads the rows before updating the projection in place; a read it could
        # schedule after the update would make it copy the whole projection.
        ordered = jnp.where(before[:, 0] < 0, 0, visit)
        data = _Attempts(j, rows, rank, targets, uniform, **static)
        # The rule draws nothing: its randomness is in `data` (the key goes unused).
        conn, info = update_rows(conn, rule, key, pre=first_attempt, post=data, rows=ordered)
        formed, eliminated = histograms(before, conn.post[visit])
        return conn, formed, eliminated, info.refused

    def more_rounds(state):
        j, conn, formed, eliminated, refused = state
        conn, f, e, r = one_round(j, conn)
        return j + 1, conn, formed + f, eliminated + e, refused + r

    # Round 0 runs unconditionally; the loop only runs for rows with several attempts (and,
    # under vmap, costs nothing unless some network has such a row).
    conn, formed, eliminated, refused = one_round(jnp.int32(0), conn)
    _, conn, formed, eliminated, refused = lax.while_loop(
        lambda s: s[0] < rounds,
        more_rounds,
        (jnp.int32(1), conn, formed, eliminated, refused),
    )
    counts = RewiringCounts(
        formed=formed,
        eliminated=eliminated,
        attempts=jnp.asarray([source.attempts for source in sources], jnp.int32),
        refused=refused,
    )
    return conn, counts


# ---------------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------------


def _lowbias32(x):
    """A 32-bit integer hash with low bias (C. Wellons, 2018), used as a counter-based generator."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


class TopographicState(NamedTuple):
    """State of one topographic-map network of ``n`` inputs and ``n`` targets.

    Both projections onto the target layer live in one ragged projection, ``afferent``:
    rows ``[0, n)`` are the inputs (the feed-forward projection), rows ``[n, 2n)`` the target
    neurons themselves (the lateral one). One structure for all of a neuron's incoming
    synapses means one event-driven pass per step for delivery and depression, one for
    potentiation, and one structural update per rewiring step; its column view lists every
    incoming synapse, so its capacity is the in-degree cap (Bamford's ``s_max``). The
    properties :attr:`ff` and :attr:`lat` give each projection on its own.

    Attributes:
        afferent: ``[2n, capacity]`` slots with a column view ``[n, column_capacity]``.
        neurons: target-layer state (``v`` mV, ``g`` uS, refractory steps).
        pending: ``[n]`` conductance (uS) of the spikes emitted in the last step, delivered at
            the start of the next (GeNN's one-step synaptic delay).
        pre_trace: ``[2n]`` presynaptic STDP traces $x$ ($\\tau_+$) of the rows: inputs, then
            targets.
        post_trace: ``[n]`` postsynaptic traces $y$ ($\\tau_-$) of the targets.
        key: PRNG key, split every stimulus interval.
        step: number of steps simulated (int32).
    """

    afferent: RaggedConnectivity
    neurons: ConductanceLIFState
    pending: Float[Array, " n"]
    pre_trace: Float[Array, " n2"]
    post_trace: Float[Array, " n"]
    key: PRNGKeyArray
    step: Int[Array, ""]

    @property
    def ff(self) -> RaggedConnectivity:
        """The feed-forward projection (input -> target), without a column view."""
        return _rows(self.afferent, 0)

    @property
    def lat(self) -> RaggedConnectivity:
        """The lateral projection (target -> target), without a column view."""
        return _rows(self.afferent, 1)


def _rows(conn: RaggedConnectivity, part: int) -> RaggedConnectivity:
    n = conn.n_post
    take = slice(part * n, (part + 1) * n)
    return eqx.tree_at(
        lambda c: (c.post, c.synapses, c.column),
        conn,
        (conn.post[..., take, :], {k: v[..., take, :] for k, v in conn.synapses.items()}, None),
        is_leaf=lambda x: x is None,
    )


class ChunkRecord(NamedTuple):
    """Counters accumulated over one call of :meth:`TopographicMap.run`.

    Attributes:
        input_spikes: ``[n]`` spikes per input neuron.
        target_spikes: ``[n]`` spikes per target neuron.
        rewiring: :class:`RewiringCounts`, source 0 the feed-forward projection, 1 the lateral.
        overflow_steps: steps whose spikes needed more than one block (handled exactly).
    """

    input_spikes: Int[Array, " n"]
    target_spikes: Int[Array, " n"]
    rewiring: RewiringCounts
    overflow_steps: Int[Array, ""]


class TopographicMap(eqx.Module):
    """The topographic-map model of Bamford et al. (2010) as run by GeNN, at any scale.

    **Input layer** (``n = (16 s)^2`` Poisson neurons): every ``stimulus_interval`` ms a new
    stimulus position is drawn uniformly on the 16x16 block grid, and input ``(x, y)`` fires
    at $r = r_{base} + r_{peak} e^{-d^2/2\\sigma_s^2}$ with $d$ the distance between
    ``(x mod 16, y mod 16)`` and the stimulus on the 16x16 torus: at ``s > 1`` every 16x16
    block sees the stimulus at the same relative position, as GeNN tiles it. Each step an
    input spikes with probability $1 - e^{-r\\,dt}$. The jump and the draws run on the
    device; the Bernoulli draws of a whole interval come from a counter-based integer hash
    (``lowbias32``, two rounds) keyed by 64 bits drawn from the state's PRNG key: about 70x
    cheaper than threefry on a CPU.

    **Target layer**: :class:`~jaxplastic.ConductanceLIF` with its defaults (C 20 nF,
    tau_m 20 ms, V_rest = V_reset = -70 mV, V_th = -54 mV, refractory 5 ms, tau_syn 5 ms,
    E_rev 0 mV, V0 ~ N(-60, 5) mV). A weight is a conductance in uS.

    **Projections**: feed-forward (input -> target; p_peak 0.16, sigma 2.5) and lateral
    (target -> target, no autapses; p_peak 1.0, sigma 1.0), initial weight ``g_max = 0.2`` uS,
    row capacity 64, held together in one ragged projection (see :class:`TopographicState`)
    whose column view has ``column_capacity`` entries per target (default 64: GeNN's 32 per
    projection). Spikes emitted in one step are delivered at the start of the next.

    **STDP** (:class:`~jaxplastic.plasticity.AdditiveSTDP`, both projections): a spiking row
    is delivered and then depressed ($-A_- y$), a spiking column potentiated ($+A_+ x$)
    through the column view; amplitudes in uS (GeNN's, already scaled by ``g_max``).

    **Rewiring** every ``rewiring_interval`` ms, ``attempts_per_block * s^2`` attempts per
    projection (:func:`bamford_rewire`), with GeNN's elimination probabilities by default
    (Bamford's times 50: 0.0245 x 50, i.e. 1, below the threshold 0.1 uS and
    0.000136 x 50 = 0.0068 above), or, with :meth:`bamford`, Bamford's original
    probabilities and in-degree cap of 32 (feed-forward plus lateral; enforced exactly as the
    column capacity).

    ``scale`` and the other static fields fix the compiled shapes.

    Example:
        >>> import jax.random as jr
        >>> model = TopographicMap(scale=1)
        >>> state = model.init(jr.key(0))
        >>> state, record = model.run(state, num_intervals=1)  # 20 ms of model time

    References:
        Bamford, Murray & Willshaw (2010), Neural Networks 23(4), 517-527.
        Knight, Senk & Nowotny (2025), arXiv:2510.19764.
    """

    scale: int = eqx.field(static=True, default=1)
    dt: float = eqx.field(static=True, default=0.1)
    stimulus_interval: float = eqx.field(static=True, default=20.0)
    base_rate: float = eqx.field(static=True, default=5.0)
    peak_rate: float = eqx.field(static=True, default=152.8)
    stimulus_sigma: float = eqx.field(static=True, default=2.0)
    neuron: ConductanceLIF = eqx.field(default_factory=ConductanceLIF)
    ff_peak: float = eqx.field(static=True, default=0.16)
    ff_sigma: float = eqx.field(static=True, default=2.5)
    lat_peak: float = eqx.field(static=True, default=1.0)
    lat_sigma: float = eqx.field(static=True, default=1.0)
    g_max: float = eqx.field(static=True, default=0.2)
    capacity: int = eqx.field(static=True, default=64)
    column_capacity: int = eqx.field(static=True, default=64)
    stdp: AdditiveSTDP | None = eqx.field(static=True, default_factory=AdditiveSTDP)
    rewiring_interval: float = eqx.field(static=True, default=1.0)
    attempts_per_block: int = eqx.field(static=True, default=10)
    weight_threshold: float = eqx.field(static=True, default=0.1)
    p_elim_depressed: float = eqx.field(static=True, default=1.0)
    p_elim_potentiated: float = eqx.field(static=True, default=0.0068)
    in_degree_cap: int | None = eqx.field(static=True, default=None)
    max_spikes: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not isinstance(self.scale, int) or isinstance(self.scale, bool) or self.scale < 1:
            raise ValueError(f"TopographicMap: scale: expected an int >= 1, got {self.scale!r}")
        if not self.dt > 0:
            raise ValueError(f"TopographicMap: dt: expected a step > 0 (ms), got {self.dt!r}")
        for name in ("stimulus_interval", "rewiring_interval"):
            steps = getattr(self, name) / self.dt
            if getattr(self, name) <= 0 or abs(steps - round(steps)) > 1e-6:
                raise ValueError(
                    f"TopographicMap: {name}: expected a positive multiple of dt={self.dt}, "
                    f"got {getattr(self, name)!r}"
                )
        per_interval = self.stimulus_interval / self.rewiring_interval
        if abs(per_interval - round(per_interval)) > 1e-6:
            raise ValueError(
                "TopographicMap: stimulus_interval: expected a multiple of rewiring_interval, "
                f"got {self.stimulus_interval} and {self.rewiring_interval}"
            )
        if not 1 <= self.attempts_per_block <= BLOCK * BLOCK // 2:
            raise ValueError(
                f"TopographicMap: attempts_per_block: expected 1..{BLOCK * BLOCK // 2}, "
                f"got {self.attempts_per_block!r}"
            )
        if self.in_degree_cap is not None and self.in_degree_cap < 1:
            raise ValueError(
                f"TopographicMap: in_degree_cap: expected >= 1, got {self.in_degree_cap}"
            )

    @classmethod
    def bamford(cls, **kwargs) -> TopographicMap:
        """Bamford's original competition: elimination 0.0245 / 0.000136, in-degree cap 32."""
        defaults = dict(p_elim_depressed=0.0245, p_elim_potentiated=0.000136, in_degree_cap=32)
        return cls(**{**defaults, **kwargs})

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def side(self) -> int:
        return BLOCK * self.scale

    @property
    def n(self) -> int:
        return self.side**2

    @property
    def in_degree_limit(self) -> int:
        """Column capacity of the afferent projection: the cap, or ``column_capacity``."""
        return self.column_capacity if self.in_degree_cap is None else self.in_degree_cap

    @property
    def steps_per_rewiring(self) -> int:
        return round(self.rewiring_interval / self.dt)

    @property
    def rewirings_per_interval(self) -> int:
        return round(self.stimulus_interval / self.rewiring_interval)

    @property
    def steps_per_interval(self) -> int:
        return self.steps_per_rewiring * self.rewirings_per_interval

    @property
    def attempts(self) -> int:
        """Rewiring attempts per projection and update."""
        return self.attempts_per_block * self.scale**2

    @property
    def sources(self) -> tuple[RewiringSource, RewiringSource]:
        """The feed-forward and the lateral source layers, as :func:`bamford_rewire` sees them."""
        return (
            RewiringSource(0, self.attempts, self.ff_peak, self.ff_sigma, True),
            RewiringSource(self.n, self.attempts, self.lat_peak, self.lat_sigma, False),
        )

    @property
    def spike_block(self) -> int:
        """Spiking neurons of one layer handled per vectorised block and step (none dropped)."""
        if self.max_spikes is not None:
            return min(self.max_spikes, self.n)
        # Per step and layer about 0.5 s^2 input spikes (20 Hz) and up to ~1 s^2 target
        # spikes (40 Hz once the map has formed); mean + 3 sd + 1 of the larger leaves a
        # second block (the exact fallback) for rare bursts only.
        mean = 1.0 * self.scale**2
        return min(self.n, math.ceil(mean + 3.0 * math.sqrt(mean) + 1.0))

    # -- initial state -------------------------------------------------------------------------
    def init(self, key: PRNGKeyArray) -> TopographicState:
        """Draws the initial network: connectivity, membrane potentials, key. Jittable."""
        k_ff, k_lat, k_v, k_run = jr.split(key, 4)
        common = dict(capacity=self.capacity, column_capacity=None, weight=self.g_max)
        ff = distance_dependent_connectivity(
            k_ff, self.side, p_peak=self.ff_peak, sigma=self.ff_sigma, **common
        )
        lat = distance_dependent_connectivity(
            k_lat, self.side, p_peak=self.lat_peak, sigma=self.lat_sigma, autapses=False, **common
        )
        afferent = RaggedConnectivity(
            jnp.concatenate([ff.post, lat.post]),
            {"weight": jnp.concatenate([ff.weight, lat.weight])},
            None,
            self.n,
        ).with_column_view(self.in_degree_limit)
        zeros = jnp.zeros(self.n)
        return TopographicState(
            afferent=afferent,
            neurons=self.neuron.init(self.n, key=k_v),
            pending=zeros,
            pre_trace=jnp.zeros(2 * self.n),
            post_trace=zeros,
            key=k_run,
            step=jnp.zeros((), jnp.int32),
        )

    # -- input ---------------------------------------------------------------------------------
    def input_rates(self, centre: Int[Array, "2"]) -> Float[Array, " n"]:
        """``[n]`` input rates (Hz) for a stimulus at block position ``centre = (x, y)``."""
        index = jnp.arange(self.n, dtype=jnp.int32)
        x, y = index % self.side % BLOCK, index // self.side % BLOCK
        dx = _wrap(x - centre[0], BLOCK)
        dy = _wrap(y - centre[1], BLOCK)
        d2 = (dx * dx + dy * dy).astype(jnp.float32)
        return self.base_rate + self.peak_rate * jnp.exp(-d2 / (2.0 * self.stimulus_sigma**2))

    def input_spikes(self, key: PRNGKeyArray) -> tuple[Array, Array]:
        """One stimulus interval of input spikes: ``bool[steps, n]`` and the stimulus centre."""
        k_centre, k_bits = jr.split(key)
        centre = jr.randint(k_centre, (2,), 0, BLOCK, dtype=jnp.int32)
        p = -jnp.expm1(-self.input_rates(centre) * (self.dt / 1000.0))
        threshold = jnp.minimum(jnp.round(p * 2.0**32), 2.0**32 - 1).astype(jnp.uint32)
        seeds = jr.bits(k_bits, (2,), jnp.uint32)
        counter = jnp.arange(self.steps_per_interval * self.n, dtype=jnp.uint32)
        bits = _lowbias32(_lowbias32(counter ^ seeds[0]) + seeds[1])
        spikes = bits.reshape(self.steps_per_interval, self.n) < threshold[None, :]
        return spikes, centre

    # -- one step ------------------------------------------------------------------------------
    def step(
        self, state: TopographicState, input_spikes: Array, input_events: Array
    ) -> tuple[TopographicState, Array]:
        """One step of ``dt``: the target layer, then delivery and STDP of this step's spikes.

        Args:
            state: the state.
            input_spikes: ``bool[n]`` input spikes of this step.
            input_events: ``int32[spike_block]`` the first spiking inputs (sentinel ``n``),
                as :func:`~jaxplastic.plasticity.compact_spikes` gives them.

        Returns:
            ``(state, target_spikes)`` with ``target_spikes: bool[n]``.
        """
        n, block = self.n, self.spike_block
        neurons, z = self.neuron.step(state.neurons, state.pending, dt=self.dt)
        target_spikes = z > 0.5
        target_events, _ = compact_spikes(target_spikes, block)
        spikes = jnp.concatenate([input_spikes, target_spikes])  # rows of `afferent`
        # First blocks of spiking rows, in the afferent's row numbers. The sentinel is 2n:
        # row n is target 0's lateral row, not "no spike".
        events = jnp.concatenate(
            [
                jnp.where(input_events < n, input_events, 2 * n),
                jnp.where(target_events < n, target_events + n, 2 * n),
            ]
        )
        stdp = self.stdp
        if stdp is None:
            pending = propagate(state.afferent, spikes)
            state = state._replace(neurons=neurons, pending=pending, step=state.step + 1)
            return state, target_spikes
        x = state.pre_trace * math.exp(-self.dt / stdp.tau_plus)
        y = state.post_trace * math.exp(-self.dt / stdp.tau_minus)
        bounds = dict(w_min=stdp.w_min, w_max=stdp.w_max)
        afferent, pending = depress_rows(
            state.afferent,
            spikes,
            y,
            a_minus=stdp.a_minus,
            max_spikes=2 * block,
            events=events,
            deliver=True,
            **bounds,
        )
        afferent = potentiate_columns(
            afferent,
            target_spikes,
            x,
            a_plus=stdp.a_plus,
            max_spikes=block,
            events=target_events,
            **bounds,
        )
        state = state._replace(
            afferent=afferent,
            neurons=neurons,
            pending=pending,
            pre_trace=x + spikes.astype(x.dtype),
            post_trace=y + target_spikes.astype(y.dtype),
            step=state.step + 1,
        )
        return state, target_spikes

    def rewire(
        self, state: TopographicState, key: PRNGKeyArray
    ) -> tuple[TopographicState, RewiringCounts]:
        """One rewiring update of both projections (:func:`bamford_rewire`)."""
        afferent, counts = bamford_rewire(
            state.afferent,
            key,
            side=self.side,
            sources=self.sources,
            weight_threshold=self.weight_threshold,
            p_elim_depressed=self.p_elim_depressed,
            p_elim_potentiated=self.p_elim_potentiated,
            new_weight=self.g_max,
        )
        return state._replace(afferent=afferent), counts

    # -- a chunk of stimulus intervals ---------------------------------------------------------
    def run(
        self, state: TopographicState, *, num_intervals: int, rewiring: bool = True
    ) -> tuple[TopographicState, ChunkRecord]:
        """Simulates ``num_intervals`` stimulus intervals (static), all on the device.

        A ``lax.scan`` over stimulus intervals (new stimulus, its input spikes), each a scan
        over rewiring periods (``steps_per_rewiring`` steps, then :meth:`rewire`). Jit it
        (``eqx.filter_jit``) and ``vmap`` it over a batch of states for several seeds.

        Args:
            state: the state.
            num_intervals: number of stimulus intervals (static).
            rewiring: False to freeze the structure (STDP only).

        Returns:
            ``(state, record)``: the new state and the counters of this chunk.
        """
        if not isinstance(num_intervals, int) or num_intervals < 1:
            raise ValueError(f"num_intervals: expected a positive int, got {num_intervals!r}")
        n, block = self.n, self.spike_block
        periods, steps = self.rewirings_per_interval, self.steps_per_rewiring

        def step(carry, xs):
            state, record = carry
            input_spikes, input_events = xs
            state, target_spikes = self.step(state, input_spikes, input_events)
            over = (jnp.sum(input_spikes, dtype=jnp.int32) > block) | (
                jnp.sum(target_spikes, dtype=jnp.int32) > block
            )
            record = record._replace(
                input_spikes=record.input_spikes + input_spikes.astype(jnp.int32),
                target_spikes=record.target_spikes + target_spikes.astype(jnp.int32),
                overflow_steps=record.overflow_steps + over.astype(jnp.int32),
            )
            return (state, record), None

        def period(carry, xs):
            spikes, events, key = xs
            carry, _ = lax.scan(step, carry, (spikes, events))
            if rewiring:
                state, record = carry
                state, counts = self.rewire(state, key)
                carry = (state, record._replace(rewiring=record.rewiring + counts))
            return carry, None

        def interval(carry, _):
            state, record = carry
            key, k_input, k_rewire = jr.split(state.key, 3)
            spikes, _ = self.input_spikes(k_input)
            events, _ = jax.vmap(lambda s: compact_spikes(s, block))(spikes)
            xs = (
                spikes.reshape(periods, steps, n),
                events.reshape(periods, steps, block),
                jr.split(k_rewire, periods),
            )
            carry, _ = lax.scan(period, (state._replace(key=key), record), xs)
            return carry, None

        record = ChunkRecord(
            input_spikes=jnp.zeros(n, jnp.int32),
            target_spikes=jnp.zeros(n, jnp.int32),
            rewiring=RewiringCounts.zeros(2, self.side),
            overflow_steps=jnp.zeros((), jnp.int32),
        )
        (state, record), _ = lax.scan(interval, (state, record), None, length=num_intervals)
        return state, record


# ---------------------------------------------------------------------------------------------
# Metrics (host side, numpy): connectivity statistics, displacement maps, receptive fields.
# ---------------------------------------------------------------------------------------------


def _live_edges(post: np.ndarray, weight: np.ndarray, n_post: int):
    pre, slot = np.nonzero(post != n_post)
    return pre, post[pre, slot].astype(np.int64), weight[pre, slot].astype(np.float64)


def connection_stats(post: np.ndarray, weight: np.ndarray, n_post: int) -> dict[str, float]:
    """Synapse count, mean weight, and mean / sd of the in- and out-degrees of one projection."""
    pre, tgt, w = _live_edges(post, weight, n_post)
    in_degree = np.bincount(tgt, minlength=n_post)
    out_degree = np.bincount(pre, minlength=post.shape[0])
    return {
        "synapses": int(pre.size),
        "mean_weight": float(w.mean()) if w.size else 0.0,
        "in_degree_mean": float(in_degree.mean()),
        "in_degree_sd": float(in_degree.std()),
        "out_degree_mean": float(out_degree.mean()),
        "out_degree_sd": float(out_degree.std()),
        "in_degree_max": int(in_degree.max(initial=0)),
        "out_degree_max": int(out_degree.max(initial=0)),
    }


def displacement_maps(
    post: np.ndarray, weight: np.ndarray, side: int, *, radius: int | None = None
) -> dict[str, np.ndarray]:
    """Connection probability and mean weight against the displacement ``(dx, dy)``.

    The probability at a displacement is the number of synapses with that (signed, torus)
    displacement from source to target over the number of source-target pairs with it (``n``).

    Returns:
        ``{"offsets": int[2r+1], "probability": float[2r+1, 2r+1] (rows dy, columns dx),
        "mean_weight": same (NaN where there is no synapse), "radial_distance",
        "radial_probability", "radial_weight"}``: the radial profile at every distinct
        lattice distance up to the radius (probability: synapses over source-target pairs).
    """
    n = side * side
    radius = min(side // 2, 8) if radius is None else radius
    pre, tgt, w = _live_edges(post, weight, n)
    dx = _np_wrap(tgt % side - pre % side, side)
    dy = _np_wrap(tgt // side - pre // side, side)
    keep = (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
    size = 2 * radius + 1
    count = np.zeros((size, size))
    total = np.zeros((size, size))
    np.add.at(count, (dy[keep] + radius, dx[keep] + radius), 1.0)
    np.add.at(total, (dy[keep] + radius, dx[keep] + radius), w[keep])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_w = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    # Radial profile at every distinct lattice distance up to `radius`: synapses over pairs.
    axis = np.arange(-(side // 2), side - side // 2)
    ox, oy = np.meshgrid(axis, axis)
    d2_all = (ox**2 + oy**2).ravel()
    levels = np.unique(d2_all[d2_all <= radius**2])
    pairs = np.array([np.sum(d2_all == level) for level in levels], dtype=np.float64) * n
    d2 = dx.astype(np.int64) ** 2 + dy.astype(np.int64) ** 2
    level_of = np.searchsorted(levels, d2)
    inside = (level_of < levels.size) & (levels[np.minimum(level_of, levels.size - 1)] == d2)
    synapses = np.bincount(level_of[inside], minlength=levels.size).astype(np.float64)
    weights = np.bincount(level_of[inside], weights=w[inside], minlength=levels.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        radial_w = np.where(synapses > 0, weights / np.maximum(synapses, 1), np.nan)
    return {
        "offsets": np.arange(-radius, radius + 1),
        "probability": count / n,
        "mean_weight": mean_w,
        "radial_distance": np.sqrt(levels.astype(np.float64)),
        "radial_probability": synapses / pairs,
        "radial_weight": radial_w,
    }


def _np_wrap(d, side):
    return (d + side // 2) % side - side // 2


class MapQuality(NamedTuple):
    """Receptive fields of the target neurons and the quality of the map.

    Attributes:
        centre: ``[n, 2]`` receptive-field centre ``(x, y)`` in input-grid units, in
            ``[0, side)`` (NaN for a neuron without feed-forward weight).
        spread: ``[n]`` receptive-field spread: the mean over x and y of the weighted
            circular standard deviation about the centre.
        distance: ``[n]`` torus distance of the centre from the neuron's own position (its
            topographically ideal centre).
        mean_distance: mean of ``distance`` over neurons with feed-forward weight.
        mean_spread: mean of ``spread`` over the same neurons.
        empty: number of target neurons without feed-forward weight.
    """

    centre: np.ndarray
    spread: np.ndarray
    distance: np.ndarray
    mean_distance: float
    mean_spread: float
    empty: int


def _circular_min_variance(marginal: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre and spread minimising the weighted variance of a 1-D marginal on a ring.

    ``V(c) = sum_k m_k wrap(k - c)^2`` is continuous and quadratic on every unit interval
    ``[k, k + 1]`` (the wrap of integer positions only switches at integers), so the exact
    minimiser is the best of the interval-wise minimisers: in the frame of the interval's
    midpoint ``r = k + 1/2`` the positions unroll to ``u = r + wrap(x - r)`` and the optimum
    is their weighted mean clipped to the interval. Bamford et al. search the same minimum
    on a 0.1 grid. Work: two ``[n, side] x [side, side]`` matrix products.
    """
    x = np.arange(side, dtype=np.float64)
    r = x + 0.5
    u = r[:, None] + _np_wrap_float(x[None, :] - r[:, None], side)  # [frames, positions]
    s0 = marginal.sum(axis=1, keepdims=True)
    s1 = marginal @ u.T
    s2 = marginal @ (u**2).T
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / s0
    c = np.clip(mean, x[None, :], x[None, :] + 1.0)
    var = s2 - 2.0 * c * s1 + c**2 * s0
    best = np.argmin(var, axis=1)
    rows = np.arange(marginal.shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = np.sqrt(np.maximum(var[rows, best], 0.0) / s0[:, 0])
    return c[rows, best] % side, spread


def _np_wrap_float(d, side):
    return (d + side / 2.0) % side - side / 2.0


def map_quality(ff_post: np.ndarray, ff_weight: np.ndarray, side: int) -> MapQuality:
    """Receptive-field centres and spreads, and the map quality of Bamford et al. (2010).

    A target neuron's receptive field is the feed-forward weight it receives, placed at the
    inputs' grid positions. Along each axis its centre is the torus-aware centre of mass: the
    point that minimises the weighted circular variance of the weight's marginal on that axis
    (Bamford et al.'s measure, computed exactly); its spread is the square root of that
    minimal variance. The map quality is the mean distance of the centres from their ideal
    positions (each neuron's own position) and the mean spread.
    """
    n = side * side
    pre, tgt, w = _live_edges(ff_post, ff_weight, n)
    mx = np.zeros((n, side))
    my = np.zeros((n, side))
    np.add.at(mx, (tgt, pre % side), w)
    np.add.at(my, (tgt, pre // side), w)
    cx, sx = _circular_min_variance(mx, side)
    cy, sy = _circular_min_variance(my, side)
    empty = mx.sum(axis=1) <= 0
    index = np.arange(n)
    dx = _np_wrap_float(cx - index % side, side)
    dy = _np_wrap_float(cy - index // side, side)
    distance = np.sqrt(dx**2 + dy**2)
    centre = np.stack([cx, cy], axis=1)
    spread = 0.5 * (sx + sy)
    centre[empty] = np.nan
    spread[empty] = np.nan
    distance[empty] = np.nan
    ok = ~empty
    return MapQuality(
        centre=centre,
        spread=spread,
        distance=distance,
        mean_distance=float(distance[ok].mean()) if ok.any() else float("nan"),
        mean_spread=float(spread[ok].mean()) if ok.any() else float("nan"),
        empty=int(empty.sum()),
    )


# ---------------------------------------------------------------------------------------------
# A whole experiment: seeds in one compiled program, records on the host.
# ---------------------------------------------------------------------------------------------


# Compiled chunks, by (model, intervals per chunk, seeds): a process that runs the same model
# again (tests, notebooks, several experiments) compiles once.
_COMPILED: dict[tuple[Any, int, int], Callable] = {}
_INIT: dict[Any, Callable] = {}


def _snapshot(model: TopographicMap, post: np.ndarray, weight: np.ndarray) -> dict[str, Any]:
    """Host-side metrics of one network's afferent connectivity."""
    n = model.n
    ff_post, ff_w, lat_post, lat_w = post[:n], weight[:n], post[n:], weight[n:]
    quality = map_quality(ff_post, ff_w, model.side)
    return {
        "ff": connection_stats(ff_post, ff_w, n),
        "lat": connection_stats(lat_post, lat_w, n),
        "rf_distance": quality.mean_distance,
        "rf_spread": quality.mean_spread,
        "rf_empty": quality.empty,
    }


def run_topographic(
    model: TopographicMap,
    *,
    duration_s: float,
    seeds: list[int] | tuple[int, ...] = (0,),
    record_every_s: float = 1.0,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Runs ``len(seeds)`` networks for ``duration_s`` of model time and records metrics.

    Several seeds run in one compiled program (``vmap`` over a batch of states). The
    duration and the record interval are rounded to whole stimulus intervals (20 ms). The
    host loop only runs between records: it pulls the connectivity, computes
    :func:`connection_stats` and :func:`map_quality`, and calls ``progress``.

    Args:
        model: the model.
        duration_s: model time (s), > 0.
        seeds: one PRNG seed per network.
        record_every_s: model time between records (s).
        progress: optional callback ``progress(info)`` after each chunk with ``model_s``,
            ``wall_s`` (simulation wall time so far, compilation excluded), ``rtf`` (model
            seconds per wall second), ``steps_per_s`` and ``advance_s`` (model time of the
            chunk).

    Returns:
        A dict: ``"times_s"`` (record times), ``"records"`` (per seed, one
        :func:`_snapshot` dict per record time), ``"chunks"`` (the :class:`ChunkRecord` of
        every chunk, numpy, leading axis seeds), ``"initial"`` and ``"final"`` (numpy
        ``post`` and ``weight`` of the afferent projection, ``[seeds, 2n, capacity]``) and
        ``"timing"``.
    """
    if not duration_s > 0:
        raise ValueError(f"duration_s: expected > 0, got {duration_s!r}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds: expected at least one seed")
    interval_s = model.stimulus_interval / 1000.0
    total = max(1, round(duration_s / interval_s))
    per_chunk = max(1, min(total, round(record_every_s / interval_s)))
    batched = len(seeds) > 1
    keys = jnp.stack([jr.key(s) for s in seeds])

    t0 = time.perf_counter()
    if model not in _INIT:
        _INIT[model] = jax.jit(model.init)
    # One network at a time (one compilation whatever the number of seeds), then stacked.
    states = jax.tree.map(lambda *xs: jnp.stack(xs), *[_INIT[model](k) for k in keys])
    states = jax.block_until_ready(states)
    init_s = time.perf_counter() - t0

    compile_s = 0.0

    def runner(num_intervals: int) -> Callable:
        nonlocal compile_s
        key = (model, num_intervals, len(seeds))
        if key not in _COMPILED:
            if batched:
                fn = jax.vmap(lambda s: model.run(s, num_intervals=num_intervals))
            else:  # one network: no vmap (so no batched control flow)

                def fn(s):
                    one = jax.tree.map(lambda x: x[0], s)
                    state, record = model.run(one, num_intervals=num_intervals)
                    return jax.tree.map(lambda x: x[None], (state, record))

            t_compile = time.perf_counter()
            _COMPILED[key] = jax.jit(fn, donate_argnums=0).lower(states).compile()
            compile_s += time.perf_counter() - t_compile
        return _COMPILED[key]

    def host(states) -> dict[str, np.ndarray]:
        return {
            "post": np.asarray(states.afferent.post),
            "weight": np.asarray(states.afferent.weight),
        }

    def snapshots(connectivity) -> list[dict[str, Any]]:
        post, weight = connectivity["post"], connectivity["weight"]
        return [_snapshot(model, post[b], weight[b]) for b in range(len(seeds))]

    initial = host(states)
    records = [[snap] for snap in snapshots(initial)]
    times = [0.0]
    chunks = []
    done = 0
    run_wall = 0.0
    final = initial
    while done < total:
        size = min(per_chunk, total - done)
        fn = runner(size)
        t_start = time.perf_counter()
        states, chunk = jax.block_until_ready(fn(states))
        run_wall += time.perf_counter() - t_start
        done += size
        times.append(done * interval_s)
        chunks.append(jax.tree.map(np.asarray, chunk))
        final = host(states)
        for b, snap in enumerate(snapshots(final)):
            records[b].append(snap)
        if progress is not None:
            model_s = done * interval_s
            progress(
                {
                    "model_s": model_s,
                    "wall_s": run_wall,
                    "rtf": model_s / max(run_wall, 1e-12),
                    "steps_per_s": done * model.steps_per_interval / max(run_wall, 1e-12),
                    "advance_s": size * interval_s,
                }
            )
    model_s = total * interval_s
    return {
        "times_s": times,
        "records": records,
        "chunks": chunks,
        "initial": initial,
        "final": final,
        "timing": {
            "init_s": init_s,
            "compile_s": compile_s,
            "run_wall_s": run_wall,
            "model_s": model_s,
            "rtf": model_s / max(run_wall, 1e-12),
            "steps_per_s": total * model.steps_per_interval / max(run_wall, 1e-12),
            "seeds": len(seeds),
        },
    }
