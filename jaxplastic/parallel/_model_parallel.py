"""Model-parallel topographic maps: the target neurons, and the synapses onto them, split over
devices.

Device ``d`` of ``D`` owns the contiguous block of target neurons ``[d n/D, (d+1) n/D)`` (``n``
per layer) and the input neurons with the same indices. It holds:

- its targets' neuron state, postsynaptic traces and column view;
- every presynaptic row (all ``2n``: the inputs, then the targets), restricted to the slots
  whose target it owns (targets numbered locally, ``[0, n/D)``), with the full row capacity;
- its inputs' next-spike steps;
- a copy of the presynaptic traces (``[2n]``) and of the PRNG key.

Each step every device updates its neurons and inputs, and one all-gather exchanges the
step's spikes (one bit per input and target neuron). From then on every device sees the
same global spike lists (compacted in the same order as on one device), delivers and depresses
the spiking rows' slots that it owns, potentiates its spiking targets' columns, and updates the
presynaptic traces identically. Every float operation on a synapse or a neuron is the one the
single-device model performs, in the same order, so spikes, weights and traces are equal.

Rewiring is exact too. The attempts of an update (rows, candidate targets, uniforms) come from
a counter-based hash of the replicated key, so every device draws all of them. The device that
owns a candidate looks it up in its row; one ``psum`` shares, for every attempt, whether the
candidate is connected and with which weight, and every device then takes the same
elimination and formation decisions as one device. Refusals depend on the whole row's length
(its slots are spread over devices) and on the column: after the eliminations a second
``psum`` gives both for every attempt, every device runs the same greedy acceptance in attempt
order, and applies the changes to the synapses it owns. The slots a synapse occupies differ
from one device's (rows are split), but the synapses, their weights, the column contents and
every count are the same.

Per step a device does 1/D of the neuron and input work and of the column (potentiation)
work, but every device scans the spike lists and gathers the spiking rows' slots, and the
rewiring decisions are replicated.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .._connectivity import ColumnView, RaggedConnectivity
from .._custom_types import Array, Float, Int, PRNGKeyArray, UInt32
from .._neurons import ConductanceLIFState
from .._structural import _add, _remove_slots
from ..models._topographic import (
    ChunkRecord,
    RewiringCounts,
    TopographicMap,
    TopographicState,
    _decide,
    _deliver_and_learn,
    _distance_bins,
    _draw_attempts,
    _earlier_same,
)
from ..plasticity.stdp import (
    _after_first_blocks,
    compact_spikes,
)

__all__ = ["ShardedAfferent", "ShardedTopographicMap", "ShardedTopographicState"]


class ShardedAfferent(NamedTuple):
    """The afferent projection split by target neuron: device ``d``'s part at index ``d``.

    Attributes:
        post: ``int32[D, 2n, cap]``: for every presynaptic row, the local index (in
            ``[0, n/D)``) of each slot's target, sentinel ``n/D`` for a slot that device ``d``
            does not use.
        weight: ``float32[D, 2n, cap]``, 0 in unused slots.
        pre_slot: ``int32[D, n/D, colcap]``: the column view of device ``d``'s targets (flat
            slot indices into its ``[2n, cap]`` rows).
        position: ``int32[D, 2n, cap]``: where each slot sits in its column.
        free_bits: ``uint32[D, n/D, ceil(colcap / 32)]``: the packed free entries of device
            ``d``'s columns (see :class:`~jaxplastic.ColumnView`).
    """

    post: Int[Array, "devices n2 cap"]
    weight: Float[Array, "devices n2 cap"]
    pre_slot: Int[Array, "devices local colcap"]
    position: Int[Array, "devices n2 cap"]
    free_bits: UInt32[Array, "devices local colwords"]


class ShardedTopographicState(NamedTuple):
    """A :class:`~jaxplastic.models.TopographicState` split over devices by target neuron.

    Attributes:
        afferent: :class:`ShardedAfferent`, sharded on its leading (device) axis.
        neurons: target-layer state, ``[n]`` arrays sharded in blocks of ``n/D``.
        pre_trace: ``[2n]`` presynaptic traces, replicated.
        post_trace: ``[n]`` postsynaptic traces, sharded.
        key: PRNG key, replicated.
        step: steps simulated, replicated.
    """

    afferent: ShardedAfferent
    neurons: ConductanceLIFState
    pre_trace: Float[Array, " n2"]
    post_trace: Float[Array, " n"]
    key: PRNGKeyArray
    step: Int[Array, ""]


def _split_afferent(afferent: RaggedConnectivity, devices: int, column_capacity: int):
    """Host side: the per-device parts of a single-device afferent projection."""
    post = np.asarray(afferent.post)
    weight = np.asarray(afferent.weight)
    n = afferent.n_post
    local = n // devices
    parts = []
    for d in range(devices):
        own = (post >= d * local) & (post < (d + 1) * local)
        part = RaggedConnectivity(
            jnp.asarray(np.where(own, post - d * local, local).astype(post.dtype)),
            {"weight": jnp.asarray(np.where(own, weight, 0).astype(weight.dtype))},
            None,
            local,
        ).with_column_view(column_capacity)
        parts.append(part)
    return ShardedAfferent(
        post=np.stack([np.asarray(p.post) for p in parts]),
        weight=np.stack([np.asarray(p.weight) for p in parts]),
        pre_slot=np.stack([np.asarray(p.column.pre_slot) for p in parts]),
        position=np.stack([np.asarray(p.column.position) for p in parts]),
        free_bits=np.stack([np.asarray(p.column.free_bits) for p in parts]),
    )


def _join_afferent(afferent: ShardedAfferent, n: int, column_capacity: int) -> RaggedConnectivity:
    """Host side: one projection holding every device's synapses, each row's synapses in
    ascending target order in its first slots (the single-device slots are not kept)."""
    post = np.asarray(afferent.post)  # [D, 2n, cap]
    weight = np.asarray(afferent.weight)
    devices, n2, cap = post.shape
    local = n // devices
    offset = (np.arange(devices) * local)[:, None, None]
    live = post != local
    target = np.where(live, post + offset, n).transpose(1, 0, 2).reshape(n2, devices * cap)
    value = np.where(live, weight, 0).transpose(1, 0, 2).reshape(n2, devices * cap)
    order = np.argsort(target, axis=1, kind="stable")[:, :cap]
    target = np.take_along_axis(target, order, axis=1)
    value = np.take_along_axis(value, order, axis=1)
    conn = RaggedConnectivity(
        jnp.asarray(target.astype(post.dtype)), {"weight": jnp.asarray(value)}, None, n
    )
    return conn.with_column_view(column_capacity)


class ShardedTopographicMap(eqx.Module):
    """A :class:`~jaxplastic.models.TopographicMap` simulated on the devices of a mesh axis,
    split by target neuron, with the single-device model's spikes and connectivity.

    Build the state with :meth:`init` (the same network as ``model.init(key)``) or
    :meth:`shard` (any single-device state), simulate with :meth:`run` (the same signature
    and record as ``model.run``), and gather it back with :meth:`unshard` for the metrics of
    :mod:`jaxplastic.models`. See the module docstring for what each device holds and does.

    Attributes:
        model: the single-device model (every parameter).
        mesh: the device mesh.
        axis: the mesh axis whose devices split the target layer; ``n`` must be divisible by
            its size.

    Example:
        >>> import jax, jax.random as jr
        >>> from jaxplastic.models import TopographicMap
        >>> from jaxplastic.parallel import data_mesh
        >>> sharded = ShardedTopographicMap(TopographicMap(scale=1),
        ...                                 data_mesh(axis="model"), axis="model")
        >>> state = sharded.init(jr.key(0))
        >>> state, record = sharded.run(state, num_intervals=1)   # 20 ms of model time
        >>> single = sharded.unshard(state)   # a TopographicState, for the metrics
    """

    model: TopographicMap
    mesh: Mesh = eqx.field(static=True)
    axis: str = eqx.field(static=True, default="model")

    def __check_init__(self):
        if not isinstance(self.model, TopographicMap):
            raise TypeError(
                "ShardedTopographicMap: model: expected a TopographicMap, got "
                f"{type(self.model).__name__}"
            )
        if not isinstance(self.mesh, Mesh):
            raise TypeError(
                "ShardedTopographicMap: mesh: expected a jax.sharding.Mesh, got "
                f"{type(self.mesh).__name__}"
            )
        if self.axis not in self.mesh.shape:
            raise ValueError(
                f"ShardedTopographicMap: axis: expected one of the mesh axes "
                f"{tuple(self.mesh.shape)}, got {self.axis!r}"
            )
        if self.model.n % self.devices:
            raise ValueError(
                f"ShardedTopographicMap: the {self.model.n} target neurons are not divisible by "
                f"the {self.devices} devices of mesh axis {self.axis!r}"
            )

    @property
    def devices(self) -> int:
        """Number of devices on the axis."""
        return self.mesh.shape[self.axis]

    @property
    def local(self) -> int:
        """Target (and input) neurons per device."""
        return self.model.n // self.devices

    # -- placement -----------------------------------------------------------------------------
    def _specs(self) -> ShardedTopographicState:
        split, same = PartitionSpec(self.axis), PartitionSpec()
        return ShardedTopographicState(
            afferent=ShardedAfferent(split, split, split, split, split),
            neurons=ConductanceLIFState(split, split, split),
            pre_trace=same,
            post_trace=split,
            key=same,
            step=same,
        )

    def shard(self, state: TopographicState) -> ShardedTopographicState:
        """Splits a single-device state over the devices (eager, on the host).

        Args:
            state: a :class:`~jaxplastic.models.TopographicState` of ``model`` (not batched).

        Returns:
            The :class:`ShardedTopographicState`, placed on the mesh.
        """
        model = self.model
        if state.afferent.post.shape != (2 * model.n, model.capacity):
            raise ValueError(
                f"ShardedTopographicMap.shard: state: expected afferent slots "
                f"{(2 * model.n, model.capacity)}, got {state.afferent.post.shape}"
            )
        sharded = ShardedTopographicState(
            afferent=_split_afferent(state.afferent, self.devices, model.in_degree_limit),
            neurons=state.neurons,
            pre_trace=state.pre_trace,
            post_trace=state.post_trace,
            key=state.key,
            step=state.step,
        )
        return jax.tree.map(
            lambda x, spec: jax.device_put(x, NamedSharding(self.mesh, spec)),
            sharded,
            self._specs(),
        )

    def init(self, key: PRNGKeyArray) -> ShardedTopographicState:
        """The network of ``model.init(key)``, split over the devices."""
        return self.shard(self.model.init(key))

    def unshard(self, state: ShardedTopographicState) -> TopographicState:
        """Gathers a sharded state into one single-device
        :class:`~jaxplastic.models.TopographicState` (host side).

        The synapses, weights, neuron state and traces are those of the sharded state; each
        row's synapses are placed in ascending target order (slot positions are not
        meaningful, see the module docstring).
        """
        model = self.model
        return TopographicState(
            afferent=_join_afferent(state.afferent, model.n, model.in_degree_limit),
            neurons=jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), state.neurons),
            pre_trace=jnp.asarray(np.asarray(state.pre_trace)),
            post_trace=jnp.asarray(np.asarray(state.post_trace)),
            key=state.key,
            step=jnp.asarray(np.asarray(state.step)),
        )

    # -- simulation ----------------------------------------------------------------------------
    def run(
        self, state: ShardedTopographicState, *, num_intervals: int, rewiring: bool = True
    ) -> tuple[ShardedTopographicState, ChunkRecord]:
        """Simulates ``num_intervals`` stimulus intervals (static) on the devices.

        The same as ``model.run`` on the unsharded state: the returned state
        :meth:`unshard`-s to ``model.run``'s (up to slot positions), and the record is equal
        (``input_spikes`` and ``target_spikes`` sharded ``[n]`` arrays, the rest replicated).

        Args:
            state: from :meth:`init`, :meth:`shard` or a previous :meth:`run`.
            num_intervals: number of stimulus intervals (static).
            rewiring: False to freeze the structure (STDP only).

        Returns:
            ``(state, record)``.
        """
        if not isinstance(num_intervals, int) or num_intervals < 1:
            raise ValueError(f"num_intervals: expected a positive int, got {num_intervals!r}")
        return _run(self, state, num_intervals, rewiring)

    def rewire(
        self, state: ShardedTopographicState, key: PRNGKeyArray
    ) -> tuple[ShardedTopographicState, RewiringCounts]:
        """One rewiring update of both projections: ``model.rewire`` on the devices (the same
        synapses and counts; see the module docstring)."""
        return _rewire_sharded(self, state, key)


@eqx.filter_jit
def _run(sharded: ShardedTopographicMap, state, num_intervals: int, rewiring: bool):
    specs = sharded._specs()
    record_specs = ChunkRecord(
        input_spikes=PartitionSpec(sharded.axis),
        target_spikes=PartitionSpec(sharded.axis),
        rewiring=PartitionSpec(),
        overflow_steps=PartitionSpec(),
    )

    def local(state):
        return _run_local(sharded, state, num_intervals, rewiring)

    # check_vma=False: the scans mix replicated and per-device values; the replicated outputs
    # are computed identically on every device (tests compare them with one device).
    return jax.shard_map(
        local,
        mesh=sharded.mesh,
        in_specs=(specs,),
        out_specs=(specs, record_specs),
        check_vma=False,
    )(state)


@eqx.filter_jit
def _rewire_sharded(sharded: ShardedTopographicMap, state, key):
    specs = sharded._specs()

    def local(state, key):
        offset = lax.axis_index(sharded.axis).astype(jnp.int32) * sharded.local
        conn = _local_conn(state.afferent, sharded.local)
        conn, counts = _rewire(sharded.model, conn, key, sharded.axis, offset)
        return state._replace(afferent=_sharded_afferent(conn)), counts

    return jax.shard_map(
        local,
        mesh=sharded.mesh,
        in_specs=(specs, PartitionSpec()),
        out_specs=(specs, PartitionSpec()),
        check_vma=False,
    )(state, key)


def _local_conn(afferent: ShardedAfferent, local: int) -> RaggedConnectivity:
    """This device's ``[1, ...]`` block of the afferent projection, as a projection."""
    return RaggedConnectivity(
        afferent.post[0],
        {"weight": afferent.weight[0]},
        ColumnView(
            pre_slot=afferent.pre_slot[0],
            position=afferent.position[0],
            free_bits=afferent.free_bits[0],
        ),
        local,
    )


