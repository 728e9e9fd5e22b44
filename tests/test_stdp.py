import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxplastic as jp
from jaxplastic.plasticity import (
    AdditiveSTDP,
    compact_spikes,
    depress_rows,
    depress_rows_reference,
    potentiate_columns,
    potentiate_columns_reference,
)

N_PRE, N_POST, CAP, COL_CAP = 13, 11, 8, 12


def _projection(key, p=0.4, n_pre=N_PRE, n_post=N_POST):
    k_conn, k_w = jr.split(key)
    conn = jp.fixed_probability(
        k_conn,
        n_pre,
        n_post,
        p,
        capacity=CAP,
        weight=lambda k, s, d: jr.uniform(k, s, d, 0.0, 0.2),
        column_capacity=COL_CAP,
    )
    return conn


def _spike_pattern(kind, key, n):
    if kind == "none":
        return jnp.zeros(n)
    if kind == "all":
        return jnp.ones(n)
    return jr.bernoulli(key, 0.3, (n,)).astype(jnp.float32)


def stdp_numpy_loop(conn, pre_trains, post_trains, rule, dt):
    """Plain-loop reference: a dict of synapses, traces as floats, one spike at a time."""
    post = np.asarray(conn.post)
    w = np.asarray(conn.weight).astype(np.float64)
    synapses = [(i, s, int(post[i, s])) for i in range(conn.n_pre) for s in range(conn.capacity)]
    synapses = [(i, s, j) for i, s, j in synapses if j != conn.n_post]
    x = np.zeros(conn.n_pre)
    y = np.zeros(conn.n_post)
    dp, dm = np.exp(-dt / rule.tau_plus), np.exp(-dt / rule.tau_minus)
    for pre_spikes, post_spikes in zip(pre_trains, post_trains, strict=True):
        x *= dp
        y *= dm
        for i in np.flatnonzero(pre_spikes):
            for ii, s, j in synapses:
                if ii == i:
                    w[i, s] = min(rule.w_max, max(rule.w_min, w[i, s] - rule.a_minus * y[j]))
        for j in np.flatnonzero(post_spikes):
            for i, s, jj in synapses:
                if jj == j:
                    w[i, s] = min(rule.w_max, max(rule.w_min, w[i, s] + rule.a_plus * x[i]))
        x += pre_spikes
        y += post_spikes
    return w, x, y


@pytest.mark.parametrize("max_spikes", [1, None])
def test_stdp_matches_a_plain_loop_over_spike_trains(getkey, max_spikes):
    conn = _projection(getkey())
    rule = AdditiveSTDP(a_plus=0.03, a_minus=0.02, w_max=0.2)
    steps, dt = 60, 1.0
    pre_trains = np.asarray(jr.bernoulli(getkey(), 0.25, (steps, N_PRE)), np.float32)
    post_trains = np.asarray(jr.bernoulli(getkey(), 0.25, (steps, N_POST)), np.float32)
    post_trains[5] = 1.0  # a step where every postsynaptic neuron fires
    pre_trains[9] = 1.0  # and one where every presynaptic neuron fires

    @jax.jit
    def run(conn, pre, post):
        def body(carry, spikes):
            conn, traces = carry
            conn, traces = rule.step(conn, traces, *spikes, dt=dt, max_spikes=max_spikes)
            return (conn, traces), None

        return jax.lax.scan(body, (conn, rule.init(N_PRE, N_POST)), (pre, post))[0]

    new, traces = run(conn, jnp.asarray(pre_trains), jnp.asarray(post_trains))
    w_ref, x_ref, y_ref = stdp_numpy_loop(conn, pre_trains, post_trains, rule, dt)
    np.testing.assert_allclose(np.asarray(new.weight), w_ref, atol=2e-6)
    np.testing.assert_allclose(np.asarray(traces.pre), x_ref, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(traces.post), y_ref, rtol=1e-5)
    assert not np.array_equal(w_ref, np.asarray(conn.weight))  # the test exercises the rule
    np.testing.assert_array_equal(np.asarray(new.post), np.asarray(conn.post))
    jp.RaggedConnectivity(new.post, new.synapses, new.column, new.n_post)  # invariants hold


