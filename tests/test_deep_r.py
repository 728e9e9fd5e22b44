import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import jaxplastic as jp
from jaxplastic.learning import deep_r

from .helpers import assert_trees_equal


def _projection(key, n=60, p=0.1, padding=2.0, autapses=False, column_capacity=None):
    return jp.fixed_probability(
        key,
        n,
        n,
        p,
        autapses=autapses,
        padding=padding,
        weight=jax.nn.initializers.normal(1.0),
        column_capacity=column_capacity,
    )


def _recheck(conn):
    return jp.RaggedConnectivity(conn.post, conn.synapses, conn.column, conn.n_post)


def _perturb(conn, key, scale):
    """A stand-in optimiser step: noise on live weights, some of which cross zero."""
    noise = scale * jr.normal(key, conn.weight.shape)
    weight = jnp.where(conn.alive, conn.weight + noise, 0.0)
    return jp.RaggedConnectivity(conn.post, {"weight": weight}, conn.column, conn.n_post)


_rewire = jax.jit(deep_r.rewire, static_argnames=("proposals_per_round", "max_rounds"))
_perturb_jit = jax.jit(_perturb)


def test_signs_follow_initial_weights_and_are_balanced_elsewhere():
    conn = _projection(jr.key(0), n=200)
    signs = deep_r.init_signs(jr.key(1), conn, autapses=False)
    dense = np.asarray(conn.to_dense())
    s = np.asarray(signs.to_dense())
    assert set(np.unique(s)) <= {-1.0, 1.0}
    np.testing.assert_array_equal(s[dense != 0], np.sign(dense[dense != 0]))
    assert abs((s[dense == 0] > 0).mean() - 0.5) < 0.02
    assert signs.bits.nbytes == 200 * 7 * 4  # one bit per pair, 32 pairs per word
    slot = np.asarray(deep_r.slot_signs(signs, conn))
    assert (slot[~np.asarray(conn.alive)] == 0).all()


@pytest.mark.parametrize("column", [None, 40])
def test_many_steps_conserve_count_respect_signs_and_invariants(column):
    conn = _projection(jr.key(0), column_capacity=column)
    signs = deep_r.init_signs(jr.key(1), conn, autapses=False)
    count = int(conn.num_synapses)
    total_removed = 0
    key = jr.key(2)
    for _ in range(25):
        key, k1, k2 = jr.split(key, 3)
        conn = _perturb_jit(conn, k1, 0.5)
        conn, info = _rewire(k2, conn, signs)
        assert int(info.shortfall) == 0
        assert int(info.added) == int(info.removed)
        assert int(conn.num_synapses) == count
        total_removed += int(info.removed)
        conn = _recheck(conn)  # no duplicates, targets in range, free slots zero
        live = np.asarray(conn.alive)
        s = np.asarray(deep_r.slot_signs(signs, conn))
        w = np.asarray(conn.weight)
        assert (s[live] * w[live] >= 0).all(), "a live synapse violates its sign"
        post = np.asarray(conn.post)
        assert not (post == np.arange(60)[:, None]).any(), "an autapse was grown"
        if column is not None:
            rebuilt = conn.rebuild_column_view()
            np.testing.assert_array_equal(
                np.sort(np.asarray(conn.column.pre_slot), axis=1),
                np.sort(np.asarray(rebuilt.column.pre_slot), axis=1),
            )
    assert total_removed > 100


def test_regrown_synapses_start_at_zero_and_reset_optimiser_state():
    conn = _projection(jr.key(0))
    signs = deep_r.init_signs(jr.key(1), conn, autapses=False)
    opt = optax.adam(1e-2)
    with jax.numpy_dtype_promotion("standard"):
        state = opt.init(conn.weight)
        _, state = opt.update(jnp.ones_like(conn.weight), state, conn.weight)
    before = np.asarray(conn.post)
    conn = _perturb(conn, jr.key(3), 0.8)
    new, info = deep_r.rewire(jr.key(4), conn, signs)
    changed = np.asarray(info.changed)
    regrown = changed & np.asarray(new.alive)
    assert regrown.sum() == int(info.added) > 0
    assert (np.asarray(new.weight)[regrown] == 0).all()
    # The prunes happened: some slots that held a synapse before are now free or re-targeted.
    assert (before[changed] != np.asarray(new.post)[changed]).any()
    state = jp.reset_slots(state, info.changed)
    assert (np.asarray(state[0].mu)[changed] == 0).all()
    assert (np.asarray(state[0].nu)[changed] == 0).all()
    assert (np.asarray(state[0].mu)[~changed & np.asarray(new.alive)] != 0).all()