def _sharded_afferent(conn: RaggedConnectivity) -> ShardedAfferent:
    return ShardedAfferent(
        post=conn.post[None],
        weight=conn.weight[None],
        pre_slot=conn.column.pre_slot[None],
        position=conn.column.position[None],
        free_bits=conn.column.free_bits[None],
    )


class _Carry(NamedTuple):
    """What the steps of one stimulus interval carry, on one device."""

    conn: RaggedConnectivity  # [2n, cap] rows restricted to this device's targets
    neurons: ConductanceLIFState  # [local]
    pre_trace: Array  # [2n], scaled (TopographicMap._trace_scale)
    post_trace: Array  # [local], scaled
    input_next: Array  # [local]
    input_count: Array  # [local]
    target_count: Array  # [local]
    overflow_steps: Array
    rewiring: RewiringCounts


def _run_local(sharded: ShardedTopographicMap, state: ShardedTopographicState, num_intervals, rw):
    model, axis = sharded.model, sharded.axis
    local = sharded.local
    offset = lax.axis_index(axis).astype(jnp.int32) * local
    conn = _local_conn(state.afferent, local)
    record = ChunkRecord(
        input_spikes=jnp.zeros(local, jnp.int32),
        target_spikes=jnp.zeros(local, jnp.int32),
        rewiring=RewiringCounts.zeros(2, model.side),
        overflow_steps=jnp.zeros((), jnp.int32),
    )
    inner = (conn, state.neurons, state.pre_trace, state.post_trace, state.key, state.step)

    def interval(carry, _):
        return _interval(model, axis, local, offset, carry, rw), None

    (inner, record), _ = lax.scan(interval, (inner, record), None, length=num_intervals)
    conn, neurons, pre_trace, post_trace, key, step = inner
    out = ShardedTopographicState(
        _sharded_afferent(conn), neurons, pre_trace, post_trace, key, step
    )
    return out, record


