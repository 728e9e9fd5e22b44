"""Factorized e-prop: the same gradients as online e-prop, memory, batching, jit, training.

Also the XLA sampled product (`jaxplastic._sampled_matmul`) that forms ragged gradients.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import jaxplastic
from jaxplastic._sampled_matmul import sampled_matmul
from jaxplastic.learning import EpropState, eprop, train_step
from jaxplastic.models import recurrent_classifier

from .helpers import tree_allclose

N_IN, N_HIDDEN, N_OUT, BATCH, STEPS = 20, 16, 3, 4, 40

NEURONS = {
    "lif": lambda: jaxplastic.LIF(),
    "alif": lambda: jaxplastic.ALIF(),
    # Strong, fast adaptation, so that the eps_a path (the reverse Q recursion) matters.
    "alif_strong": lambda: jaxplastic.ALIF(beta=0.5, tau_adapt=50.0),
}


def _small_model(neuron: str, key, *, kind="ragged", padding=1.5):
    model = recurrent_classifier(
        N_IN,
        N_OUT,
        n_hidden=N_HIDDEN,
        neuron=NEURONS[neuron](),
        p_in=0.5,
        p_rec=0.5,
        padding=padding,
        weight_gain=3.0,  # enough drive that the hidden layer spikes (tens of Hz)
        key=key,
    )
    return model.to_dense() if kind == "dense" else model


def _batch(key, batch=BATCH, steps=STEPS):
    spikes = jr.bernoulli(key, 0.2, (batch, steps, N_IN)).astype(jnp.uint8)
    labels = jnp.arange(batch, dtype=jnp.int32) % N_OUT
    return spikes, labels


def _gradients(rule):
    return eqx.filter_jit(lambda m, s, y: rule.gradients(m, s, labels=y))


def _assert_gradients_close(got, expected):
    """Every leaf within 1e-5 relative to its own largest entry (float32 rounding)."""
    leaves = jax.tree.leaves(expected)
    assert len(leaves) >= 4
    for g, e in zip(jax.tree.leaves(got), leaves, strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype
        scale = float(jnp.max(jnp.abs(e)))
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * max(scale, 1e-30))


# -- factorized == online ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("neuron", "kind", "c_reg"),
    [
        ("lif", "ragged", 0.0),
        ("lif", "dense", 0.01),
        ("alif", "ragged", 0.01),
        ("alif_strong", "ragged", 0.01),
        ("alif_strong", "dense", 0.01),
    ],
)
def test_factorized_matches_online(neuron, kind, c_reg, getkey):
    model = _small_model(neuron, getkey(), kind=kind)
    spikes, labels = _batch(getkey())
    online, online_info = _gradients(eprop(c_reg=c_reg))(model, spikes, labels)
    factorized, info = _gradients(eprop(c_reg=c_reg, mode="factorized"))(model, spikes, labels)
    assert float(online_info.rate_hz) > 5.0  # the test needs spiking
    # The same forward pass, operation for operation: the same spikes, so the same
    # diagnostics (up to the rounding of the summed loss).
    np.testing.assert_array_equal(info.rate_hz, online_info.rate_hz)
    tree_allclose(info, online_info, rtol=1e-6, atol=0.0)
    _assert_gradients_close(factorized, online)
    if kind == "ragged":
        for conn, g in (
            (model.input, factorized.input.synapses["weight"]),
            (model.recurrent, factorized.recurrent.synapses["weight"]),
        ):
            assert float(jnp.max(jnp.abs(jnp.where(conn.alive, 0.0, g)))) == 0.0  # free slots
            assert float(jnp.max(jnp.abs(g))) > 0.0


def test_factorized_with_the_pallas_product_matches_online(getkey):
    """impl="pallas" (interpret mode on CPU) through the whole rule."""
    model = _small_model("alif_strong", getkey())
    spikes, labels = _batch(getkey(), batch=2, steps=6)
    spikes = spikes.astype(jnp.float32)  # float spikes reach the product as floats
    online, _ = _gradients(eprop(c_reg=0.01))(model, spikes, labels)
    rule = eprop(c_reg=0.01, mode="factorized", impl="pallas")
    factorized, _ = _gradients(rule)(model, spikes, labels)
    _assert_gradients_close(factorized, online)


def test_gradient_pytree_is_the_online_one(getkey):
    model = _small_model("lif", getkey())
    spikes, labels = _batch(getkey(), batch=2, steps=5)
    online = jax.eval_shape(lambda: eprop().gradients(model, spikes, labels=labels))
    factorized = jax.eval_shape(
        lambda: eprop(mode="factorized").gradients(model, spikes, labels=labels)
    )
    assert jax.tree.structure(online) == jax.tree.structure(factorized)
    for a, b in zip(jax.tree.leaves(online), jax.tree.leaves(factorized), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype


# -- memory: time x neurons, not synapses --------------------------------------------------------


def _temp_bytes(rule, model, num_steps, batch=BATCH):
    spikes = jnp.zeros((batch, num_steps, N_IN), jnp.uint8)
    labels = jnp.zeros((batch,), jnp.int32)
    params, static = eqx.partition(model, eqx.is_array)
    fn = jax.jit(lambda p, s, y: rule.gradients(eqx.combine(p, static), s, labels=y))
    return fn.lower(params, spikes, labels).compile().memory_analysis().temp_size_in_bytes


def test_memory_grows_with_time_and_neurons_not_synapses(getkey):
    model = _small_model("alif", getkey(), padding=6.0)
    rule = eprop(mode="factorized")
    # Long enough that the sampled product runs in full k-chunks of bounded scratch (below
    # one chunk the whole [pre, cap, k] gather fits the budget and grows with k).
    short, long = 256, 512
    growth = _temp_bytes(rule, model, long) - _temp_bytes(rule, model, short)
    # Linear in time with a few records per step, example and neuron (XLA:CPU keeps at least
    # one float32 each; XLA:GPU with the Pallas product about half that) ...
    units = (long - short) * BATCH * (N_IN + N_HIDDEN) * 4
    assert 0.25 <= growth / units <= 16
    # ... far below one record per slot, which online e-prop keeps (but not per step).
    slots = model.input.post.size + model.recurrent.post.size
    assert growth < 0.25 * (long - short) * BATCH * slots * 4


def test_sampled_product_scratch_grows_with_k_not_slots():
    def temp_bytes(k, capacity):
        fn = jax.jit(lambda p, a, b: sampled_matmul(p, a, b, n_post=16))
        args = (
            jnp.zeros((20, capacity), jnp.int32),
            jnp.zeros((k, 20), jnp.uint8),
            jnp.zeros((k, 16), jnp.float32),
        )
        return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes

    # Past one k-chunk, growth is the transposed copies of a and b (plus b's zero column),
    # whose layout XLA picks: at most two float32 copies of each, 2 * (20 + 17) * 4 bytes per
    # k, for 12 or 60 slots per row (a [20, cap, k] gather would be 960 or 4,800 per k).
    for capacity in (12, 60):
        growth = temp_bytes(16384, capacity) - temp_bytes(8192, capacity)
        assert 0 < growth <= 8192 * 2 * (20 + 17) * 4, capacity


# -- batching, jit, the step API -------------------------------------------------------------------


def test_batch_sum_equals_vmap_over_examples(getkey):
    model = _small_model("alif_strong", getkey())
    spikes, labels = _batch(getkey())
    rule = eprop(c_reg=0.01, mode="factorized")
    fn = eqx.filter_jit(lambda m, s, y: rule.gradients(m, s, labels=y)[0])
    batched = fn(model, spikes, labels)
    vmapped = jax.vmap(lambda s, y: fn(model, s[None], y[None]))(spikes, labels)
    tree_allclose(batched, jax.tree.map(lambda g: jnp.sum(g, axis=0), vmapped), atol=1e-4)


@pytest.mark.slow
def test_no_jit_matches_jit(getkey):
    model = _small_model("alif_strong", getkey())
    spikes, labels = _batch(getkey(), batch=1, steps=3)
    rule = eprop(mode="factorized")
    jitted = _gradients(rule)(model, spikes, labels)
    with jax.disable_jit():
        eager = rule.gradients(model, spikes, labels=labels)
    tree_allclose(jitted, eager, rtol=1e-5, atol=1e-6)


def test_streaming_functions_are_the_online_ones(getkey):
    """init/step/finalize need no future: they are online e-prop's in either mode."""
    model = _small_model("lif", getkey())
    spikes, labels = _batch(getkey(), batch=2, steps=2)

    def stream(rule):
        state = rule.init(model, batch_size=2)
        state, _ = rule.step(model, state, spikes[:, 0], labels=labels, dt=1.0)
        return state, rule.finalize(model, state, labels=labels)

    online = jax.eval_shape(lambda: stream(eprop()))
    factorized = jax.eval_shape(lambda: stream(eprop(mode="factorized")))
    assert isinstance(factorized[0], EpropState)
    assert factorized[0].input_traces.ebar.shape == model.input.post.shape + (2,)
    assert jax.tree.structure(online) == jax.tree.structure(factorized)
    assert jax.tree.leaves(online) == jax.tree.leaves(factorized)


