import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxplastic as jp

_TOL = {jnp.float32: dict(rtol=1e-5, atol=1e-5), jnp.bfloat16: dict(rtol=3e-2, atol=3e-2)}


def _projection(key, n_pre, n_post, p, capacity=None, dtype=jnp.float32, empty_rows=()):
    conn = jp.fixed_probability(
        key,
        n_pre,
        n_post,
        p,
        capacity=capacity,
        weight=jax.nn.initializers.normal(1.0),
        dtype=dtype,
    )
    if empty_rows:
        rows = jnp.asarray(empty_rows)
        post = conn.post.at[rows].set(n_post)
        weight = conn.weight.at[rows].set(0)
        conn = jp.RaggedConnectivity(post, {"weight": weight}, None, n_post)
    return conn


def _dense_reference(conn, spikes):
    w = np.asarray(conn.to_dense().astype(jnp.float32), np.float64)
    return np.asarray(spikes, np.float64) @ w


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("rate", [0.0, 0.05, 0.5, 1.0])
@pytest.mark.parametrize("batch", [None, 1, 7])
@pytest.mark.parametrize("block_rows", [1, 3, None])
def test_propagate_matches_dense(getkey, dtype, rate, batch, block_rows):
    conn = _projection(getkey(), 23, 17, 0.3, capacity=13, dtype=dtype, empty_rows=(0, 5))
    shape = (23,) if batch is None else (batch, 23)
    spikes = jr.bernoulli(getkey(), rate, shape)
    out = jp.propagate(conn, spikes, impl="xla", block_rows=block_rows)
    assert out.shape == shape[:-1] + (17,)
    assert out.dtype == dtype
    np.testing.assert_allclose(
        np.asarray(out.astype(jnp.float32)), _dense_reference(conn, spikes), **_TOL[dtype]
    )


def test_every_spike_counts_when_all_fire(getkey):
    # A full projection with every neuron firing: the densest case the event path sees.
    conn = jp.from_dense(np.ones((64, 32), np.float32))
    out = jp.propagate(conn, jnp.ones((4, 64), bool), impl="xla", block_rows=5)
    np.testing.assert_array_equal(np.asarray(out), np.full((4, 32), 64.0))


def test_graded_spikes(getkey):
    conn = _projection(getkey(), 30, 20, 0.2)
    spikes = jr.normal(getkey(), (3, 30)) * jr.bernoulli(getkey(), 0.3, (3, 30)).astype(jnp.float32)
    np.testing.assert_allclose(
        np.asarray(jp.propagate(conn, spikes)), _dense_reference(conn, spikes), rtol=1e-5, atol=1e-5
    )


def test_gradients_match_dense(getkey):
    conn = _projection(getkey(), 25, 18, 0.3)
    spikes = jr.bernoulli(getkey(), 0.4, (4, 25)).astype(jnp.float32)
    target = jr.normal(getkey(), (4, 18))

    def ragged_loss(weight, spikes):
        return jnp.sum((jp.propagate(conn, spikes, weight=weight) - target) ** 2)

    def dense_loss(dense, spikes):
        # The reference in full float32 (a GPU's default would round the product to TF32).
        return jnp.sum((jnp.dot(spikes, dense, precision="highest") - target) ** 2)

    gw, gs = jax.grad(ragged_loss, argnums=(0, 1))(conn.weight, spikes)
    dense = conn.to_dense()
    gd, gs_ref = jax.grad(dense_loss, argnums=(0, 1))(dense, spikes)
    np.testing.assert_allclose(np.asarray(gs), np.asarray(gs_ref), rtol=1e-5, atol=1e-5)
    slot_view = jp.RaggedConnectivity(conn.post, {"weight": gw}, None, conn.n_post)
    np.testing.assert_allclose(
        np.asarray(slot_view.to_dense()),
        np.where(np.asarray(dense) != 0, np.asarray(gd), 0.0),
        rtol=1e-5,
        atol=1e-5,
    )
    assert (np.asarray(gw)[~np.asarray(conn.alive)] == 0).all()


def test_grad_through_module_with_filter_grad(getkey):
    import equinox as eqx

    conn = _projection(getkey(), 10, 6, 0.5)
    spikes = jnp.ones(10)
    grads = eqx.filter_grad(lambda c: jnp.sum(jp.propagate(c, spikes)))(conn)
    np.testing.assert_allclose(np.asarray(grads.weight), np.asarray(conn.alive, np.float32))


def test_jit_and_vmap_over_networks(getkey):
    keys = jr.split(getkey(), 4)
    conns = jax.vmap(lambda k: _projection(k, 20, 12, 0.3, capacity=12))(keys)
    spikes = jr.bernoulli(getkey(), 0.3, (4, 20))
    out = jax.jit(jax.vmap(lambda c, s: jp.propagate(c, s)))(conns, spikes)
    for n in range(4):
        conn_n = jax.tree.map(lambda x, n=n: x[n], conns)
        np.testing.assert_allclose(
            np.asarray(out[n]), _dense_reference(conn_n, spikes[n]), rtol=1e-5, atol=1e-5
        )


def test_pallas_dispatch_matches_xla(getkey):
    conn = _projection(getkey(), 16, 12, 0.4, capacity=10)
    spikes = jr.bernoulli(getkey(), 0.5, (2, 16))
    np.testing.assert_allclose(
        np.asarray(jp.propagate(conn, spikes, impl="pallas")),
        np.asarray(jp.propagate(conn, spikes, impl="xla")),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "spikes, kwargs, error, match",
    [
        (np.zeros(7), {}, ValueError, r"spikes: expected shape \[8\] or \[batch, 8\]"),
        (np.zeros((2, 2, 8)), {}, ValueError, "spikes: expected shape"),
        (np.zeros(8), dict(impl="cuda"), ValueError, "impl: expected one of"),
        (np.zeros(8), dict(block_rows=0), ValueError, "block_rows"),
        (np.zeros(8), dict(weight=jnp.zeros((8, 2))), ValueError, "weight: expected shape"),
    ],
)
def test_bad_input(getkey, spikes, kwargs, error, match):
    conn = _projection(getkey(), 8, 5, 0.5, capacity=5)
    with pytest.raises(error, match=match):
        jp.propagate(conn, jnp.asarray(spikes), **kwargs)