# (spike pattern, spiking rows per block, jit): no spikes, a few, every neuron (the fallback
# loop then runs several blocks), and one case without jit.
CASES = [
    ("none", 4, True),
    ("random", 1, True),
    ("random", 4, True),
    ("all", 4, True),
    ("all", None, True),
    ("random", 3, False),
]


@pytest.mark.parametrize(("kind", "max_spikes", "jit"), CASES)
def test_row_depression_matches_dense_reference(getkey, kind, max_spikes, jit):
    conn = _projection(getkey())
    spikes = _spike_pattern(kind, getkey(), N_PRE)
    trace = jr.uniform(getkey(), (N_POST,), maxval=3.0)

    def f(conn, spikes, trace):
        return depress_rows(
            conn, spikes, trace, a_minus=0.05, w_max=0.2, max_spikes=max_spikes, deliver=True
        )

    new, delivered = (jax.jit(f) if jit else f)(conn, spikes, trace)
    ref, ref_delivered = depress_rows_reference(conn, spikes, trace, a_minus=0.05, w_max=0.2)
    np.testing.assert_allclose(np.asarray(new.weight), np.asarray(ref.weight), atol=1e-7)
    np.testing.assert_allclose(np.asarray(delivered), np.asarray(ref_delivered), atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(delivered), np.asarray(jp.propagate(conn, spikes)), atol=1e-6
    )
    # Only the spiking rows change.
    changed_rows = np.any(np.asarray(new.weight) != np.asarray(conn.weight), axis=1)
    assert not np.any(changed_rows & (np.asarray(spikes) == 0))


@pytest.mark.parametrize(("kind", "max_spikes", "jit"), CASES)
def test_column_potentiation_matches_dense_reference(getkey, kind, max_spikes, jit):
    conn = _projection(getkey())
    spikes = _spike_pattern(kind, getkey(), N_POST)
    trace = jr.uniform(getkey(), (N_PRE,), maxval=3.0)

    def f(conn, spikes, trace):
        return potentiate_columns(
            conn, spikes, trace, a_plus=0.04, w_max=0.2, max_spikes=max_spikes
        )

    new = (jax.jit(f) if jit else f)(conn, spikes, trace)
    ref = potentiate_columns_reference(conn, spikes, trace, a_plus=0.04, w_max=0.2)
    np.testing.assert_allclose(np.asarray(new.weight), np.asarray(ref.weight), atol=1e-7)
    if kind != "none":
        assert not np.array_equal(np.asarray(new.weight), np.asarray(conn.weight))


def test_precomputed_events_and_vmap(getkey):
    keys = jr.split(getkey(), 3)
    conns = jax.vmap(_projection)(keys)
    spikes = jnp.stack(
        [
            _spike_pattern(k, key, N_PRE)
            for k, key in zip(["none", "random", "all"], jr.split(getkey(), 3), strict=True)
        ]
    )
    trace = jr.uniform(getkey(), (3, N_POST), maxval=2.0)

    def f(conn, spikes, trace):
        events, _ = compact_spikes(spikes, 4)
        return depress_rows(
            conn, spikes, trace, a_minus=0.05, w_max=0.2, max_spikes=4, events=events
        )

    batched = jax.jit(jax.vmap(f))(conns, spikes, trace)
    for b in range(3):
        conn_b = jax.tree.map(lambda x, b=b: x[b], conns)
        ref = depress_rows_reference(conn_b, spikes[b], trace[b], a_minus=0.05, w_max=0.2)[0]
        np.testing.assert_allclose(np.asarray(batched.weight[b]), np.asarray(ref.weight), atol=1e-7)


def test_compact_spikes():
    index, count = compact_spikes(jnp.array([0, 1, 0, 1, 1, 0]), 2)
    assert int(count) == 3
    assert set(np.asarray(index).tolist()) <= {1, 3, 4} and len(set(np.asarray(index))) == 2
    index, count = compact_spikes(jnp.zeros(5, bool), 3)
    assert int(count) == 0 and np.all(np.asarray(index) == 5)


