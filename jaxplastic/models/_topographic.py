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
from .._structural import _add, _remove_slots, _stable_sort
from ..plasticity.stdp import (
    AdditiveSTDP,
    _after_first_blocks,
    _depress_block,
    _in_two_parts,
    _potentiate_block,
    compact_spikes,
)

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
# Counter-based random numbers.
# ---------------------------------------------------------------------------------------------


def _lowbias32(x):
    """A 32-bit integer hash with low bias (C. Wellons, 2018), used as a counter-based generator."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _hash(counter: Array, seeds: Array) -> Array:
    """``uint32`` random bits for each ``uint32`` counter: two rounds of ``lowbias32`` keyed by
    two seed words (drawn from a PRNG key with one threefry call). Tens of times cheaper than
    threefry on a CPU, and tested against the distributions it feeds."""
    return _lowbias32(_lowbias32(counter ^ seeds[0]) + seeds[1])


def _uniform(bits: Array) -> Array:
    """Uniform in ``[0, 1)`` from the top 24 bits."""
    return jnp.right_shift(bits, jnp.uint32(8)).astype(jnp.float32) * jnp.float32(2.0**-24)


_NEVER = 2**30  # a step count past any interval: "no spike"


def _geometric(bits: Array, rate_dt: Array) -> Array:
    """Steps before the next spike of a Bernoulli process that fires each step with probability
    $1 - e^{-r\\,dt}$: $\\lfloor E / (r\\,dt) \\rfloor$ with $E \\sim \\mathrm{Exp}(1)$, since
    $P(\\lfloor E/(r dt) \\rfloor \\ge k) = e^{-k r dt}$. ``_NEVER`` where ``r dt <= 0``."""
    u = (jnp.right_shift(bits, jnp.uint32(8)) + jnp.uint32(1)).astype(jnp.float32)
    exponential = -jnp.log(u * jnp.float32(2.0**-24))  # u in (0, 1]: E in [0, 16.7]
    steps = jnp.floor(exponential / jnp.maximum(rate_dt, jnp.float32(1e-30)))
    steps = jnp.where(rate_dt > 0, jnp.minimum(steps, jnp.float32(_NEVER)), jnp.float32(_NEVER))
    return steps.astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# The rewiring rule.
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


# Up to this many attempts per update, repeated (row, target) pairs are found by comparing
# every pair of attempts (O(m^2), no sort); above, the attempts are sorted by row (a packed
# sort, O(m log m)) and each compared with the few before it in its row.
_PAIRWISE_MAX_ATTEMPTS = 32


def _earlier_same(values: Array) -> Array:
    """``bool[m, m]``: entry ``[a, b]`` is True when ``b < a`` and ``values[b] == values[a]``."""
    m = values.shape[0]
    index = jnp.arange(m)
    return (index[None, :] < index[:, None]) & (values[None, :] == values[:, None])


def _ranks_in_sorted_groups(values: Array) -> Array:
    """For sorted ``values``, how many earlier entries equal each one: a loop over shifts that
    runs as many times as the largest group has entries (a prefix maximum costs more on a
    CPU for groups this small)."""
    m = values.shape[0]
    index = jnp.arange(m, dtype=jnp.int32)

    def shift(state):
        j, rank, _ = state
        same = (index >= j) & (values[jnp.maximum(index - j, 0)] == values)
        return j + 1, rank + same.astype(jnp.int32), jnp.any(same)

    init = (jnp.int32(1), jnp.zeros(m, jnp.int32), jnp.bool_(True))
    return lax.while_loop(lambda s: s[2], shift, init)[1]


def _distinct_targets(seeds, offset, rows, targets, n_post, rank):
    """Redraws the targets of attempts that repeat an earlier (row, target) pair until none
    does, so that each row's candidates are distinct (GeNN samples each row's targets without
    replacement). The procedure only compares labels, so it is invariant under any
    relabelling of the targets, and each row's targets are a uniformly random set of distinct
    neurons. ``rank`` (sorted rows) is each attempt's rank in its row, or None to compare
    every pair of attempts. Only ``[m]`` arrays are carried: under ``vmap`` the loop's
    per-member selects copy nothing large."""
    m = rows.shape[0]
    index = jnp.arange(m, dtype=jnp.int32)
    if rank is None:
        same_row = _earlier_same(rows)

        def repeated(targets):
            return jnp.any(same_row & (targets[None, :] == targets[:, None]), axis=1)

    else:
        most = jnp.max(rank)

        def repeated(targets):
            def shift(j, dup):
                earlier = jnp.maximum(index - j, 0)
                return dup | ((rank >= j) & (targets[earlier] == targets))

            return lax.fori_loop(1, most + 1, shift, jnp.zeros(m, bool))

    def redraw(state):
        i, targets, dup = state
        counter = (offset + i * m + index).astype(jnp.uint32)
        fresh = (_hash(counter, seeds) % jnp.uint32(n_post)).astype(jnp.int32)
        targets = jnp.where(dup, fresh, targets)
        return i + 1, targets, repeated(targets)

    init = (jnp.int32(0), targets, repeated(targets))
    return lax.while_loop(lambda s: jnp.any(s[2]), redraw, init)[1]


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
    max_changes: int = 32,
    axis_name: str | None = None,
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

    Every attempt is evaluated at once against its row (O(attempts * capacity): the row is
    gathered and searched for the candidate); a row's candidates are distinct, so their
    decisions are independent, as in GeNN's pass over the row. The few resulting changes
    are then applied with the structural primitives: the eliminations first (slot by slot,
    unlinking each from the column view in O(1)), then the formations in attempt order with
    :func:`~jaxplastic.add_synapses` semantics (greedy; refused when the row or the column is
    full). The changes are compacted into blocks of ``max_changes``; an update with more
    runs further blocks, so none is dropped. Nothing proportional to the network is read or
    written, and no loop carries the projection unless a block overflows.

    Args:
        conn: the projection, with a column view; rows ``[start, start + side**2)`` of each
            source hold that layer's neurons.
        key: PRNG key.
        side: grid side of every layer.
        sources: the source layers (static).
        weight_threshold: elimination threshold (weight units).
        p_elim_depressed, p_elim_potentiated: elimination probabilities below / above it.
        new_weight: weight of a new synapse.
        max_changes: eliminations (and formations) applied per vectorised block (static).
        axis_name: when the call runs under ``vmap(..., axis_name=...)``, that name (static):
            a loop over further blocks then runs while any member needs one, with no
            per-member select (which would copy the projection).

    Returns:
        ``(conn, counts)``: the new projection and its :class:`RewiringCounts`.

    References:
        Bamford, Murray & Willshaw (2010), Neural Networks 23(4), 517-527.
        Knight, Senk & Nowotny (2025), arXiv:2510.19764.
    """
    if conn.column is None:
        raise ValueError("bamford_rewire: conn needs a column view")
    return _bamford_rewire(
        conn,
        key,
        side=side,
        sources=sources,
        weight_threshold=weight_threshold,
        p_elim_depressed=p_elim_depressed,
        p_elim_potentiated=p_elim_potentiated,
        new_weight=new_weight,
        max_changes=max_changes,
        axis_name=axis_name,
    )


