import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import given, strategies as st

import jaxplastic as jp
from jaxplastic._connectivity import build_column_view


def _random_dense(rng, n_pre, n_post, density):
    mask = rng.random((n_pre, n_post)) < density
    return np.where(mask, rng.normal(size=(n_pre, n_post)), 0.0).astype(np.float32)


def _column_sets(conn):
    """Column view as {column: set(flat slots)}, independent of order inside a column."""
    pre_slot = np.asarray(conn.column.pre_slot)
    sentinel = conn.n_pre * conn.capacity
    return {j: set(row[row != sentinel].tolist()) for j, row in enumerate(pre_slot)}


@st.composite
def dense_matrices(draw):
    # Few distinct shapes keep compilation (not the property) from dominating the run time.
    n_pre = draw(st.sampled_from([1, 5, 12]))
    n_post = draw(st.sampled_from([1, 7, 12]))
    density = draw(st.sampled_from([0.0, 0.2, 0.6, 1.0]))
    seed = draw(st.integers(0, 2**16))
    return _random_dense(np.random.default_rng(seed), n_pre, n_post, density)


@given(dense_matrices())
def test_from_dense_round_trip(weights):
    conn = jp.from_dense(weights, column_capacity=max(weights.shape[0], 1))
    np.testing.assert_array_equal(np.asarray(conn.to_dense()), weights)
    assert int(conn.num_synapses) == int((weights != 0).sum())
    np.testing.assert_array_equal(np.asarray(conn.row_lengths), (weights != 0).sum(1))
    np.testing.assert_array_equal(np.asarray(conn.column_lengths), (weights != 0).sum(0))


@given(dense_matrices(), st.integers(0, 5))
def test_from_edges_matches_dense(weights, extra_capacity):
    rows, cols = np.nonzero(weights)
    cap = max(int((weights != 0).sum(1).max(initial=0)), 1) + extra_capacity
    perm = np.random.default_rng(0).permutation(len(rows))
    conn = jp.from_edges(
        rows[perm],
        cols[perm],
        weights[rows, cols][perm],
        n_pre=weights.shape[0],
        n_post=weights.shape[1],
        capacity=cap,
    )
    assert conn.capacity == cap
    np.testing.assert_array_equal(np.asarray(conn.to_dense()), weights)


def test_from_edges_extra_variables_follow_their_edges():
    conn = jp.from_edges(
        np.array([1, 0, 1]),
        np.array([2, 1, 0]),
        np.array([0.5, 0.25, 2.0], np.float32),
        n_pre=2,
        n_post=3,
        variables={"trace": np.array([5.0, 6.0, 7.0], np.float32)},
    )
    np.testing.assert_array_equal(
        np.asarray(conn.to_dense("trace")), [[0.0, 6.0, 0.0], [7.0, 0.0, 5.0]]
    )


@pytest.mark.parametrize("autapses", [True, False])
@pytest.mark.parametrize("p", [0.05, 0.3, 1.0])
def test_fixed_probability_statistics(autapses, p):
    n = 300
    conn = jp.fixed_probability(jr.key(3), n, n, p, autapses=autapses)
    dense = np.asarray(conn.to_dense()) != 0
    n_targets = n if autapses else n - 1
    if not autapses:
        assert not np.diag(dense).any()
    lengths = dense.sum(1)
    assert lengths.max() <= conn.capacity
    mean = lengths.mean()
    expected = n_targets * p
    se = np.sqrt(n_targets * p * (1 - p) / n) + 1e-9
    assert abs(mean - expected) < 5 * se
    if p < 1.0:
        sd = np.sqrt(n_targets * p * (1 - p))
        assert 0.75 * sd < lengths.std() < 1.25 * sd
        # Targets are uniform over the columns: compare the column-count spread.
        col = dense.sum(0)
        assert abs(col.mean() - lengths.mean()) < 1e-9
    else:
        assert (lengths == n_targets).all()


def test_fixed_probability_weights_and_padding():
    init = jax.nn.initializers.normal(0.5)
    a = jp.fixed_probability(jr.key(0), 200, 100, 0.1, weight=init)
    b = jp.fixed_probability(jr.key(0), 200, 100, 0.1, weight=init, padding=2.0)
    assert b.capacity == 2 * a.capacity
    np.testing.assert_array_equal(np.asarray(a.to_dense() != 0), np.asarray(b.to_dense() != 0))
    w = np.asarray(a.weight)[np.asarray(a.alive)]
    assert 0.4 < w.std() < 0.6
    assert (np.asarray(a.weight)[~np.asarray(a.alive)] == 0).all()


