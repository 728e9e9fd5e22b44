"""e-prop: ragged == dense twin, dense == autodiff with stop-gradients, memory, batching, jit."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from jax import lax

import jaxplastic
from jaxplastic.learning import EpropState, eprop, train_step
from jaxplastic.models import (
    DenseClassifier,
    RecurrentClassifier,
    dense_classifier,
    recurrent_classifier,
)

from .helpers import tree_allclose

N_IN, N_HIDDEN, N_OUT, BATCH, STEPS = 20, 16, 3, 4, 40

NEURONS = {
    "lif": lambda: jaxplastic.LIF(),
    "alif": lambda: jaxplastic.ALIF(),
    # Strong, fast adaptation, so that the eps_a path of the ALIF trace matters.
    "alif_strong": lambda: jaxplastic.ALIF(beta=0.5, tau_adapt=50.0),
}


def _small_model(neuron: str, key, *, padding=1.5) -> RecurrentClassifier:
    return recurrent_classifier(
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


def _batch(key, batch=BATCH, steps=STEPS):
    spikes = jr.bernoulli(key, 0.2, (batch, steps, N_IN)).astype(jnp.uint8)
    labels = jnp.arange(batch, dtype=jnp.int32) % N_OUT
    return spikes, labels


def _slot_to_dense(conn: jaxplastic.RaggedConnectivity, values) -> jax.Array:
    """Scatters `[pre, cap]` slot values to a dense `[pre, post]` matrix."""
    rows = jnp.broadcast_to(jnp.arange(conn.n_pre)[:, None], conn.post.shape)
    dense = jnp.zeros((conn.n_pre, conn.n_post + 1), values.dtype)
    return dense.at[rows, conn.post].set(values)[:, : conn.n_post]


# -- (b) the independent reference: autodiff with the stop-gradients of e-prop ---------------


@jax.custom_jvp
def _spike(u):
    return (u >= 0).astype(u.dtype)


@_spike.defjvp
def _spike_jvp(primals, tangents):
    (u,), (du,) = primals, tangents
    return _spike(u), 0.3 * jnp.maximum(0.0, 1.0 - jnp.abs(u)) * du


def _reference_gradients(model: DenseClassifier, spikes, labels, *, c_reg, dt=1.0):
    """Gradient of sum_t [CE(softmax V(t)) + c_reg sum_j sg(f_j(t) - f*) z_j(t)] by autodiff.

    Written from the equations (not from the library's neurons): LIF/ALIF with reset by
    subtraction, refractoriness, leaky readout. e-prop's approximations are stop-gradients on
    the recurrent spikes entering the next step and on the reset (Bellec et al. 2020).
    """
    n = model.hidden
    adaptive = isinstance(n, jaxplastic.ALIF)
    v_th = n.v_threshold
    alpha = np.exp(-dt / n.tau_mem)
    kappa = np.exp(-dt / model.tau_out)
    rho = np.exp(-dt / n.tau_adapt) if adaptive else 0.0
    beta = n.beta if adaptive else 0.0
    refractory_steps = round(n.tau_refrac / dt)
    rate_decay = np.exp(-dt / 500.0)
    f_target = 10.0 * dt / 1000.0
    batch = spikes.shape[0]
    target = jax.nn.one_hot(labels, model.n_out)
    xs = jnp.swapaxes(spikes, 0, 1).astype(jnp.float32)

    def loss_fn(w_in, w_rec, w_out, b_out):
        def body(carry, x):
            v, a, refractory, z, readout, rate, loss = carry
            v = alpha * v + x @ w_in + lax.stop_gradient(z) @ w_rec
            a = rho * a
            refractory = jnp.maximum(refractory - 1, 0)
            z = jnp.where(refractory == 0, _spike((v - (v_th + beta * a)) / v_th), 0.0)
            v = v - v_th * lax.stop_gradient(z)
            a = a + z
            refractory = jnp.where(z > 0, refractory_steps, refractory)
            readout = kappa * readout + z @ w_out + b_out[None, :]
            rate = rate_decay * rate + (1.0 - rate_decay) * lax.stop_gradient(z)
            loss = loss - jnp.sum(target * jax.nn.log_softmax(readout))
            loss = loss + c_reg * jnp.sum(lax.stop_gradient(rate - f_target) * z)
            return (v, a, refractory, z, readout, rate, loss), None

        zeros = jnp.zeros((batch, model.n_hidden))
        init = (zeros, zeros, jnp.zeros((batch, model.n_hidden), jnp.int32), zeros)
        init = (*init, jnp.zeros((batch, model.n_out)), zeros, jnp.zeros(()))
        carry, _ = lax.scan(body, init, xs)
        return carry[-1]

    return jax.grad(loss_fn, argnums=(0, 1, 2, 3))(
        model.w_in, model.w_rec, model.w_out, model.b_out
    )


@pytest.mark.parametrize("c_reg", [0.0, 0.01])
@pytest.mark.parametrize("neuron", list(NEURONS))
def test_dense_matches_autodiff_reference(neuron, c_reg, getkey):
    model = _small_model(neuron, getkey()).to_dense()
    spikes, labels = _batch(getkey())
    grads, info = eqx.filter_jit(lambda m, s, y: eprop(c_reg=c_reg).gradients(m, s, labels=y))(
        model, spikes, labels
    )
    assert float(info.rate_hz) > 5.0  # the test needs spiking
    expected = _reference_gradients(model, spikes, labels, c_reg=c_reg)
    got = (grads.w_in, grads.w_rec, grads.w_out, grads.b_out)
    for g, e, name in zip(got, expected, ("w_in", "w_rec", "w_out", "b_out"), strict=True):
        scale = float(jnp.max(jnp.abs(e)))
        assert scale > 0, name
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * scale, err_msg=name)


# -- (a) ragged == dense twin restricted to existing synapses --------------------------------


@pytest.mark.parametrize("neuron", list(NEURONS))
def test_ragged_matches_dense_twin(neuron, getkey):
    model = _small_model(neuron, getkey())
    assert not bool(jnp.all(model.input.alive))  # padding leaves free slots to check
    twin = model.to_dense()
    spikes, labels = _batch(getkey())
    rule = eprop(c_reg=0.01)
    grads, info = rule.gradients(model, spikes, labels=labels)
    dense_grads, dense_info = rule.gradients(twin, spikes, labels=labels)
    np.testing.assert_allclose(info.prediction, dense_info.prediction, rtol=1e-5, atol=1e-5)
    for conn, g, dense_g in (
        (model.input, grads.input.synapses["weight"], dense_grads.w_in),
        (model.recurrent, grads.recurrent.synapses["weight"], dense_grads.w_rec),
    ):
        assert g.shape == conn.post.shape
        assert float(jnp.max(jnp.abs(jnp.where(conn.alive, 0.0, g)))) == 0.0  # free slots
        exists = conn.to_dense() != 0
        scale = float(jnp.max(jnp.abs(dense_g)))
        np.testing.assert_allclose(
            _slot_to_dense(conn, g), jnp.where(exists, dense_g, 0.0), rtol=1e-5, atol=1e-5 * scale
        )
    np.testing.assert_allclose(grads.w_out, dense_grads.w_out, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(grads.b_out, dense_grads.b_out, rtol=1e-5, atol=1e-4)


def test_gradients_shaped_like_the_trainable_leaves(getkey):
    model = _small_model("lif", getkey())
    spikes, labels = _batch(getkey())
    grads, _ = eprop().gradients(model, spikes, labels=labels)
    params = eqx.filter(model, eqx.is_inexact_array)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params), strict=True):
        assert g.shape == p.shape and g.dtype == p.dtype
    # Exactly the trainable leaves are the ones the spec marks.
    trained = eqx.filter(model, model.trainable())
    assert len(jax.tree.leaves(trained)) == 4


# -- (c) memory does not grow with time -------------------------------------------------------


@pytest.mark.parametrize("kind", ["ragged", "dense"])
def test_trace_memory_independent_of_time(kind, getkey):
    model = _small_model("alif", getkey())
    if kind == "dense":
        model = model.to_dense()
    rule = eprop()
    # The carried state has no time axis at all ...
    state = jax.eval_shape(lambda: rule.init(model, batch_size=BATCH))
    assert isinstance(state, EpropState)
    sizes = {x.shape for x in jax.tree.leaves(state)}
    assert all(STEPS not in shape for shape in sizes)
    # ... and the compiled program's scratch memory is the same for 10 and 1000 steps.

    def temp_bytes(num_steps):
        spikes = jnp.zeros((BATCH, num_steps, N_IN), jnp.uint8)
        labels = jnp.zeros((BATCH,), jnp.int32)
        params, static = eqx.partition(model, eqx.is_array)
        fn = jax.jit(lambda p, s, y: rule.gradients(eqx.combine(p, static), s, labels=y))
        stats = fn.lower(params, spikes, labels).compile().memory_analysis()
        return stats.temp_size_in_bytes

    short, long = temp_bytes(10), temp_bytes(1000)
    assert short == long
    traces = state.input_traces.ebar.size + state.recurrent_traces.ebar.size
    assert short >= 4 * traces  # the traces really live in that scratch space


# -- batching, jit, step API --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ragged", "dense"])
def test_batch_sum_equals_loop_over_examples(kind, getkey):
    model = _small_model("alif_strong", getkey())
    if kind == "dense":
        model = model.to_dense()
    spikes, labels = _batch(getkey())
    rule = eprop(c_reg=0.01)
    fn = eqx.filter_jit(lambda m, s, y: rule.gradients(m, s, labels=y)[0])
    batched = fn(model, spikes, labels)
    looped = [fn(model, spikes[b : b + 1], labels[b : b + 1]) for b in range(BATCH)]
    looped = jax.tree.map(lambda *g: sum(g), *looped)
    tree_allclose(batched, looped, rtol=1e-5, atol=1e-4)
    # jax.vmap over single-example batches, then a sum: the same.
    vmapped = jax.vmap(lambda s, y: fn(model, s[None], y[None]))(spikes, labels)
    tree_allclose(batched, jax.tree.map(lambda g: jnp.sum(g, axis=0), vmapped), atol=1e-4)


def test_step_api_equals_gradients(getkey):
    model = _small_model("alif", getkey())
    spikes, labels = _batch(getkey())
    rule = eprop()
    state = rule.init(model, batch_size=BATCH)
    step = eqx.filter_jit(rule.step)
    for t in range(STEPS):
        state, (z, v) = step(model, state, spikes[:, t], labels=labels, dt=1.0)
        assert z.shape == (BATCH, N_HIDDEN) and v.shape == (BATCH, N_OUT)
    grads, info = rule.finalize(model, state, labels=labels)
    expected, expected_info = rule.gradients(model, spikes, labels=labels)
    tree_allclose(grads, expected, rtol=1e-5, atol=1e-5)
    tree_allclose(info, expected_info, rtol=1e-5, atol=1e-5)


def test_no_jit_matches_jit(getkey):
    model = _small_model("lif", getkey())
    spikes, labels = _batch(getkey(), batch=2, steps=5)
    rule = eprop()
    jitted = eqx.filter_jit(lambda m, s, y: rule.gradients(m, s, labels=y))(model, spikes, labels)
    with jax.disable_jit():
        eager = rule.gradients(model, spikes, labels=labels)
    tree_allclose(jitted, eager, rtol=1e-5, atol=1e-5)


def test_forward_pass_matches_the_classifier(getkey):
    """e-prop's own simulation gives the classifier's prediction."""
    model = _small_model("alif", getkey())
    spikes, labels = _batch(getkey())
    _, info = eprop().gradients(model, spikes, labels=labels)
    np.testing.assert_allclose(info.prediction, model(spikes), rtol=1e-5, atol=1e-5)


def test_silent_network_gives_finite_gradients(getkey):
    model = _small_model("lif", getkey())
    spikes = jnp.zeros((2, 10, N_IN), jnp.uint8)
    grads, info = eprop().gradients(model, spikes, labels=jnp.array([0, 1]))
    assert float(info.rate_hz) == 0.0
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    # No spike anywhere: no hidden eligibility, so only the bias learns.
    assert float(jnp.max(jnp.abs(grads.input.synapses["weight"]))) == 0.0
    assert float(jnp.max(jnp.abs(grads.w_out))) == 0.0
    assert float(jnp.max(jnp.abs(grads.b_out))) > 0.0


# -- validation -------------------------------------------------------------------------------


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="mode"):
        eprop(mode="offline")


@pytest.mark.parametrize(
    "kwargs", [{"c_reg": -1.0}, {"tau_rate": 0.0}, {"f_target_hz": float("nan")}]
)
def test_bad_hyperparameters_raise(kwargs):
    with pytest.raises(ValueError):
        eprop(**kwargs)


def test_bad_inputs_raise(getkey):
    model = _small_model("lif", getkey())
    rule = eprop()
    spikes, labels = _batch(getkey())
    with pytest.raises(ValueError, match="spikes"):
        rule.gradients(model, spikes[..., :-1], labels=labels)
    with pytest.raises(ValueError, match="labels"):
        rule.gradients(model, spikes, labels=labels[:-1])
    with pytest.raises(TypeError, match="positional"):
        rule.gradients(model, spikes, labels)  # labels is keyword-only
    with pytest.raises(TypeError, match="RecurrentClassifier"):
        rule.gradients(object(), spikes, labels=labels)
    with pytest.raises(ValueError, match="integrate_during_refractory"):
        clamped = jaxplastic.LIF(integrate_during_refractory=False)
        rule.gradients(eqx.tree_at(lambda m: m.hidden, model, clamped), spikes, labels=labels)
    with pytest.raises(ValueError, match="tau_mem"):
        per_neuron = jaxplastic.LIF(tau_mem=jnp.full(N_HIDDEN, 20.0))
        rule.gradients(eqx.tree_at(lambda m: m.hidden, model, per_neuron), spikes, labels=labels)


def test_out_of_range_label_raises(getkey):
    model = _small_model("lif", getkey())
    spikes, _ = _batch(getkey())
    fn = eqx.filter_jit(lambda m, s, y: eprop().gradients(m, s, labels=y))
    with pytest.raises(Exception, match="labels"):
        jax.block_until_ready(fn(model, spikes, jnp.array([0, 1, 2, N_OUT])))


# -- optax and the jitted train step ------------------------------------------------------------


@pytest.mark.standard_promotion
def test_optax_chain_applies_gradients(getkey):
    model = _small_model("lif", getkey())
    spikes, labels = _batch(getkey())
    grads, _ = eqx.filter_jit(lambda m, s, y: eprop().gradients(m, s, labels=y))(
        model, spikes, labels
    )
    optimizer = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(1e-3))
    params = eqx.filter(model, eqx.is_inexact_array)
    opt_state = optimizer.init(params)
    updates, opt_state = eqx.filter_jit(optimizer.update)(grads, opt_state, params)
    new = eqx.apply_updates(model, updates)
    assert isinstance(new, RecurrentClassifier)
    changed = new.input.weight != model.input.weight
    assert bool(jnp.any(changed)) and not bool(jnp.any(changed & ~model.input.alive))


@pytest.mark.standard_promotion
@pytest.mark.parametrize("kind", ["ragged", "dense"])
def test_train_step_compiles_once_through_rewiring(kind, getkey):
    model = _small_model("alif", getkey())
    if kind == "dense":
        model = model.to_dense()
    optimizer = optax.adamw(1e-2, weight_decay=0.1)  # decay would move free slots if unmasked
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    counted = eqx.filter_jit(eqx.debug.assert_max_traces(train_step.__wrapped__, max_traces=1))
    batch = _batch(getkey())
    model, opt_state, info = counted(model, opt_state, batch, getkey(), optimizer=optimizer)
    if kind == "ragged":
        # Rewire between steps: same shapes, so no retrace; reset the optimiser's slot state.
        mask = jr.bernoulli(getkey(), 0.3, model.input.post.shape)
        conn, rewired = jaxplastic.remove_synapses(model.input, mask)
        model = eqx.tree_at(lambda m: m.input, model, conn)
        opt_state = jaxplastic.reset_slots(opt_state, rewired.changed)
    model, opt_state, info = counted(
        model, opt_state, _batch(getkey()), getkey(), optimizer=optimizer
    )
    assert eqx.debug.get_num_traces(counted.__wrapped__) == 1
    assert bool(jnp.isfinite(info.loss))
    if kind == "ragged":
        for conn in (model.input, model.recurrent):
            assert float(jnp.max(jnp.abs(jnp.where(conn.alive, 0.0, conn.weight)))) == 0.0


@pytest.mark.standard_promotion
def test_dense_train_step_reduces_loss(getkey):
    model = dense_classifier(N_IN, N_OUT, n_hidden=N_HIDDEN, weight_gain=3.0, key=getkey())
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    batch = _batch(getkey())
    losses = []
    for _ in range(15):
        model, opt_state, info = train_step(model, opt_state, batch, optimizer=optimizer)
        losses.append(float(info.loss))
    assert losses[-1] < 0.8 * losses[0]