def _to_local(index, offset, local):
    """Global neuron indices -> this device's local indices, sentinel ``local`` elsewhere."""
    mine = (index >= offset) & (index < offset + local)
    return jnp.where(mine, index - offset, local)


def _interval(model: TopographicMap, axis, local, offset, carry, rewiring):
    """One stimulus interval on one device: the counterpart of ``TopographicMap._interval``,
    with the same key splits and the same order of operations."""
    (conn, neurons, pre_trace, post_trace, key, step_count), record = carry
    key, k_input, k_rewire = jr.split(key, 3)
    _, rate_dt, seeds = model._stimulus(k_input)
    rate_dt = lax.dynamic_slice_in_dim(rate_dt, offset, local)
    index = offset + jnp.arange(local, dtype=jnp.int32)
    input_next = model._next_input_spike(seeds, rate_dt, jnp.int32(-1), index)
    inner = _Carry(
        conn=conn,
        neurons=neurons,
        pre_trace=pre_trace,
        post_trace=post_trace,
        input_next=input_next,
        input_count=record.input_spikes,
        target_count=record.target_spikes,
        overflow_steps=record.overflow_steps,
        rewiring=record.rewiring,
    )
    steps = model.steps_per_rewiring

    def step(c, k):
        return _step(model, axis, local, offset, c, k, rate_dt, seeds), None

    def period(c, xs):
        p, key = xs
        c, _ = lax.scan(step, c, p * steps + jnp.arange(steps, dtype=jnp.int32))
        if rewiring:
            nan = c.neurons.g[0] != c.neurons.g[0]  # as on one device: always False
            key = jr.fold_in(key, nan.astype(jnp.uint32))
            conn, counts = _rewire(model, c.conn, key, axis, offset)
            c = c._replace(conn=conn, rewiring=c.rewiring + counts)
        return c, None

    periods = model.rewirings_per_interval
    inner, _ = lax.scan(
        period, inner, (jnp.arange(periods, dtype=jnp.int32), jr.split(k_rewire, periods))
    )
    pre_trace, post_trace = inner.pre_trace, inner.post_trace
    if model.stdp is not None:  # back to the true traces
        scale_x, scale_y = model._trace_scale(jnp.int32(model.steps_per_interval - 1))
        pre_trace, post_trace = pre_trace * scale_x, post_trace * scale_y
    state = (
        inner.conn,
        inner.neurons,
        pre_trace,
        post_trace,
        key,
        step_count + model.steps_per_interval,
    )
    record = ChunkRecord(
        input_spikes=inner.input_count,
        target_spikes=inner.target_count,
        rewiring=inner.rewiring,
        overflow_steps=inner.overflow_steps,
    )
    return state, record