def test_fixed_probability_is_jittable_and_deterministic():
    f = jax.jit(lambda k: jp.fixed_probability(k, 50, 60, 0.2, capacity=40).post)
    np.testing.assert_array_equal(np.asarray(f(jr.key(1))), np.asarray(f(jr.key(1))))
    assert not np.array_equal(np.asarray(f(jr.key(1))), np.asarray(f(jr.key(2))))


def test_fixed_probability_overflow_is_an_error():
    with pytest.raises(ValueError, match="drew more than capacity=3"):
        jp.fixed_probability(jr.key(0), 10, 100, 0.5, capacity=3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_pre=0, n_post=5, p=0.1), "n_pre"),
        (dict(n_pre=5, n_post=5, p=0.0), "p: expected a probability"),
        (dict(n_pre=5, n_post=5, p=1.5), "p: expected a probability"),
        (dict(n_pre=5, n_post=6, p=0.1, autapses=False), "autapses=False"),
        (dict(n_pre=5, n_post=5, p=0.1, padding=0.5), "padding"),
    ],
)
def test_fixed_probability_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jp.fixed_probability(jr.key(0), **kwargs)


def _conn(post, weight, n_post, column=None):
    return jp.RaggedConnectivity(
        post=jnp.asarray(post, jnp.int32),
        synapses={"weight": jnp.asarray(weight, jnp.float32)},
        column=column,
        n_post=n_post,
    )


@pytest.mark.parametrize(
    "post, weight, match",
    [
        ([[0, 5]], [[1.0, 1.0]], r"post\[0, 1\] = 5 is out of range"),
        ([[0, -1]], [[1.0, 1.0]], r"post\[0, 1\] = -1 is out of range"),
        ([[1, 2], [2, 2]], [[1.0, 1.0], [1.0, 1.0]], "row 1 holds target 2 twice"),
        ([[0, 4]], [[1.0, 3.0]], r"synapses\['weight'\]\[0, 1\] = 3.0 but slot \(0, 1\) is free"),
        ([[0, 4]], [[np.nan, 0.0]], r"synapses\['weight'\]\[0, 0\] = nan is not finite"),
    ],
)
def test_invariants_are_checked_at_construction(post, weight, match):
    with pytest.raises(ValueError, match=match):
        _conn(post, weight, 4)


def test_structural_checks():
    with pytest.raises(ValueError, match="expected a 'weight' entry"):
        jp.RaggedConnectivity(post=jnp.zeros((2, 2), jnp.int32), synapses={}, column=None, n_post=3)
    with pytest.raises(TypeError, match="post: expected an integer dtype"):
        jp.RaggedConnectivity(
            post=jnp.full((2, 2), 3.0),
            synapses={"weight": jnp.zeros((2, 2))},
            column=None,
            n_post=3,
        )
    with pytest.raises(ValueError, match=r"synapses\['weight'\]: expected shape \(2, 2\)"):
        _conn(np.full((2, 2), 3), np.zeros((2, 3)), 3)
    with pytest.raises(ValueError, match="2-D"):
        _conn(np.full((2,), 3), np.zeros((2,)), 3)


def test_from_edges_errors():
    with pytest.raises(ValueError, match=r"edge 1: duplicate synapse \(0 -> 2\)"):
        jp.from_edges([0, 0], [2, 2], n_pre=2, n_post=3)
    with pytest.raises(ValueError, match=r"edge 0: post = 3 is out of range \[0, 3\)"):
        jp.from_edges([0], [3], n_pre=2, n_post=3)
    with pytest.raises(ValueError, match="row 0 has 2 edges, over capacity=1"):
        jp.from_edges([0, 0], [1, 2], n_pre=2, n_post=3, capacity=1)
    with pytest.raises(ValueError, match="expected equal lengths"):
        jp.from_edges([0, 1], [1], n_pre=2, n_post=3)


def test_from_dense_errors():
    with pytest.raises(ValueError, match="row 0 has 3 nonzero entries, over capacity=2"):
        jp.from_dense(np.ones((2, 3), np.float32), capacity=2)
    with pytest.raises(ValueError, match="2-D"):
        jp.from_dense(np.ones(3, np.float32))


def test_index_width_overflow_is_refused():
    with pytest.raises(ValueError, match="too large for int32 slot indices"):
        jp.fixed_probability(jr.key(0), 100_000, 100, 0.1, capacity=30_000)


def test_column_view_is_the_transpose():
    rng = np.random.default_rng(0)
    weights = _random_dense(rng, 20, 15, 0.3)
    conn = jp.from_dense(weights, column_capacity=20)
    post = np.asarray(conn.post)
    cols = _column_sets(conn)
    for j in range(15):
        expected = {i * conn.capacity + s for i, s in zip(*np.nonzero(post == j), strict=True)}
        assert cols[j] == expected