def test_same_key_same_result_and_different_key_differs():
    conn = _projection(jr.key(0))
    signs = deep_r.init_signs(jr.key(1), conn, autapses=False)
    conn = _perturb(conn, jr.key(3), 0.8)
    a, _ = _rewire(jr.key(5), conn, signs)
    b, _ = _rewire(jr.key(5), conn, signs)
    c, _ = _rewire(jr.key(6), conn, signs)
    np.testing.assert_array_equal(np.asarray(a.post), np.asarray(b.post))
    assert not np.array_equal(np.asarray(a.post), np.asarray(c.post))


def test_regrowth_is_uniform_over_free_positions():
    # Count where regrowths land over many independent steps: every free pair equally likely.
    n = 12
    conn = jp.from_edges(
        np.arange(n), (np.arange(n) + 1) % n, np.ones(n, np.float32), n_pre=n, n_post=n, capacity=n
    )
    signs = deep_r.init_signs(jr.key(1), conn, autapses=False)
    # Flip one weight against its sign so one synapse is removed and one regrown.
    flip = conn.weight.at[0, 0].set(-1.0)
    conn = jp.RaggedConnectivity(conn.post, {"weight": flip}, None, n)
    positive = np.asarray(signs.to_dense())[0, 1] > 0
    if not positive:
        conn = jp.RaggedConnectivity(conn.post, {"weight": -flip}, None, n)
    keys = jr.split(jr.key(7), 3000)
    new, info = jax.jit(jax.vmap(lambda k: deep_r.rewire(k, conn, signs)))(keys)
    assert (np.asarray(info.added) == 1).all()
    dense = np.asarray(jax.vmap(lambda c: c.alive)(new))
    posts = np.asarray(new.post)
    counts = np.zeros((n, n))
    for d, p in zip(dense, posts, strict=True):
        counts[np.nonzero(d)[0], p[d]] += 1
    before = np.zeros((n, n), bool)
    before[np.arange(n), (np.arange(n) + 1) % n] = True
    counts -= 3000 * before  # the synapses that stayed
    counts[0, 1] += 3000  # the removed one is a free position again
    free = ~before | (np.arange(n)[:, None] == 0) & (np.arange(n)[None] == 1)
    np.fill_diagonal(free, False)
    observed = counts[free]
    assert observed.sum() == 3000
    expected = 3000 / free.sum()
    chi2 = ((observed - expected) ** 2 / expected).sum()
    dof = free.sum() - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof)
    assert counts[~free].sum() == 0


def test_shortfall_is_reported_when_rows_are_full():
    # All-to-all with full rows: only the removed pairs are free, so a few proposals
    # rarely find them; the bounded loop stops and reports the shortfall instead of hanging.
    n = 48
    conn = jp.from_dense(np.ones((n, n), np.float32))
    signs = deep_r.init_signs(jr.key(1), conn)  # every pair is connected and positive
    rows = jnp.arange(n)[:, None]
    weight = jnp.where(conn.post == rows, -1.0, 1.0)  # the diagonal crosses zero
    conn = jp.RaggedConnectivity(conn.post, {"weight": weight}, None, n)
    new, info = _rewire(jr.key(2), conn, signs, proposals_per_round=4, max_rounds=3)
    assert int(info.removed) == n
    assert int(info.shortfall) > 0
    assert int(info.added) + int(info.shortfall) == n
    assert int(new.num_synapses) == n * n - int(info.shortfall)
    _recheck(new)


def _without_column(conn):
    return jp.RaggedConnectivity(conn.post, conn.synapses, None, conn.n_post)


@pytest.mark.parametrize("padding", [1.0, 2.0])
def test_regrowth_without_column_view_equals_add_synapses(padding):
    # Without a column view regrowth places its proposals directly; with a column view too
    # large to refuse anything it goes through add_synapses: the same synapses either way,
    # including the row-full refusals of nearly full rows (small padding, small rounds).
    conn = _projection(jr.key(0), padding=padding, column_capacity=60)
    signs = deep_r.init_signs(jr.key(1), conn, autapses=False)
    conn = _perturb(conn, jr.key(3), 1.5)
    options = dict(proposals_per_round=8, max_rounds=20)
    with_col, info_col = _rewire(jr.key(4), conn, signs, **options)
    without, info = _rewire(jr.key(4), _without_column(conn), signs, **options)
    assert int(info.removed) > 0
    assert_trees_equal((_without_column(with_col), info_col), (without, info))