class _Attempts(NamedTuple):
    """One rewiring update's attempts (``[m]`` each), as :func:`_draw_attempts` draws them."""

    rows: Int[Array, " m"]
    targets: Int[Array, " m"]
    uniform: Float[Array, " m"]
    source_of: Int[Array, " m"]  # index of the attempt's RewiringSource


def _draw_attempts(key, sources, n: int, n_pre: int) -> _Attempts:
    """All the randomness of one rewiring update: for each source, ``attempts`` uniformly
    random (row in the source's layer, target) pairs with a uniform each, targets distinct
    within a row. Rows and targets come by a modulo (bias below n / 2^32 <= 3e-6), the
    uniforms from one counter-based hash. Above ``_PAIRWISE_MAX_ATTEMPTS`` the attempts come
    sorted by row."""
    m = sum(source.attempts for source in sources)
    which = np.repeat(np.arange(len(sources)), [source.attempts for source in sources])
    start = np.array([source.start for source in sources], np.int32)
    seeds = jr.bits(key, (2,), jnp.uint32)
    bits = _hash(jnp.arange(3 * m, dtype=jnp.uint32), seeds)
    rows = jnp.asarray(start[which]) + (bits[:m] % jnp.uint32(n)).astype(jnp.int32)
    targets = (bits[m : 2 * m] % jnp.uint32(n)).astype(jnp.int32)
    uniform = _uniform(bits[2 * m :])
    source_of = jnp.asarray(which, jnp.int32)
    if m <= _PAIRWISE_MAX_ATTEMPTS:
        rank = None
    else:
        # Sorted by row, a row's attempts are contiguous. The targets and uniforms are
        # independent of the rows and identically distributed, so they stay in place.
        rows, order = _stable_sort(rows, n_pre)
        source_of = source_of[order]
        rank = _ranks_in_sorted_groups(rows)
    targets = _distinct_targets(seeds, 3 * m, rows, targets, n, rank)
    return _Attempts(rows, targets, uniform, source_of)