def test_bad_arguments_raise(getkey):
    with pytest.raises(ValueError, match="mode"):
        eprop(mode="offline")
    with pytest.raises(ValueError, match="impl"):
        eprop(mode="factorized", impl="cuda")
    model = _small_model("lif", getkey())
    spikes, labels = _batch(getkey())
    rule = eprop(mode="factorized")
    with pytest.raises(ValueError, match="spikes"):
        rule.gradients(model, spikes[..., :-1], labels=labels)
    with pytest.raises(ValueError, match="labels"):
        rule.gradients(model, spikes, labels=labels[:-1])
    with pytest.raises(ValueError, match="dt"):
        rule.gradients(model, spikes, labels=labels, dt=0.0)


# -- training ------------------------------------------------------------------------------------


@pytest.mark.standard_promotion
def test_factorized_train_step_reduces_loss(getkey):
    model = _small_model("lif", getkey())
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    rule = eprop(mode="factorized")
    batch = _batch(getkey())
    losses = []
    for _ in range(10):
        model, opt_state, info = train_step(model, opt_state, batch, optimizer=optimizer, rule=rule)
        losses.append(float(info.loss))
    assert losses[-1] < 0.8 * losses[0]
    for conn in (model.input, model.recurrent):
        assert float(jnp.max(jnp.abs(jnp.where(conn.alive, 0.0, conn.weight)))) == 0.0