def _step(model: TopographicMap, axis, local, offset, carry: _Carry, k, rate_dt, seeds):
    """Step ``k`` of an interval on one device (``TopographicMap._step`` without the
    profiling options): local neurons and inputs, one all-gather of the spikes, then
    delivery, STDP and bookkeeping of the slots and neurons this device owns."""
    n = model.n
    neurons, z = model.neuron.step(carry.neurons, jnp.zeros_like(carry.neurons.g), dt=model.dt)
    mine = jnp.concatenate([carry.input_next == k, z > 0.5])  # [2 local]
    spikes = lax.all_gather(mine, axis).reshape(-1, 2, local)  # [D, 2, local]
    inputs = spikes[:, 0].reshape(n)
    target = spikes[:, 1].reshape(n)
    in_events, num_in = compact_spikes(inputs, model.input_block)
    target_events, num_target = compact_spikes(target, model.spike_block)
    masks = (inputs, target)
    firsts = (in_events, target_events)
    counts = (num_in, num_target)

    weight, g, pre_trace, post_trace, input_next, input_count, target_count = _deliver_and_learn(
        model,
        k,
        (masks, firsts, counts),
        carry.conn,
        neurons.g,
        carry,
        rate_dt,
        seeds,
        stdp=model.stdp,
        deliver=True,
        draw_inputs=True,
        n_post=local,
        heads=None,
        axis_name=None,
        to_local=lambda index: _to_local(index, offset, local),
    )
    neurons = neurons._replace(g=g)
    over = (num_in > model.input_block) | (num_target > model.spike_block)
    return carry._replace(
        conn=eqx.tree_at(lambda c: c.synapses["weight"], carry.conn, weight),
        neurons=neurons,
        pre_trace=pre_trace,
        post_trace=post_trace,
        input_next=input_next,
        input_count=input_count,
        target_count=target_count,
        overflow_steps=carry.overflow_steps + over.astype(jnp.int32),
    )