def _decide(rows, targets, uniform, source_of, connected, p_elim, sources, side: int):
    """Each attempt's decision, given whether its candidate is connected and its elimination
    probability: ``(eliminate, form, hist_index)``, ``[m]`` each. A connected candidate is
    eliminated with ``p_elim``; an unconnected one forms with the source's distance kernel
    ``p_peak exp(-d^2 / (2 sigma^2))`` (0 for an autapse where the source excludes them).
    ``hist_index`` is the attempt's (source, unit distance bin) in a flat histogram."""
    start = np.array([source.start for source in sources], np.int32)
    p_peak = np.array([source.p_peak for source in sources], np.float32)
    two_sigma2 = np.array([2 * source.sigma**2 for source in sources], np.float32)
    autapses = np.array([source.autapses for source in sources], bool)
    eliminate = connected & (uniform < p_elim)
    position = rows - jnp.asarray(start)[source_of]
    d2 = _torus_d2(position, targets, side)
    p_form = jnp.asarray(p_peak)[source_of] * jnp.exp(-d2 / jnp.asarray(two_sigma2)[source_of])
    p_form = jnp.where(~jnp.asarray(autapses)[source_of] & (targets == position), 0.0, p_form)
    form = ~connected & (uniform < p_form)
    bins = _distance_bins(side)
    hist_index = source_of * bins + jnp.minimum(jnp.sqrt(d2).astype(jnp.int32), bins - 1)
    return eliminate, form, hist_index


def _bamford_rewire(
    conn,
    key,
    *,
    side,
    sources,
    weight_threshold,
    p_elim_depressed,
    p_elim_potentiated,
    new_weight,
    max_changes=32,
    axis_name=None,
):
    """:func:`bamford_rewire`; without a column view (profiling) the upkeep is skipped."""
    n = side * side
    if conn.n_post != n:
        raise ValueError(f"bamford_rewire: expected n_post = side**2 = {n}, got {conn.n_post}")
    for source in sources:
        if not 0 <= source.start <= conn.n_pre - n:
            raise ValueError(f"bamford_rewire: source rows {source.start}+{n} out of range")
        if not isinstance(source.attempts, int) or not 1 <= source.attempts <= n:
            raise ValueError(f"bamford_rewire: attempts: expected 1..{n}, got {source.attempts}")
    if isinstance(max_changes, bool) or not isinstance(max_changes, int) or max_changes < 1:
        raise ValueError(f"bamford_rewire: max_changes: expected an int >= 1, got {max_changes!r}")
    m = sum(source.attempts for source in sources)
    rows, targets, uniform, source_of = _draw_attempts(key, sources, n, conn.n_pre)

    # Every attempt against its row: is the candidate connected, and with which weight?
    # The slot is the smallest matching lane (a row holds a target at most once): a min
    # reduction, several times cheaper on a CPU than argmax (a variadic reduction).
    cap = conn.capacity
    lane = jnp.arange(cap, dtype=jnp.int32)
    slot = jnp.min(jnp.where(conn.post[rows] == targets[:, None], lane, cap), axis=1)  # [m]
    connected = slot < cap
    slot = jnp.minimum(slot, cap - 1)
    weight = conn.weight.reshape(-1)[rows * cap + slot]
    p_elim = jnp.where(weight < weight_threshold, p_elim_depressed, p_elim_potentiated)
    eliminate, form, hist_index = _decide(
        rows, targets, uniform, source_of, connected, p_elim, sources, side
    )
    bins = _distance_bins(side)
    hist_size = len(sources) * bins

    def histogram(hist, index, counted):
        return hist.at[index].add(counted.astype(jnp.int32))

    def remove(blocks, carry):
        conn, eliminated = carry
        (a,) = blocks
        safe = jnp.minimum(a, m - 1)
        conn, removed = _remove_slots(conn, rows[safe], slot[safe], a < m)
        return conn, histogram(eliminated, hist_index[safe], removed)

    dtype = conn.weight.dtype

    def add(blocks, carry):
        conn, formed, refused = carry
        (a,) = blocks
        safe = jnp.minimum(a, m - 1)
        proposals = jnp.where(a < m, targets[safe], n)  # sentinel: no proposal
        values = {"weight": jnp.full(a.shape, new_weight, dtype)}
        conn, info, placed = _add(conn, rows[safe], proposals, values)
        return conn, histogram(formed, hist_index[safe], placed), refused + info.refused

    zeros = jnp.zeros(hist_size, jnp.int32)
    if m <= max_changes:
        everyone = jnp.arange(m, dtype=jnp.int32)
        conn, eliminated = remove((jnp.where(eliminate, everyone, m),), (conn, zeros))
        conn, formed, refused = add(
            (jnp.where(form, everyone, m),), (conn, zeros, jnp.zeros((), jnp.int32))
        )
    else:
        # Usually a handful of changes per update: compacted into one block each, with a loop
        # over further blocks (eliminations first, then formations, in attempt order).
        index, count = compact_spikes(eliminate, max_changes)
        carry = remove((index,), (conn, zeros))
        conn, eliminated = _after_first_blocks(
            (eliminate,), (index,), (count,), remove, carry, axis_name
        )
        index, count = compact_spikes(form, max_changes)
        carry = add((index,), (conn, zeros, jnp.zeros((), jnp.int32)))
        conn, formed, refused = _after_first_blocks(
            (form,), (index,), (count,), add, carry, axis_name
        )
    counts = RewiringCounts(
        formed=formed.reshape(len(sources), bins),
        eliminated=eliminated.reshape(len(sources), bins),
        attempts=jnp.asarray([source.attempts for source in sources], jnp.int32),
        refused=refused,
    )
    return conn, counts