def test_column_view_capacity_and_corruption_errors():
    weights = np.ones((5, 2), np.float32)
    with pytest.raises(ValueError, match="column 0 holds 5 synapses, over column_capacity=4"):
        jp.from_dense(weights, column_capacity=4)
    conn = jp.from_dense(weights, column_capacity=5)
    bad = eqx.tree_at(lambda c: c.column.pre_slot, conn, conn.column.pre_slot.at[0, 0].set(1))
    with pytest.raises(ValueError, match="column view"):
        jp.RaggedConnectivity(bad.post, bad.synapses, bad.column, bad.n_post)


def _free_bits_loop(pre_slot, sentinel):
    """The packed free entries, bit by bit in plain Python (the reference)."""
    n_post, col_cap = pre_slot.shape
    words = np.zeros((n_post, -(-col_cap // 32)), np.uint32)
    for j in range(n_post):
        for c in range(col_cap):
            if pre_slot[j, c] == sentinel:
                words[j, c // 32] |= np.uint32(1 << (c % 32))
    return words


@pytest.mark.parametrize("column_capacity", [1, 31, 32, 33, 70])
@pytest.mark.parametrize("impl", ["xla", "auto"])
def test_column_free_bits_mark_the_free_entries(column_capacity, impl):
    conn = jp.fixed_probability(jr.key(1), 40, 30, 0.03, capacity=8)
    counts = np.bincount(np.asarray(conn.post).ravel(), minlength=31)[:30]
    if counts.max() > column_capacity:  # keep only what fits, as a full column must
        conn = jp.from_dense(
            np.where(
                np.cumsum(np.asarray(conn.to_dense()) != 0, axis=0) <= column_capacity,
                np.asarray(conn.to_dense()),
                0,
            ),
            capacity=8,
        )
    column = build_column_view(conn.post, 30, column_capacity, impl=impl)
    pre_slot = np.asarray(column.pre_slot)
    expected = _free_bits_loop(pre_slot, conn.n_pre * conn.capacity)
    np.testing.assert_array_equal(np.asarray(column.free_bits), expected)
    assert column.free_bits.dtype == jnp.uint32
    # Left out, the bits are packed from pre_slot.
    again = jp.ColumnView(column.pre_slot, column.position)
    np.testing.assert_array_equal(np.asarray(again.free_bits), expected)


def test_column_free_bits_errors():
    conn = jp.from_dense(np.ones((5, 2), np.float32), column_capacity=40)
    bits = conn.column.free_bits
    wrong = eqx.tree_at(lambda c: c.column.free_bits, conn, bits.at[1, 1].set(bits[1, 1] ^ 1))
    with pytest.raises(ValueError, match=r"column.free_bits\[1, 1\] = 0x000000fe does not mark"):
        jp.RaggedConnectivity(wrong.post, wrong.synapses, wrong.column, wrong.n_post)
    short = eqx.tree_at(lambda c: c.column.free_bits, conn, bits[:, :1])
    with pytest.raises(ValueError, match=r"column.free_bits: expected uint32\(2, 2\)"):
        jp.RaggedConnectivity(short.post, short.synapses, short.column, short.n_post)
    signed = eqx.tree_at(lambda c: c.column.free_bits, conn, bits.astype(jnp.int32))
    with pytest.raises(ValueError, match="got int32"):
        jp.RaggedConnectivity(signed.post, signed.synapses, signed.column, signed.n_post)


def test_column_view_under_jit_matches_eager():
    conn = jp.fixed_probability(jr.key(0), 30, 40, 0.2, capacity=20)
    eager = build_column_view(conn.post, 40, 16)
    jitted = jax.jit(build_column_view, static_argnums=(1, 2))(conn.post, 40, 16)
    np.testing.assert_array_equal(np.asarray(eager.pre_slot), np.asarray(jitted.pre_slot))
    np.testing.assert_array_equal(np.asarray(eager.position), np.asarray(jitted.position))
    np.testing.assert_array_equal(np.asarray(eager.free_bits), np.asarray(jitted.free_bits))


def test_connectivity_is_a_pytree_that_vmaps():
    keys = jr.split(jr.key(0), 3)
    conns = jax.vmap(lambda k: jp.fixed_probability(k, 20, 20, 0.3, capacity=16))(keys)
    assert conns.post.shape == (3, 20, 16)
    counts = jax.vmap(lambda c: c.num_synapses)(conns)
    assert counts.shape == (3,)
    assert len(set(np.asarray(counts).tolist())) > 1