# -- the XLA sampled product ---------------------------------------------------------------------


def _ragged(key, n_pre, capacity, n_post, *, layout="mixed"):
    """Distinct targets in scattered slots; row 0 empty and row 1 full under "mixed"."""
    rng = np.random.default_rng(int(jr.randint(key, (), 0, 2**31 - 1)))
    post = np.full((n_pre, capacity), n_post, np.int32)
    max_count = min(capacity, n_post)
    for i in range(n_pre):
        if layout == "free":
            count = 0
        elif layout == "full" or (i == 1 and n_pre > 2):
            count = max_count
        elif i == 0 and n_pre > 2:
            count = 0
        else:
            count = int(rng.integers(0, max_count + 1))
        post[i, rng.choice(capacity, count, replace=False)] = rng.choice(n_post, count, False)
    return jnp.asarray(post)


def _dense_product(post, a, b, n_post):
    """`(a^T @ b)[i, post[i, s]]` in float64 with NumPy, 0 at free slots."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b.astype(jnp.float32), np.float64)
    full = np.concatenate([a.T @ b, np.zeros((a.shape[1], 1))], axis=1)
    post = np.asarray(post)
    return np.take_along_axis(full, np.where((post >= 0) & (post < n_post), post, n_post), 1)


@pytest.mark.parametrize("layout", ["mixed", "full", "free"])
@pytest.mark.parametrize(
    # (pre, cap, post, k, k_chunk, block_rows): several k chunks with padding, row blocks
    # with padding, one block, one chunk.
    ("n_pre", "capacity", "n_post", "k", "k_chunk", "block_rows"),
    [(13, 7, 9, 37, 8, 4), (20, 20, 24, 64, 4096, None), (5, 3, 4, 10, 3, 2), (1, 12, 12, 9, 4, 1)],
)
def test_xla_sampled_matmul_matches_dense(
    getkey, layout, n_pre, capacity, n_post, k, k_chunk, block_rows
):
    post = _ragged(getkey(), n_pre, capacity, n_post, layout=layout)
    a = jr.normal(getkey(), (k, n_pre))
    b = jr.normal(getkey(), (k, n_post))
    out = sampled_matmul(
        post, a, b, n_post=n_post, impl="xla", k_chunk=k_chunk, block_rows=block_rows
    )
    assert out.shape == post.shape and out.dtype == b.dtype
    np.testing.assert_allclose(out, _dense_product(post, a, b, n_post), rtol=1e-5, atol=1e-5)
    if layout == "free":
        np.testing.assert_array_equal(np.asarray(out), 0.0)


@pytest.mark.parametrize("a_dtype", [jnp.uint8, jnp.bool_, jnp.int32])
def test_xla_sampled_matmul_spike_factors(getkey, a_dtype):
    post = _ragged(getkey(), 11, 6, 8)
    a = jr.bernoulli(getkey(), 0.3, (30, 11)).astype(a_dtype)
    b = jr.normal(getkey(), (30, 8))
    out = sampled_matmul(post, a, b, n_post=8, k_chunk=7)
    np.testing.assert_allclose(out, _dense_product(post, a, b, 8), rtol=1e-5, atol=1e-5)


def test_xla_sampled_matmul_bf16_and_out_of_range_targets(getkey):
    post = _ragged(getkey(), 9, 5, 7)
    post = post.at[2, 0].set(-1).at[3, 1].set(100)  # invalid targets count as free slots
    a = jr.normal(getkey(), (20, 9)).astype(jnp.bfloat16)
    b = jr.normal(getkey(), (20, 7)).astype(jnp.bfloat16)
    out = sampled_matmul(post, a, b, n_post=7, k_chunk=8)
    assert out.dtype == jnp.bfloat16
    ref = _dense_product(post, a.astype(jnp.float32), b, 7)
    np.testing.assert_allclose(out.astype(jnp.float32), ref, rtol=2e-2, atol=2e-2)
    assert float(out[2, 0]) == 0.0 and float(out[3, 1]) == 0.0


def test_xla_sampled_matmul_jit_vmap_and_grad(getkey):
    post = _ragged(getkey(), 10, 6, 8)
    a = jr.normal(getkey(), (3, 25, 10))
    b = jr.normal(getkey(), (3, 25, 8))

    def product(a, b):
        return sampled_matmul(post, a, b, n_post=8, k_chunk=8, block_rows=3)

    out = jax.jit(jax.vmap(product))(a, b)
    for e in range(3):
        np.testing.assert_allclose(
            out[e], _dense_product(post, a[e], b[e], 8), rtol=1e-5, atol=1e-5
        )

    # Gradients: the sampled product is the dense product masked to the slots.
    def dense(a, b):
        # Full float32 (a GPU's default would round the product to TF32).
        full = jnp.concatenate([jnp.dot(a.T, b, precision="highest"), jnp.zeros((10, 1))], axis=1)
        return jnp.take_along_axis(full, post, axis=1)

    weights = jr.normal(getkey(), post.shape)
    got = jax.grad(lambda a, b: jnp.sum(weights * product(a, b)), (0, 1))(a[0], b[0])
    want = jax.grad(lambda a, b: jnp.sum(weights * dense(a, b)), (0, 1))(a[0], b[0])
    tree_allclose(got, want, rtol=1e-5, atol=1e-5)
    got = jax.grad(
        lambda a, b: jnp.sum(weights * sampled_matmul(post, a, b, n_post=8, impl="pallas")),
        (0, 1),
    )(a[0], b[0])
    tree_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_pallas_impl_matches_xla(getkey):
    post = _ragged(getkey(), 13, 7, 9)
    a = jr.bernoulli(getkey(), 0.4, (37, 13)).astype(jnp.uint8)
    b = jr.normal(getkey(), (37, 9))
    xla = sampled_matmul(post, a, b, n_post=9, impl="xla")
    pallas = sampled_matmul(post, a, b, n_post=9, impl="pallas")
    np.testing.assert_allclose(pallas, xla, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(impl="cuda"), ValueError, "impl"),
        (dict(n_post=0), ValueError, "n_post"),
        (dict(k_chunk=0), ValueError, "k_chunk"),
        (dict(block_rows=1.5), ValueError, "block_rows"),
        (dict(post=jnp.zeros((4, 3))), TypeError, "post"),
        (dict(a=jnp.zeros((6, 5))), ValueError, "a: expected shape"),
        (dict(b=jnp.zeros((6, 4))), ValueError, "b: expected shape"),
        (dict(b=jnp.zeros((6, 5), jnp.int32)), TypeError, "b: expected a floating"),
        (dict(a=jnp.zeros((6, 4), jnp.bfloat16)), TypeError, "a: expected b's dtype"),
    ],
)
def test_sampled_matmul_bad_arguments(kwargs, error, match):
    args = (
        dict(
            post=jnp.full((4, 3), 5, jnp.int32),
            a=jnp.zeros((6, 4)),
            b=jnp.zeros((6, 5)),
            n_post=5,
        )
        | kwargs
    )
    with pytest.raises(error, match=match):
        sampled_matmul(args.pop("post"), args.pop("a"), args.pop("b"), **args)