def _greedy(form, rows, targets, room_row, room_col):
    """Which proposals a sequential pass in attempt order accepts: proposal ``a`` is
    accepted when its row and its column still have room after the accepted earlier ones
    (``_add``'s rule). Iterated to its fixed point, which is unique because each decision
    depends only on earlier ones (usually one or two rounds)."""
    same_row = _earlier_same(rows)
    same_col = _earlier_same(targets)

    def decide(accepted):
        before_row = jnp.sum(same_row & accepted[None, :], axis=1, dtype=jnp.int32)
        before_col = jnp.sum(same_col & accepted[None, :], axis=1, dtype=jnp.int32)
        return form & (before_row < room_row) & (before_col < room_col)

    def changed(state):
        return jnp.any(state[0] != state[1])

    def again(state):
        return state[1], decide(state[1])

    first = decide(form)
    return lax.while_loop(changed, again, (form, first))[1]


def _rewire(
    model: TopographicMap, conn: RaggedConnectivity, key, axis, offset, max_changes: int = 32
):
    """One rewiring update of both projections on one device: the decisions of
    :func:`~jaxplastic.models.bamford_rewire`, shared with two ``psum``-s, and the changes to
    the synapses this device owns."""
    n, side, sources = model.n, model.side, model.sources
    local = conn.n_post
    m = sum(source.attempts for source in sources)
    # The attempts, drawn as bamford_rewire draws them (every device draws all).
    rows, targets, uniform, source_of = _draw_attempts(key, sources, n, conn.n_pre)

    # The owner of each candidate looks it up in its row; one psum shares the result.
    cap = conn.capacity
    lane = jnp.arange(cap, dtype=jnp.int32)
    mine = _to_local(targets, offset, local)
    owned = mine < local
    slot = jnp.min(jnp.where(conn.post[rows] == mine[:, None], lane, cap), axis=1)
    found = owned & (slot < cap)
    slot = jnp.minimum(slot, cap - 1)
    weight = jnp.where(found, conn.weight.reshape(-1)[rows * cap + slot], 0)
    found_all, weight = lax.psum((found.astype(jnp.int32), weight), axis)
    connected = found_all > 0

    p_elim = jnp.where(weight < model.weight_threshold, model.p_elim_depressed,
                       model.p_elim_potentiated)  # fmt: skip
    eliminate, form, hist_index = _decide(
        rows, targets, uniform, source_of, connected, p_elim, sources, side
    )
    bins = _distance_bins(side)
    hist_size = len(sources) * bins

    # Eliminations: each device removes those it owns, in blocks of the first few.
    block = min(m, max_changes)

    def remove(blocks, conn):
        (a,) = blocks
        safe = jnp.minimum(a, m - 1)
        return _remove_slots(conn, rows[safe], slot[safe], a < m)[0]

    mask = eliminate & owned
    index, count = compact_spikes(mask, block)
    conn = _after_first_blocks((mask,), (index,), (count,), remove, remove((index,), conn))

    # Formations, a block of proposals (in attempt order) at a time: the room left in each
    # proposal's whole row and column (one psum), the greedy acceptance in attempt order,
    # then each device adds those it owns (they all fit: the greedy checked the whole row).
    values = {"weight": jnp.full((block,), model.g_max, conn.weight.dtype)}
    zeros = jnp.zeros(len(sources) * bins, jnp.int32)

    def add(blocks, carry):
        conn, formed, refused = carry
        (a,) = blocks
        valid = a < m
        safe = jnp.minimum(a, m - 1)
        r, t, here = rows[safe], targets[safe], mine[safe]
        row_length = jnp.sum(conn.post[r] != local, axis=1, dtype=jnp.int32)
        col_free = lax.population_count(conn.column.free_bits[jnp.minimum(here, local - 1)])
        col_length = conn.column.column_capacity - jnp.sum(col_free, axis=1, dtype=jnp.int32)
        row_length, col_length = lax.psum(
            (row_length, jnp.where(here < local, col_length, 0)), axis
        )
        room_col = conn.column.column_capacity - col_length
        accepted = _greedy(valid, r, t, cap - row_length, room_col)
        conn = _add(conn, r, jnp.where(accepted, here, local), values)[0]
        formed = formed.at[hist_index[safe]].add(accepted.astype(jnp.int32))
        return conn, formed, refused + jnp.sum(valid & ~accepted, dtype=jnp.int32)

    index, count = compact_spikes(form, block)
    carry = add((index,), (conn, zeros, jnp.zeros((), jnp.int32)))
    conn, formed, refused = _after_first_blocks((form,), (index,), (count,), add, carry)

    def histogram(counted):
        hist = jnp.zeros(hist_size, jnp.int32).at[hist_index].add(counted.astype(jnp.int32))
        return hist.reshape(len(sources), bins)

    counts = RewiringCounts(
        formed=formed.reshape(len(sources), bins),
        eliminated=histogram(eliminate),
        attempts=jnp.asarray([source.attempts for source in sources], jnp.int32),
        refused=refused,
    )
    return conn, counts