def test_regrowth_of_full_rows_equals_add_synapses():
    n = 24
    conn = jp.from_dense(np.ones((n, n), np.float32), column_capacity=n)
    signs = deep_r.init_signs(jr.key(1), conn)
    weight = jnp.where(conn.post == jnp.arange(n)[:, None], -1.0, 1.0)
    conn = jp.RaggedConnectivity(conn.post, {"weight": weight}, conn.column, n)
    options = dict(proposals_per_round=16, max_rounds=4)
    with_col, info_col = _rewire(jr.key(2), conn, signs, **options)
    without, info = _rewire(jr.key(2), _without_column(conn), signs, **options)
    assert int(info.shortfall) > 0
    assert_trees_equal((_without_column(with_col), info_col), (without, info))


def test_projections_rewired_together_equal_one_by_one():
    # One regrowth loop for several projections (as the DEEP R training step runs it) gives
    # each one exactly what `rewire` gives it alone, whatever the number of rounds each needs.
    a = _projection(jr.key(0), n=60)
    b = jp.fixed_probability(
        jr.key(1), 40, 90, 0.2, padding=1.0, weight=jax.nn.initializers.normal(1.0)
    )
    c = _projection(jr.key(2), n=30, column_capacity=20)
    signs = [
        deep_r.init_signs(jr.key(4), a, autapses=False),
        deep_r.init_signs(jr.key(5), b),
        deep_r.init_signs(jr.key(6), c, autapses=False),
    ]
    conns = [
        _perturb(x, jr.fold_in(jr.key(3), i), scale)
        for i, (x, scale) in enumerate([(a, 1.0), (b, 0.1), (c, 0.5)])
    ]
    keys = [jr.key(7), jr.key(8), jr.key(9)]
    options = dict(proposals_per_round=4, max_rounds=64)
    together = jax.jit(lambda k, c, s: deep_r._rewire_projections(k, c, s, **options))(
        keys, conns, signs
    )
    alone = [_rewire(k, c, s, **options) for k, c, s in zip(keys, conns, signs, strict=True)]
    assert_trees_equal(together, ([x[0] for x in alone], [x[1] for x in alone]))
    assert len({int(x[1].removed) // 4 for x in alone}) > 1  # different numbers of rounds


@pytest.mark.standard_promotion
def test_l1_chains_with_adam():
    conn = _projection(jr.key(0))
    signs = deep_r.init_signs(jr.key(1), conn, autapses=False)
    s = deep_r.slot_signs(signs, conn)
    params = {"w": conn.weight, "b": jnp.ones(3)}
    grads = {"w": jr.normal(jr.key(2), conn.weight.shape) * conn.alive, "b": jnp.ones(3)}
    opt = optax.chain(deep_r.l1(0.05), optax.adam(1e-3))
    state = opt.init(params)
    updates, _ = opt.update(grads, state, params, signs={"w": s, "b": None})
    ref_opt = optax.adam(1e-3)
    ref, _ = ref_opt.update({"w": grads["w"] + 0.05 * s, "b": grads["b"]}, ref_opt.init(params))
    np.testing.assert_allclose(np.asarray(updates["w"]), np.asarray(ref["w"]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(updates["b"]), np.asarray(ref["b"]), rtol=1e-6)
    with pytest.raises(TypeError, match="signs"):
        opt.update(grads, state, params)


def test_l1_langevin_noise_scale_and_free_slots():
    shape = (200, 50)
    s = jnp.broadcast_to(jnp.where(jnp.arange(50) < 40, 1.0, 0.0), shape)
    t = deep_r.l1(0.0, temperature=1e-4, learning_rate=1e-2, key=jr.key(0))
    state = t.init(None)
    out, state2 = t.update(jnp.zeros(shape), state, signs=s)
    out = np.asarray(out)
    assert (out[:, 40:] == 0).all()
    np.testing.assert_allclose(out[:, :40].std(), np.sqrt(2 * 1e-4 / 1e-2), rtol=0.05)
    out2, _ = t.update(jnp.zeros(shape), state2, signs=s)
    assert not np.allclose(out, np.asarray(out2))
    with pytest.raises(ValueError, match="temperature > 0 needs"):
        deep_r.l1(0.1, temperature=1.0)
    with pytest.raises(ValueError, match="strength"):
        deep_r.l1(-0.1)