def test_errors(getkey):
    conn = _projection(getkey())
    with pytest.raises(ValueError, match="column view"):
        potentiate_columns(
            conn.without_column_view(), jnp.zeros(N_POST), jnp.zeros(N_PRE), a_plus=0.1
        )
    with pytest.raises(ValueError, match="spikes: expected shape"):
        depress_rows(conn, jnp.zeros(N_PRE + 1), jnp.zeros(N_POST), a_minus=0.1)
    with pytest.raises(ValueError, match="max_spikes"):
        depress_rows(conn, jnp.zeros(N_PRE), jnp.zeros(N_POST), a_minus=0.1, max_spikes=0)
    with pytest.raises(ValueError, match="tau_plus"):
        AdditiveSTDP(tau_plus=0.0)
    with pytest.raises(ValueError, match="w_min"):
        AdditiveSTDP(w_min=1.0, w_max=0.0)


def test_events_that_are_not_spiking_rows_are_ignored(getkey):
    conn = _projection(getkey())
    spikes = jnp.zeros(N_PRE).at[jnp.array([2, 5, 7])].set(1.0)
    trace = jr.uniform(getkey(), (N_POST,), maxval=2.0)
    events = jnp.array([0, 5, N_PRE, 1])  # rows 0 and 1 are silent; 2 and 7 are left over
    new, delivered = depress_rows(
        conn, spikes, trace, a_minus=0.05, w_max=0.2, max_spikes=4, events=events, deliver=True
    )
    ref, ref_delivered = depress_rows_reference(conn, spikes, trace, a_minus=0.05, w_max=0.2)
    np.testing.assert_allclose(np.asarray(new.weight), np.asarray(ref.weight), atol=1e-7)
    np.testing.assert_allclose(np.asarray(delivered), np.asarray(ref_delivered), atol=1e-6)


@pytest.mark.parametrize("heads", [(0, 0), (1, 3), (4, 2), (9, 9)])
def test_two_part_processing_visits_every_entry_once(heads):
    # Two first blocks (9 and 5 entries) with various spike counts: every spiking index is
    # handed to `process` exactly once, whatever the heads, alone or under vmap.
    from jaxplastic.plasticity.stdp import _in_two_parts

    n = 40

    def run(mask_a, mask_b, axis_name=None):
        blocks = [compact_spikes(m, size) for m, size in ((mask_a, 9), (mask_b, 5))]
        firsts = tuple(b[0] for b in blocks)
        counts = tuple(b[1] for b in blocks)

        def process(parts, hits):
            a, b = parts
            hits = hits.at[a].add(1, mode="drop")
            return hits.at[b].add(100, mode="drop")

        return _in_two_parts(firsts, counts, heads, process, jnp.zeros(n, jnp.int32), axis_name)

    key_a, key_b = jr.split(jr.key(0))
    masks_a = jr.bernoulli(key_a, jnp.array([0.0, 0.05, 0.2, 0.5])[:, None], (4, n))
    masks_b = jr.bernoulli(key_b, jnp.array([0.5, 0.0, 0.05, 0.1])[:, None], (4, n))
    expected = []
    for mask_a, mask_b in zip(masks_a, masks_b, strict=True):
        # Entries inside the blocks: the first 9 (5) spiking indices.
        want = np.zeros(n, np.int64)
        want[np.flatnonzero(np.asarray(mask_a))[:9]] += 1
        want[np.flatnonzero(np.asarray(mask_b))[:5]] += 100
        expected.append(want)
        np.testing.assert_array_equal(np.asarray(jax.jit(run)(mask_a, mask_b)), want)
    batched = jax.vmap(lambda a, b: run(a, b, "seeds"), axis_name="seeds")(masks_a, masks_b)
    np.testing.assert_array_equal(np.asarray(batched), np.stack(expected))