# ---------------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------------


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
        neurons: target-layer state (``v`` mV, ``g`` uS, refractory steps). The spikes of
            the last step are already delivered into ``g`` (GeNN's one-step synaptic delay:
            the next step's neuron update sees them first).
        pre_trace: ``[2n]`` presynaptic STDP traces $x$ ($\\tau_+$) of the rows: inputs, then
            targets.
        post_trace: ``[n]`` postsynaptic traces $y$ ($\\tau_-$) of the targets.
        key: PRNG key, split every stimulus interval.
        step: number of steps simulated (int32).
    """

    afferent: RaggedConnectivity
    neurons: ConductanceLIFState
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


class _Interval(NamedTuple):
    """What the steps of one stimulus interval carry (``input_next`` and the counters live
    only inside the interval: the inputs are redrawn at every stimulus jump)."""

    afferent: RaggedConnectivity
    neurons: ConductanceLIFState
    pre_trace: Float[Array, " n2"]  # scaled: see TopographicMap._trace_scale
    post_trace: Float[Array, " n"]
    input_next: Int[Array, " n"]  # step of each input's next spike in this interval
    input_count: Int[Array, " n"]
    target_count: Int[Array, " n"]
    overflow_steps: Int[Array, ""]
    rewiring: RewiringCounts


class _Spikes(NamedTuple):
    """One step's spikes of each layer: ``(mask, first block, count)`` as
    :func:`~jaxplastic.plasticity.compact_spikes` gives them."""

    inputs: tuple[Array, Array, Array]
    target: tuple[Array, Array, Array]


# The phases of a step and an update, all of which a run performs; the phase profile of
# benchmarks/topomap.py leaves them out one at a time.
PHASES = frozenset({"input", "neurons", "delivery", "stdp", "rewiring", "index"})


def _deliver_and_learn(
    model: TopographicMap,
    k: Int[Array, ""],
    spikes: tuple[tuple, tuple, tuple],
    afferent: RaggedConnectivity,
    g: Float[Array, " targets"],
    carry: Any,
    rate_dt: Float[Array, " inputs"],
    seeds: Array,
    *,
    stdp: Any,
    deliver: bool,
    draw_inputs: bool,
    n_post: int,
    heads: tuple[int, int] | None,
    axis_name: str | None,
    to_local: Callable[[Int[Array, " b"]], Int[Array, " b"]] = lambda index: index,
) -> tuple[Array, ...]:
    """Delivery, STDP and bookkeeping of step ``k``'s spikes, visiting the spiking neurons
    only: the part of a step that the one-device map and the sharded one share.

    ``spikes = (masks, firsts, counts)`` of the inputs and the targets (global indices, as
    :func:`compact_spikes` gives them). ``afferent`` holds the targets this call owns
    (``n_post`` of them), and ``to_local`` maps global target and input indices to its own
    (a sentinel elsewhere); ``carry`` provides the traces and the input bookkeeping in the
    same local indexing. ``heads`` (or None) processes the first blocks in two parts
    (:func:`_in_two_parts`). Delivery adds into ``g``, the conductances the next neuron update
    sees; then every spiking row is depressed before any potentiation, and the traces take
    this step's spikes while the spiking inputs draw their next spike. Returns the new
    weight, ``g``, pre and post traces, next input spikes and spike counts.
    """
    n = model.n
    masks, firsts, counts = spikes

    def rows(blocks):  # afferent rows of the spiking inputs and targets (sentinel 2n)
        inputs, targets = blocks
        return jnp.concatenate(
            [jnp.where(inputs < n, inputs, 2 * n), jnp.where(targets < n, targets + n, 2 * n)]
        )

    def first_blocks(process, state, firsts, counts, heads):
        if heads is None:
            return process(firsts, state)
        return _in_two_parts(firsts, counts, heads, process, state, axis_name)

    if stdp is not None:
        scale_x, scale_y = model._trace_scale(k)
        bounds = dict(w_min=stdp.w_min, w_max=stdp.w_max)
        a_minus = stdp.a_minus * scale_y
    else:
        a_minus, bounds = None, dict(w_min=0.0, w_max=0.0)
    post, weight = afferent.post, afferent.weight

    # Delivery into the conductances (seen by the next step's neuron update), then
    # depression: every spiking row, before any potentiation. Without STDP the weights
    # stay out of the loop's carry: a loop that passes an array through unchanged makes
    # XLA copy it (and the connectivity with it) before the next in-place update.
    def depress(blocks, state):
        weight_in, g = state if stdp is not None else (weight, state)
        weight_out, delivered = _depress_block(
            post,
            weight_in,
            rows(blocks),
            carry.post_trace,
            a_minus,
            delivered=g if deliver else None,
            n_post=n_post,
            **bounds,
        )
        g = g if delivered is None else delivered
        return (weight_out, g) if stdp is not None else g

    if stdp is not None:
        state = first_blocks(depress, (weight, g), firsts, counts, heads)
        weight, g = _after_first_blocks(masks, firsts, counts, depress, state, axis_name)
    elif deliver:
        g = first_blocks(depress, g, firsts, counts, heads)
        g = _after_first_blocks(masks, firsts, counts, depress, g, axis_name)
    pre_trace, post_trace = carry.pre_trace, carry.post_trace
    if stdp is not None:
        pre_slot = afferent.column.pre_slot
        a_plus = stdp.a_plus * scale_x

        def potentiate(blocks, weight):
            columns = to_local(blocks[0])
            return _potentiate_block(weight, pre_slot, columns, pre_trace, a_plus, **bounds)

        target = (masks[1],), (firsts[1],), (counts[1],)
        weight = first_blocks(
            potentiate, weight, target[1], target[2], None if heads is None else heads[1:]
        )
        weight = _after_first_blocks(*target, potentiate, weight, axis_name)
        grow_x, grow_y = 1.0 / scale_x, 1.0 / scale_y

    # The traces take this step's spikes; the spiking inputs draw their next spike.
    def bookkeeping(blocks, state):
        pre_trace, post_trace, input_next, input_count, target_count = state
        inputs, targets = blocks
        mine_in, mine_tgt = to_local(inputs), to_local(targets)
        if stdp is not None:
            pre_trace = pre_trace.at[rows(blocks)].add(grow_x, mode="drop")
            post_trace = post_trace.at[mine_tgt].add(grow_y, mode="drop")
        if draw_inputs:
            r = rate_dt.at[mine_in].get(mode="fill", fill_value=0)
            later = model._next_input_spike(seeds, r, k, inputs)
            input_next = input_next.at[mine_in].set(later, mode="drop")
        input_count = input_count.at[mine_in].add(1, mode="drop")
        target_count = target_count.at[mine_tgt].add(1, mode="drop")
        return pre_trace, post_trace, input_next, input_count, target_count

    state = (pre_trace, post_trace, carry.input_next, carry.input_count, carry.target_count)
    state = bookkeeping(firsts, state)
    state = _after_first_blocks(masks, firsts, counts, bookkeeping, state, axis_name)
    return weight, g, *state


class TopographicMap(eqx.Module):
    """The topographic-map model of Bamford et al. (2010) as run by GeNN, at any scale.

    **Input layer** (``n = (16 s)^2`` Poisson neurons): every ``stimulus_interval`` ms a new
    stimulus position is drawn uniformly on the 16x16 block grid, and input ``(x, y)`` fires
    at $r = r_{base} + r_{peak} e^{-d^2/2\\sigma_s^2}$ with $d$ the distance between
    ``(x mod 16, y mod 16)`` and the stimulus on the 16x16 torus: at ``s > 1`` every 16x16
    block sees the stimulus at the same relative position, as GeNN tiles it. Each step an
    input spikes with probability $1 - e^{-r\\,dt}$. The draws are made as GeNN's Poisson
    input makes them, once per spike: each input holds the step of its next spike, drawn
    as a geometric number of steps $\\lfloor E / r\\,dt \\rfloor$, $E \\sim \\mathrm{Exp}(1)$
    (exactly the waiting time of the per-step Bernoulli process), when it spikes and at
    every stimulus jump (the process is memoryless). The uniforms come from a counter-based
    integer hash (``lowbias32``, two rounds) keyed by 64 bits drawn from the state's PRNG key
    per interval.

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
    through the column view; amplitudes in uS (GeNN's, already scaled by ``g_max``). The
    traces decay without a pass over the neurons: within a stimulus interval they are held
    scaled by $e^{k\\,dt/\\tau}$ ($k$ the step in the interval), so a spike adds
    $e^{k\\,dt/\\tau}$ to its neuron's entry and the pairing multiplies by $e^{-k\\,dt/\\tau}$;
    the state holds the true traces at the end of every interval.

    **Rewiring** every ``rewiring_interval`` ms, ``attempts_per_block * s^2`` attempts per
    projection (:func:`bamford_rewire`), with GeNN's elimination probabilities by default
    (Bamford's times 50: 0.0245 x 50, i.e. 1, below the threshold 0.1 uS and
    0.000136 x 50 = 0.0068 above), or, with :meth:`bamford`, Bamford's original
    probabilities and in-degree cap of 32 (feed-forward plus lateral; enforced exactly as the
    column capacity).

    Per step, only the neuron update and the search for this step's spikes touch every
    neuron; delivery, STDP, the trace updates and the next input draws visit the spiking
    neurons only (blocks of :attr:`input_block` and :attr:`spike_block` spiking neurons,
    with exact further blocks in the rare steps with more; delivery and STDP handle a head of
    ``spike_head`` spiking targets first and the rest of the block only when a step has
    more, see :attr:`spike_heads`), and every rewiring update is proportional to its
    attempts.

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
    spike_head: int | None = eqx.field(static=True, default=None)

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
        for name in ("max_spikes", "spike_head"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(
                    f"TopographicMap: {name}: expected None or an int >= 1, got {value!r}"
                )
        if self.in_degree_cap is not None and self.in_degree_cap < 1:
            raise ValueError(
                f"TopographicMap: in_degree_cap: expected >= 1, got {self.in_degree_cap}"
            )
        if self.base_rate < 0 or self.peak_rate < 0:
            raise ValueError(
                "TopographicMap: base_rate, peak_rate: expected rates >= 0 (Hz), got "
                f"{self.base_rate}, {self.peak_rate}"
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
    def mean_input_rate(self) -> float:
        """Mean input rate over the layer (Hz); the same for every stimulus position."""
        axis = np.arange(BLOCK)
        d = np.minimum(axis, BLOCK - axis)
        d2 = d[:, None] ** 2 + d[None, :] ** 2
        bump = np.exp(-d2 / (2.0 * self.stimulus_sigma**2)).mean()
        return float(self.base_rate + self.peak_rate * bump)

    @property
    def input_block(self) -> int:
        """Spiking inputs handled per vectorised block and step (none dropped)."""
        if self.max_spikes is not None:
            return min(self.max_spikes, self.n)
        # The number of input spikes per step is a sum of independent Bernoullis: mean
        # n r dt (0.51 s^2 at 20 Hz); mean + 4 sd + 2 leaves a second block to about one
        # step in 30,000.
        mean = self.n * self.mean_input_rate * self.dt / 1000.0
        return min(self.n, math.ceil(mean + 4.0 * math.sqrt(mean) + 2.0))

    @property
    def spike_block(self) -> int:
        """Spiking target neurons handled per vectorised block and step (none dropped)."""
        if self.max_spikes is not None:
            return min(self.max_spikes, self.n)
        # Up to ~1 s^2 target spikes per step (40 Hz once the map has formed), bursty;
        # mean + 3 sd + 1 leaves the exact further blocks to rare bursts.
        mean = 1.0 * self.scale**2
        return min(self.n, math.ceil(mean + 3.0 * math.sqrt(mean) + 1.0))

    @property
    def spike_heads(self) -> tuple[int, int]:
        """Spiking inputs and targets delivered and learnt from before the rest of the blocks.

        A step's spiking neurons are found in blocks of :attr:`input_block` and
        :attr:`spike_block` entries, sized for the busiest steps (a formed map fires at about
        40 Hz). Delivery and STDP handle the first ``spike_head`` targets (default 16) and
        all the block's inputs (whose rate does not grow), and the rest of the target block
        only in a step with more spiking targets: a quiet step (the first seconds of a large
        map fire at about 5 Hz) then costs about half as much as with whole blocks at scale 7,
        a busy one no more. Results are the same for every head (up to the order of the
        floating-point sums of the delivery).
        """
        head = 16 if self.spike_head is None else self.spike_head
        return self.input_block, min(head, self.spike_block)

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
        return TopographicState(
            afferent=afferent,
            neurons=self.neuron.init(self.n, key=k_v),
            pre_trace=jnp.zeros(2 * self.n),
            post_trace=jnp.zeros(self.n),
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

    def _stimulus(self, key: PRNGKeyArray) -> tuple[Array, Array, Array]:
        """One interval's stimulus: its centre, ``r dt`` per input, and the hash seeds."""
        k_centre, k_bits = jr.split(key)
        centre = jr.randint(k_centre, (2,), 0, BLOCK, dtype=jnp.int32)
        rate_dt = self.input_rates(centre) * jnp.float32(self.dt / 1000.0)
        return centre, rate_dt, jr.bits(k_bits, (2,), jnp.uint32)

    def _next_input_spike(self, seeds, rate_dt, step, index):
        """Step of the next spike of inputs ``index`` after step ``step`` (``-1``: the
        interval's start). Counter ``(step + 1) * n + index``: one draw per input and step."""
        counter = (step + 1).astype(jnp.uint32) * jnp.uint32(self.n) + index.astype(jnp.uint32)
        return step + 1 + _geometric(_hash(counter, seeds), rate_dt)

    def input_spikes(self, key: PRNGKeyArray) -> tuple[Array, Array]:
        """One stimulus interval of input spikes, ``bool[steps, n]``, and the stimulus centre.

        The same draws as :meth:`run` makes from this key (as a dense array: for tests and
        plots; :meth:`run` never forms it).
        """
        centre, rate_dt, seeds = self._stimulus(key)
        index = jnp.arange(self.n, dtype=jnp.int32)
        first = self._next_input_spike(seeds, rate_dt, jnp.int32(-1), index)

        def step(next_spike, k):
            spikes = next_spike == k
            later = self._next_input_spike(seeds, rate_dt, k, index)
            return jnp.where(spikes, later, next_spike), spikes

        _, spikes = lax.scan(step, first, jnp.arange(self.steps_per_interval, dtype=jnp.int32))
        return spikes, centre

    # -- one step ------------------------------------------------------------------------------
    def _trace_scale(self, k) -> tuple[Array, Array]:
        """``exp(-(k + 1) dt / tau)`` for the pre- and postsynaptic traces after step ``k``
        of an interval: a trace is held divided by it within the interval."""
        stdp = self.stdp
        assert stdp is not None
        elapsed = (k + 1).astype(jnp.float32) * jnp.float32(-self.dt)
        return jnp.exp(elapsed / stdp.tau_plus), jnp.exp(elapsed / stdp.tau_minus)

    def _step(self, carry: _Interval, k, rate_dt, seeds, axis_name, phases, replay):
        """Step ``k`` of an interval: the target layer, then delivery, STDP and bookkeeping of
        this step's spikes, visiting the spiking neurons only.

        ``phases`` (static) and ``replay`` exist for the phase profile of
        ``benchmarks/topomap.py``: a phase left out of ``phases`` is skipped, and with
        ``replay`` (a ``_Spikes`` of a recorded run) the recorded spikes drive delivery, STDP
        and bookkeeping, so that every variant of the profile does the same work downstream;
        the input and neuron phases still run (their spike counts go into
        ``overflow_steps``, to keep them alive). Returns the new carry and this step's
        ``_Spikes``.
        """
        n = self.n
        neurons = carry.neurons
        live = jnp.zeros((), jnp.int32)
        if "neurons" in phases:
            neurons, z = self.neuron.step(neurons, jnp.zeros_like(neurons.g), dt=self.dt)
            target = z > 0.5
            target_events, target_count = compact_spikes(target, self.spike_block)
            live = live + target_count + target_events[0]
        if "input" in phases:
            inputs = carry.input_next == k
            in_events, in_count = compact_spikes(inputs, self.input_block)
            live = live + in_count + in_events[0]
        if replay is not None:
            (inputs, in_events, in_count), (target, target_events, target_count) = replay
        spikes = _Spikes((inputs, in_events, in_count), (target, target_events, target_count))
        masks = (inputs, target)
        firsts = (in_events, target_events)
        counts = (in_count, target_count)

        aff = carry.afferent
        weight, g, pre_trace, post_trace, input_next, input_count, target_count = (
            _deliver_and_learn(
                self,
                k,
                (masks, firsts, counts),
                aff,
                neurons.g,
                carry,
                rate_dt,
                seeds,
                stdp=self.stdp if "stdp" in phases else None,
                deliver="delivery" in phases,
                draw_inputs="input" in phases,
                n_post=n,
                heads=self.spike_heads,
                axis_name=axis_name,
            )
        )
        neurons = neurons._replace(g=g)
        over = (in_count > self.input_block) | (counts[1] > self.spike_block)
        if replay is not None:
            over = over.astype(jnp.int32) + live
        carry = carry._replace(
            afferent=eqx.tree_at(lambda c: c.synapses["weight"], aff, weight),
            neurons=neurons,
            pre_trace=pre_trace,
            post_trace=post_trace,
            input_next=input_next,
            input_count=input_count,
            target_count=target_count,
            overflow_steps=carry.overflow_steps + over.astype(jnp.int32),
        )
        return carry, spikes

    def rewire(
        self, state: TopographicState, key: PRNGKeyArray, *, axis_name: str | None = None
    ) -> tuple[TopographicState, RewiringCounts]:
        """One rewiring update of both projections (:func:`bamford_rewire`)."""
        afferent, counts = self._rewire(state.afferent, key, axis_name)
        return state._replace(afferent=afferent), counts

    def _rewire(self, afferent, key, axis_name, index=True):
        """:func:`bamford_rewire` with the model's parameters; ``index=False`` (profiling
        only) skips the upkeep of the column view, which is then stale."""
        args = dict(
            side=self.side,
            sources=self.sources,
            weight_threshold=self.weight_threshold,
            p_elim_depressed=self.p_elim_depressed,
            p_elim_potentiated=self.p_elim_potentiated,
            new_weight=self.g_max,
            axis_name=axis_name,
        )
        if index:
            return bamford_rewire(afferent, key, **args)
        column = afferent.column
        afferent = eqx.tree_at(lambda c: c.column, afferent, None, is_leaf=lambda x: x is None)
        afferent, counts = _bamford_rewire(afferent, key, **args)
        afferent = eqx.tree_at(lambda c: c.column, afferent, column, is_leaf=lambda x: x is None)
        return afferent, counts

    # -- a chunk of stimulus intervals ---------------------------------------------------------
    def _interval(
        self,
        state: TopographicState,
        record: ChunkRecord,
        rewiring: bool,
        axis_name,
        phases=PHASES,
        replay=None,
        record_spikes: bool = False,
    ) -> tuple[tuple[TopographicState, ChunkRecord], _Spikes | None]:
        """One stimulus interval: a new stimulus, then ``rewirings_per_interval`` periods of
        ``steps_per_rewiring`` steps, each followed by a rewiring update. ``phases`` and
        ``replay`` (``_Spikes`` with leading axes ``[periods, steps]``) as in :meth:`_step`;
        ``record_spikes`` also returns the steps' spikes with the same leading axes."""
        key, k_input, k_rewire = jr.split(state.key, 3)
        if "input" in phases:
            _, rate_dt, seeds = self._stimulus(k_input)
            index = jnp.arange(self.n, dtype=jnp.int32)
            input_next = self._next_input_spike(seeds, rate_dt, jnp.int32(-1), index)
        else:
            rate_dt, seeds = None, None
            input_next = jnp.zeros(self.n, jnp.int32)
        carry = _Interval(
            afferent=state.afferent,
            neurons=state.neurons,
            pre_trace=state.pre_trace,
            post_trace=state.post_trace,
            input_next=input_next,
            input_count=record.input_spikes,
            target_count=record.target_spikes,
            overflow_steps=record.overflow_steps,
            rewiring=record.rewiring,
        )
        steps = self.steps_per_rewiring

        def step(carry, xs):
            k, spikes = xs
            carry, spikes = self._step(carry, k, rate_dt, seeds, axis_name, phases, spikes)
            return carry, spikes if record_spikes else None

        def period(carry, xs):
            p, key, spikes = xs
            ks = p * steps + jnp.arange(steps, dtype=jnp.int32)
            carry, out = lax.scan(step, carry, (ks, spikes))
            if rewiring and "rewiring" in phases:
                # The update writes the projection in place, after the steps' reads of it;
                # XLA copies the projection unless the writes depend on those reads. Without
                # STDP only the conductances do, so the key is made to depend on them (the
                # value folded in is a NaN test: always 0).
                nan = carry.neurons.g[0] != carry.neurons.g[0]
                key = jr.fold_in(key, nan.astype(jnp.uint32))
                afferent, counts = self._rewire(
                    carry.afferent, key, axis_name, index="index" in phases
                )
                carry = carry._replace(afferent=afferent, rewiring=carry.rewiring + counts)
            return carry, out

        periods = self.rewirings_per_interval
        xs = (jnp.arange(periods, dtype=jnp.int32), jr.split(k_rewire, periods), replay)
        carry, spikes = lax.scan(period, carry, xs)
        pre_trace, post_trace = carry.pre_trace, carry.post_trace
        if self.stdp is not None and "stdp" in phases:  # back to the true traces
            scale_x, scale_y = self._trace_scale(jnp.int32(self.steps_per_interval - 1))
            pre_trace, post_trace = pre_trace * scale_x, post_trace * scale_y
        state = TopographicState(
            afferent=carry.afferent,
            neurons=carry.neurons,
            pre_trace=pre_trace,
            post_trace=post_trace,
            key=key,
            step=state.step + self.steps_per_interval,
        )
        record = ChunkRecord(
            input_spikes=carry.input_count,
            target_spikes=carry.target_count,
            rewiring=carry.rewiring,
            overflow_steps=carry.overflow_steps,
        )
        return (state, record), spikes

    def run(
        self,
        state: TopographicState,
        *,
        num_intervals: int,
        rewiring: bool = True,
        axis_name: str | None = None,
    ) -> tuple[TopographicState, ChunkRecord]:
        """Simulates ``num_intervals`` stimulus intervals (static), all on the device.

        A ``lax.scan`` over stimulus intervals (new stimulus, first input spikes), each a
        scan over rewiring periods (``steps_per_rewiring`` steps, then :meth:`rewire`). Jit it
        (``eqx.filter_jit``) and ``vmap`` it over a batch of states for several seeds, naming
        the batch axis: ``jax.vmap(partial(model.run, num_intervals=k, axis_name="seeds"),
        axis_name="seeds")``. The rare loops over a second block of spikes or of rewiring
        changes then run while any network needs them, instead of selecting per network
        (which copies every network's projection each time one network needs a second
        block). Without ``axis_name`` the results are the same.

        Args:
            state: the state.
            num_intervals: number of stimulus intervals (static).
            rewiring: False to freeze the structure (STDP only).
            axis_name: the name of the ``vmap`` axis over networks, if any (static).

        Returns:
            ``(state, record)``: the new state and the counters of this chunk.
        """
        if not isinstance(num_intervals, int) or num_intervals < 1:
            raise ValueError(f"num_intervals: expected a positive int, got {num_intervals!r}")
        record = ChunkRecord(
            input_spikes=jnp.zeros(self.n, jnp.int32),
            target_spikes=jnp.zeros(self.n, jnp.int32),
            rewiring=RewiringCounts.zeros(2, self.side),
            overflow_steps=jnp.zeros((), jnp.int32),
        )

        def interval(carry, _):
            carry, _ = self._interval(*carry, rewiring, axis_name)
            return carry, None

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
                # Named batch axis: the rare extra loops run while any network needs them,
                # with no per-network select (which would copy every projection).
                fn = jax.vmap(
                    lambda s: model.run(s, num_intervals=num_intervals, axis_name="seeds"),
                    axis_name="seeds",
                )
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
