"""Neuron models against plain numpy loops written from the equations, and closed forms."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxplastic._neurons import (
    ALIF,
    LIF,
    AbstractSurrogate,
    ALIFState,
    ConductanceLIF,
    LeakyIntegrator,
    LIFState,
    PiecewiseLinear,
    PoissonInput,
    SpikeArrayInput,
    SuperSpike,
)

from .helpers import tree_allclose


@pytest.fixture
def x64():
    """Runs a test in float64, so that trajectories compare with float64 numpy loops to
    rounding and no spike flips on a float32 near-tie at threshold."""
    with jax.enable_x64(True):
        yield


def _allclose(x, y, **tolerances):
    """`tree_allclose` that also compares PRNG keys (through their raw key data)."""

    def plain(leaf):
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jr.key_data(leaf)
        return leaf

    tree_allclose(jax.tree.map(plain, x), jax.tree.map(plain, y), **tolerances)


@eqx.filter_jit
def _scan(model, state, inputs, dt):
    """Runs `model.step` under jit + scan and returns (final state, outputs, every state).

    `eqx.filter_jit` keys its cache on the model's static configuration and `dt`, so tests
    that share a model and shapes compile once."""

    def body(s, x):
        s, out = model.step(s, x, dt=dt)
        return s, (out, s)

    final, (outputs, states) = jax.lax.scan(body, state, inputs)
    return final, outputs, states


# ---------------------------------------------------------------------------------------------
# Numpy references, written straight from the model equations (float64).
# ---------------------------------------------------------------------------------------------


def _lif_reference(inputs, *, tau_mem, v_th, tau_refrac, dt, reset, integrate_during_refrac):
    inputs = np.asarray(inputs, np.float64)
    alpha = math.exp(-dt / tau_mem)
    n_ref = round(tau_refrac / dt)
    v = np.zeros(inputs.shape[1:])
    ref = np.zeros(inputs.shape[1:], np.int64)
    vs, zs, refs = [], [], []
    for current in inputs:
        v_new = alpha * v + current
        if not integrate_during_refrac:
            v_new = np.where(ref > 0, v, v_new)
        ref = np.maximum(ref - 1, 0)
        z = (v_new >= v_th) & (ref == 0)
        v = v_new - v_th * z if reset == "subtract" else np.where(z, 0.0, v_new)
        ref = np.where(z, n_ref, ref)
        vs.append(v)
        zs.append(z.astype(np.float64))
        refs.append(ref)
    return np.stack(vs), np.stack(zs), np.stack(refs)


def _alif_reference(inputs, *, tau_mem, tau_adapt, v_th, beta, tau_refrac, dt):
    inputs = np.asarray(inputs, np.float64)
    alpha, rho = math.exp(-dt / tau_mem), math.exp(-dt / tau_adapt)
    n_ref = round(tau_refrac / dt)
    v = np.zeros(inputs.shape[1:])
    a = np.zeros(inputs.shape[1:])
    ref = np.zeros(inputs.shape[1:], np.int64)
    vs, as_, zs = [], [], []
    for current in inputs:
        v = alpha * v + current
        a = rho * a
        ref = np.maximum(ref - 1, 0)
        z = (v >= v_th + beta * a) & (ref == 0)
        v = v - v_th * z
        a = a + z
        ref = np.where(z, n_ref, ref)
        vs.append(v)
        as_.append(a)
        zs.append(z.astype(np.float64))
    return np.stack(vs), np.stack(as_), np.stack(zs)


def _conductance_reference(v0, inputs, *, p, dt):
    inputs = np.asarray(inputs, np.float64)
    v = np.asarray(v0, np.float64)
    g = np.zeros_like(v)
    ref = np.zeros(v.shape, np.int64)
    n_ref = round(p["tau_refrac"] / dt)
    resistance = p["tau_mem"] / p["capacitance"]  # MOhm
    vs, gs, zs = [], [], []
    for dg in inputs:
        g = g + dg
        current = g * (p["e_rev"] - v)  # nA
        v_inf = p["v_rest"] + resistance * current
        v_new = v_inf + (v - v_inf) * math.exp(-dt / p["tau_mem"])
        v = np.where(ref > 0, v, v_new)
        ref = np.maximum(ref - 1, 0)
        z = (v >= p["v_threshold"]) & (ref == 0)
        v = np.where(z, p["v_reset"], v)
        ref = np.where(z, n_ref, ref)
        g = g * math.exp(-dt / p["tau_syn"])
        vs.append(v)
        gs.append(g)
        zs.append(z.astype(np.float64))
    return np.stack(vs), np.stack(gs), np.stack(zs)


_CONDUCTANCE_PARAMS = dict(
    capacitance=20.0,
    tau_mem=20.0,
    v_rest=-70.0,
    v_reset=-70.0,
    v_threshold=-54.0,
    tau_refrac=5.0,
    tau_syn=5.0,
    e_rev=0.0,
)


# ---------------------------------------------------------------------------------------------
# LIF
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reset", "integrate_during_refractory", "dt"),
    [("subtract", True, 1.0), ("zero", True, 1.0), ("subtract", False, 0.5), ("zero", False, 1.0)],
)
def test_lif_matches_numpy_loop(getkey, x64, reset, integrate_during_refractory, dt):
    lif = LIF(reset=reset, integrate_during_refractory=integrate_during_refractory)
    inputs = jr.uniform(getkey(), (200, 16), maxval=0.12)
    final, spikes, states = _scan(lif, lif.init(16), inputs, dt)
    v_ref, z_ref, r_ref = _lif_reference(
        inputs,
        tau_mem=20.0,
        v_th=0.61,
        tau_refrac=5.0,
        dt=dt,
        reset=reset,
        integrate_during_refrac=integrate_during_refractory,
    )
    assert spikes.dtype == jnp.float64 and spikes.shape == (200, 16)
    assert z_ref.sum() > 20, "the test should exercise spikes and refractoriness"
    np.testing.assert_array_equal(spikes, z_ref)
    np.testing.assert_array_equal(states.refractory, r_ref)
    np.testing.assert_allclose(states.v, v_ref, rtol=1e-12, atol=1e-12)
    tree_allclose(final, jax.tree.map(lambda x: x[-1], states))


@pytest.mark.parametrize("current", [0.04, 0.07, 0.3])
def test_lif_closed_form_until_first_spike(current):
    # Constant input from rest: v_k = I (1 - alpha^k) / (1 - alpha) after k steps, and the
    # first spike is at the first k with v_k >= v_th.
    dt, tau, v_th = 1.0, 20.0, 0.61
    alpha = math.exp(-dt / tau)
    k_first = math.ceil(math.log(1 - v_th * (1 - alpha) / current) / math.log(alpha))
    lif = LIF(tau_mem=tau, v_threshold=v_th)
    _, spikes, states = _scan(lif, lif.init(1), jnp.full((k_first + 1, 1), current), dt)
    k = np.arange(1, k_first + 1)
    v_closed = current * (1 - alpha**k) / (1 - alpha)
    np.testing.assert_allclose(states.v[: k_first - 1, 0], v_closed[:-1], rtol=1e-5)
    assert np.flatnonzero(spikes[:, 0]).tolist() == [k_first - 1]
    np.testing.assert_allclose(states.v[k_first - 1, 0], v_closed[-1] - v_th, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("current", [0.05, 0.3])
@pytest.mark.parametrize("integrate_during_refractory", [True, False])
def test_lif_zero_reset_spike_times_closed_form(current, integrate_during_refractory):
    # With reset to zero the trajectory after a spike repeats the one from rest. If the
    # membrane integrates while refractory the interval is max(k_first, n_ref); if it is
    # clamped (GeNN's LIF) it is n_ref + k_first.
    dt, tau, v_th, tau_refrac = 1.0, 20.0, 0.61, 5.0
    alpha = math.exp(-dt / tau)
    k_first = math.ceil(math.log(1 - v_th * (1 - alpha) / current) / math.log(alpha))
    n_ref = round(tau_refrac / dt)
    interval = max(k_first, n_ref) if integrate_during_refractory else n_ref + k_first
    lif = LIF(
        tau_mem=tau,
        v_threshold=v_th,
        tau_refrac=tau_refrac,
        reset="zero",
        integrate_during_refractory=integrate_during_refractory,
    )
    _, spikes, _ = _scan(lif, lif.init(1), jnp.full((200, 1), current), dt)
    expected = list(range(k_first - 1, 200, interval))
    assert np.flatnonzero(spikes[:, 0]).tolist() == expected


@pytest.mark.parametrize(("dt", "tau_refrac"), [(1.0, 0.0), (1.0, 2.0), (1.0, 5.0), (0.1, 5.0)])
def test_lif_refractory_period(dt, tau_refrac):
    # A huge input makes the neuron fire whenever allowed: every round(tau_refrac/dt) steps
    # (every step without a refractory period), never more often.
    lif = LIF(tau_refrac=tau_refrac)
    _, spikes, states = _scan(lif, lif.init(3), jnp.full((200, 3), 10.0), dt)
    interval = max(round(tau_refrac / dt), 1)
    expected = np.zeros(200)
    expected[::interval] = 1.0
    np.testing.assert_array_equal(spikes, np.broadcast_to(expected[:, None], (200, 3)))
    assert int(states.refractory.max()) == round(tau_refrac / dt)


# ---------------------------------------------------------------------------------------------
# ALIF
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0174, 0.3])
def test_alif_matches_numpy_loop(getkey, x64, beta):
    params = dict(tau_mem=20.0, tau_adapt=200.0, v_th=0.6, beta=beta, tau_refrac=5.0, dt=1.0)
    alif = ALIF(tau_mem=20.0, v_threshold=0.6, tau_adapt=200.0, beta=beta, tau_refrac=5.0)
    inputs = jr.uniform(getkey(), (200, 16), maxval=0.15)
    _, spikes, states = _scan(alif, alif.init(16), inputs, 1.0)
    v_ref, a_ref, z_ref = _alif_reference(inputs, **params)
    assert z_ref.sum() > 20
    np.testing.assert_array_equal(spikes, z_ref)
    np.testing.assert_allclose(states.v, v_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(states.a, a_ref, rtol=1e-12, atol=1e-12)


def test_alif_threshold_adaptation():
    # Under constant drive an adapting neuron's intervals lengthen, a non-adapting one's do
    # not; a is the rho-filtered spike train and threshold() = v_th + beta a.
    dt, tau_adapt, steps = 1.0, 200.0, 400
    drive = jnp.full((steps, 1), 0.1)
    adapting = ALIF(tau_adapt=tau_adapt, beta=0.2)
    plain = ALIF(tau_adapt=tau_adapt, beta=0.0)
    _, z_adapt, s_adapt = _scan(adapting, adapting.init(1), drive, dt)
    _, z_plain, _ = _scan(plain, plain.init(1), drive, dt)
    isi_adapt = np.diff(np.flatnonzero(z_adapt[:, 0]))
    isi_plain = np.diff(np.flatnonzero(z_plain[:, 0]))
    assert abs(isi_plain[-5:].mean() - isi_plain[:5].mean()) <= 1.0
    assert isi_adapt[-5:].mean() > isi_adapt[:5].mean() + 2.0
    assert len(isi_adapt) < len(isi_plain)

    rho = math.exp(-dt / tau_adapt)
    spike_steps = np.flatnonzero(z_adapt[:, 0])
    t = np.arange(steps)[:, None]
    a_closed = np.where(t >= spike_steps[None, :], rho ** (t - spike_steps[None, :]), 0.0).sum(1)
    np.testing.assert_allclose(s_adapt.a[:, 0], a_closed, rtol=1e-4)
    last = ALIFState(*(x[-1] for x in s_adapt))
    np.testing.assert_allclose(adapting.threshold(last), 0.6 + 0.2 * last.a, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Surrogate gradients
# ---------------------------------------------------------------------------------------------


_SURROGATES = [
    (PiecewiseLinear(gamma=0.3), lambda x: 0.3 * np.maximum(0.0, 1.0 - np.abs(x))),
    (PiecewiseLinear(gamma=1.0), lambda x: np.maximum(0.0, 1.0 - np.abs(x))),
    (SuperSpike(beta=10.0), lambda x: 1.0 / (1.0 + 10.0 * np.abs(x)) ** 2),
    (SuperSpike(beta=2.0), lambda x: 1.0 / (1.0 + 2.0 * np.abs(x)) ** 2),
]


@pytest.mark.parametrize(("surrogate", "formula"), _SURROGATES)
def test_surrogate_value_and_derivatives(surrogate, formula):
    x = jnp.linspace(-2.0, 2.0, 41)

    @jax.jit
    def evaluate(x):
        value = surrogate(x)
        grad = jax.vmap(jax.grad(surrogate))(x)
        _, tangent = jax.jvp(surrogate, (x,), (jnp.full_like(x, 2.0),))
        return value, grad, tangent

    value, grad, tangent = evaluate(x)
    np.testing.assert_array_equal(value, (np.asarray(x) >= 0).astype(np.float32))
    expected = formula(np.asarray(x, np.float64))
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(tangent, 2.0 * expected, rtol=1e-6, atol=1e-7)


def test_surrogate_is_abstract():
    with pytest.raises(TypeError):
        AbstractSurrogate()


def test_lif_spike_gradient_is_eprop_pseudo_derivative():
    # One step from v0 with input I: v = alpha v0 + I, so dz/dI = psi(v), the e-prop
    # pseudo-derivative (0.3 / v_th) max(0, 1 - |v - v_th| / v_th), and 0 while refractory.
    # Spikes are elementwise, so the gradient of their sum is the vector of dz_i / dI_i.
    lif = LIF()
    v0 = np.array([0.0, 0.3, 0.55, 0.7, 1.5, 0.6, 0.6])
    refractory = np.array([0, 0, 0, 0, 0, 0, 3], np.int32)
    state = LIFState(v=jnp.asarray(v0, jnp.float32), refractory=jnp.asarray(refractory))

    @jax.jit
    def grad(current):
        return jax.grad(lambda c: lif.step(state, c, dt=1.0)[1].sum())(current)

    v = math.exp(-1.0 / 20.0) * v0 + 0.1
    psi = 0.3 / 0.61 * np.maximum(0.0, 1.0 - np.abs(v - 0.61) / 0.61) * (refractory == 0)
    assert np.count_nonzero(psi) == 5
    np.testing.assert_allclose(grad(jnp.full(7, 0.1)), psi, rtol=1e-5, atol=1e-7)


def test_alif_spike_gradient_wrt_adaptation():
    # dz/da0 = -beta rho psi, psi evaluated at v - A with A = v_th + beta rho a0.
    alif = ALIF(beta=0.5, tau_adapt=100.0)
    rho = math.exp(-1.0 / 100.0)
    alpha = math.exp(-1.0 / 20.0)
    v0, a0 = 0.8, 0.4

    def spike(a):
        state = ALIFState(v=jnp.array([v0]), a=a[None], refractory=jnp.zeros(1, jnp.int32))
        return alif.step(state, jnp.zeros(1), dt=1.0)[1][0]

    v, threshold = alpha * v0, 0.6 + 0.5 * rho * a0
    psi = 0.3 / 0.6 * max(0.0, 1.0 - abs(v - threshold) / 0.6)
    assert psi > 0
    np.testing.assert_allclose(jax.jit(jax.grad(spike))(jnp.array(a0)), -0.5 * rho * psi, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Conductance-based LIF
# ---------------------------------------------------------------------------------------------


def test_conductance_lif_matches_numpy_loop(getkey, x64):
    neuron = ConductanceLIF()
    state = neuron.init(32, key=getkey())
    dt = 0.1
    arrivals = jr.bernoulli(getkey(), 0.05, (400, 32))
    inputs = jnp.where(arrivals, 0.2, 0.0)  # uS
    _, spikes, states = _scan(neuron, state, inputs, dt)
    v_ref, g_ref, z_ref = _conductance_reference(state.v, inputs, p=_CONDUCTANCE_PARAMS, dt=dt)
    assert z_ref.sum() >= 10
    np.testing.assert_array_equal(spikes, z_ref)
    np.testing.assert_allclose(states.g, g_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(states.v, v_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dt", [0.1, 1.0])
def test_conductance_decay_and_relaxation_closed_form(dt):
    # One increment at step 0, then nothing: g after step k is dg exp(-(k+1) dt / tau_syn).
    # Without input the membrane relaxes exactly: v_k = v_rest + (v0 - v_rest) e^{-k dt/tau_m}.
    neuron = ConductanceLIF(v_init_mean=-65.0, v_init_std=0.0)
    steps = 200
    increments = jnp.zeros((steps, 1)).at[0].set(0.05)
    _, _, states = _scan(neuron, neuron.init(1), increments, dt)
    k = np.arange(1, steps + 1)
    np.testing.assert_allclose(states.g[:, 0], 0.05 * np.exp(-k * dt / 5.0), rtol=1e-5, atol=1e-12)

    _, spikes, states = _scan(neuron, neuron.init(1), jnp.zeros((steps, 1)), dt)
    v_closed = -70.0 + 5.0 * np.exp(-k * dt / 20.0)
    np.testing.assert_allclose(states.v[:, 0], v_closed, rtol=1e-6)
    assert spikes.sum() == 0


def test_conductance_constant_current_closed_form():
    # A constant offset current below rheobase: v_k = v_inf + (v0 - v_inf) e^{-k dt/tau_m},
    # v_inf = v_rest + (tau_m / C) I.
    neuron = ConductanceLIF(i_offset=10.0, v_init_std=0.0)  # 10 nA * 1 MOhm = 10 mV
    steps, dt = 300, 0.5
    _, spikes, states = _scan(neuron, neuron.init(2), jnp.zeros((steps, 2)), dt)
    k = np.arange(1, steps + 1)
    v_closed = -60.0 + (-60.0 - (-60.0)) * np.exp(-k * dt / 20.0)
    np.testing.assert_allclose(states.v[:, 0], v_closed, rtol=1e-6)
    neuron = ConductanceLIF(i_offset=10.0, v_init_mean=-75.0, v_init_std=0.0)
    _, _, states = _scan(neuron, neuron.init(2), jnp.zeros((steps, 2)), dt)
    np.testing.assert_allclose(states.v[:, 1], -60.0 - 15.0 * np.exp(-k * dt / 20.0), rtol=1e-5)
    assert spikes.sum() == 0


@pytest.mark.parametrize("dt", [0.1, 1.0])
def test_conductance_refractory_clamps_membrane(dt):
    # A strong suprathreshold current: after each spike v stays at v_reset for n_ref steps,
    # so consecutive spikes are more than n_ref steps apart.
    neuron = ConductanceLIF(i_offset=200.0, v_init_mean=-55.0, v_init_std=0.0)
    n_ref = round(5.0 / dt)
    _, spikes, states = _scan(neuron, neuron.init(1), jnp.zeros((400, 1)), dt)
    spike_steps = np.flatnonzero(spikes[:, 0])
    assert len(spike_steps) >= 2
    for s in spike_steps:
        clamped = states.v[s : s + n_ref + 1, 0]
        np.testing.assert_array_equal(clamped, np.full(len(clamped), -70.0, np.float32))
    assert np.all(np.diff(spike_steps) > n_ref)


def test_conductance_lif_initial_state(getkey):
    neuron = ConductanceLIF()
    state = neuron.init(20_000, key=getkey())
    v = np.asarray(state.v, np.float64)
    assert abs(v.mean() - (-60.0)) < 5 * 5.0 / math.sqrt(v.size)
    assert abs(v.std() - 5.0) < 0.15
    assert np.all(state.g == 0) and np.all(state.refractory == 0)
    with pytest.raises(ValueError, match="key"):
        neuron.init(3)
    deterministic = ConductanceLIF(v_init_std=0.0).init((2, 3))
    np.testing.assert_array_equal(deterministic.v, np.full((2, 3), -60.0))


# ---------------------------------------------------------------------------------------------
# Leaky integrator
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [0.0, 0.2, "array"])
def test_leaky_integrator_closed_form(bias):
    dt, tau, steps = 1.0, 20.0, 200
    if bias == "array":
        bias = jnp.array([0.0, -0.1, 0.3])
    readout = LeakyIntegrator(tau_mem=tau, bias=bias)
    _, outputs, states = _scan(readout, readout.init(3), jnp.full((steps, 3), 0.5), dt)
    kappa = math.exp(-dt / tau)
    k = np.arange(1, steps + 1)[:, None]
    drive = 0.5 + np.broadcast_to(np.asarray(bias, np.float64), (3,))[None, :]
    np.testing.assert_allclose(outputs, drive * (1 - kappa**k) / (1 - kappa), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(outputs, states.v)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "dt"), [(20.0, 1.0), (5.0, 0.1), (152.8, 1.0)])
def test_poisson_count_statistics(getkey, rate, dt):
    n, steps = 20_000, 200
    source = PoissonInput()
    _, spikes, _ = _scan(source, source.init(n, key=getkey()), jnp.full((steps, n), rate), dt)
    counts = np.asarray(spikes, np.float64).sum(0)
    p = 1 - math.exp(-rate * dt / 1000)
    mean, var = steps * p, steps * p * (1 - p)
    assert abs(counts.mean() - mean) < 5 * math.sqrt(var / n)
    # Standard error of a sample variance: sqrt((mu4 - var^2 (n-3)/(n-1)) / n) ~ var sqrt(2/n)
    # for these counts; allow a generous 6 of them plus the Binomial's excess kurtosis.
    assert abs(counts.var() - var) < 6 * var * math.sqrt(2 / n) + 6 * math.sqrt(mean / n)


def test_poisson_per_neuron_rates_and_reproducibility(getkey):
    source = PoissonInput()
    rates = jnp.concatenate([jnp.zeros(1000), jnp.full(1000, 50.0), jnp.full(1000, 1e9)])
    key = getkey()
    _, spikes, states = _scan(source, source.init(3000, key=key), jnp.tile(rates, (100, 1)), 1.0)
    assert spikes[:, :1000].sum() == 0
    assert np.all(spikes[:, 2000:] == 1)
    frac = float(spikes[:, 1000:2000].mean())
    assert abs(frac - (1 - math.exp(-0.05))) < 0.01
    np.testing.assert_array_equal(states.spikes[-1], spikes[-1])
    _, again, _ = _scan(source, source.init(3000, key=key), jnp.tile(rates, (100, 1)), 1.0)
    np.testing.assert_array_equal(spikes, again)
    assert not np.array_equal(spikes[0, 1000:2000], spikes[1, 1000:2000])


def test_spike_array_input_replays_then_zeros(getkey):
    recorded = jr.bernoulli(getkey(), 0.3, (20, 5))
    source = SpikeArrayInput(recorded)
    state = source.init()
    outputs = []
    for _ in range(25):
        state, spikes = source.step(state, None, dt=1.0)
        outputs.append(spikes)
    outputs = np.stack(outputs)
    assert outputs.dtype == np.float32
    np.testing.assert_array_equal(outputs[:20], np.asarray(recorded, np.float32))
    np.testing.assert_array_equal(outputs[20:], 0.0)
    assert int(state.t) == 25


# ---------------------------------------------------------------------------------------------
# Shared behaviour: jit vs no-jit, vmap, batched states, validation.
# ---------------------------------------------------------------------------------------------


def _cases():
    return {
        "lif": (LIF(), lambda key, shape: LIF().init(shape), 0.1),
        "lif_zero": (LIF(reset="zero"), lambda key, shape: LIF().init(shape), 0.1),
        "alif": (ALIF(beta=0.2), lambda key, shape: ALIF().init(shape), 0.1),
        "conductance": (
            ConductanceLIF(),
            lambda key, shape: ConductanceLIF().init(shape, key=key),
            0.05,
        ),
        "leaky": (LeakyIntegrator(bias=0.1), lambda key, shape: LeakyIntegrator().init(shape), 0.1),
        "poisson": (PoissonInput(), lambda key, shape: PoissonInput().init(shape, key=key), 80.0),
    }


_CASE_NAMES = list(_cases())


def _inputs(key, name, shape):
    model, _, scale = _cases()[name]
    if name == "conductance":
        return jnp.where(jr.bernoulli(key, 0.3, shape), scale, 0.0)
    return scale * jr.uniform(key, shape, maxval=2.0)


@pytest.mark.parametrize("name", _CASE_NAMES)
def test_jit_matches_no_jit(getkey, name):
    model, init, _ = _cases()[name]
    state = init(getkey(), 4)
    inputs = _inputs(getkey(), name, (10, 4))
    jitted = _scan(model, state, inputs, 1.0)[:2]
    with jax.disable_jit():
        carry, outs = state, []
        for x in inputs:
            carry, out = model.step(carry, x, dt=1.0)
            outs.append(out)
        eager = (carry, jnp.stack(outs))
    _allclose(jitted, eager, rtol=1e-5, atol=1e-5)


def _index(tree, b):
    return jax.tree.map(lambda x: x[b], tree)


@pytest.mark.parametrize("name", _CASE_NAMES)
def test_vmap_and_batched_state_agree(getkey, name):
    model, init, _ = _cases()[name]
    batch, n, steps = 3, 5, 10
    keys = jr.split(getkey(), batch)
    inputs = _inputs(getkey(), name, (steps, batch, n))
    states = jax.vmap(lambda k: init(k, n))(keys)

    def run_one(state, xs):
        return jax.lax.scan(lambda s, x: model.step(s, x, dt=1.0), state, xs)

    vmapped = jax.jit(jax.vmap(run_one, in_axes=(0, 1), out_axes=(0, 1)))(states, inputs)
    if name == "poisson":  # one key cannot stand for a batch of keys: compare per example
        run_jit = jax.jit(run_one)
        for b in range(batch):
            state_b, out_b = run_jit(_index(states, b), inputs[:, b])
            _allclose(_index(vmapped[0], b), state_b)
            _allclose(vmapped[1][:, b], out_b)
    else:  # the same steps on a [batch, n] state, without vmap
        _allclose(jax.jit(run_one)(states, inputs), vmapped)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: LIF(tau_mem=0.0), "tau_mem"),
        (lambda: LIF(tau_mem=-1.0), "tau_mem"),
        (lambda: LIF(v_threshold=0.0), "v_threshold"),
        (lambda: LIF(tau_refrac=-1.0), "tau_refrac"),
        (lambda: LIF(reset="soft"), "reset"),
        (lambda: LIF(surrogate=lambda x: x), "surrogate"),
        (lambda: ALIF(tau_adapt=0.0), "tau_adapt"),
        (lambda: ALIF(beta=-0.1), "beta"),
        (lambda: ALIF(tau_mem=float("nan")), "tau_mem"),
        (lambda: ConductanceLIF(capacitance=0.0), "capacitance"),
        (lambda: ConductanceLIF(tau_syn=-5.0), "tau_syn"),
        (lambda: ConductanceLIF(v_threshold=-80.0), "v_threshold"),
        (lambda: ConductanceLIF(v_init_std=-1.0), "v_init_std"),
        (lambda: LeakyIntegrator(tau_mem=0.0), "tau_mem"),
        (lambda: PiecewiseLinear(gamma=-1.0), "gamma"),
        (lambda: SpikeArrayInput(jnp.zeros(4, bool)), "spikes"),
        (lambda: LIF().init(-1), "n"),
        (lambda: LIF().init(2.5), "n"),
    ],
)
def test_bad_parameters_raise(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize("name", _CASE_NAMES)
@pytest.mark.parametrize("dt", [0.0, -1.0, float("inf")])
def test_bad_dt_raises(getkey, name, dt):
    model, init, _ = _cases()[name]
    with pytest.raises(ValueError, match="dt: expected"):
        model.step(init(getkey(), 4), jnp.zeros(4), dt=dt)


@pytest.mark.parametrize("name", _CASE_NAMES)
def test_bad_input_shape_raises(getkey, name):
    model, init, _ = _cases()[name]
    with pytest.raises(ValueError, match=r"input: expected shape \(4,\).*got \(5,\)"):
        model.step(init(getkey(), 4), jnp.zeros(5), dt=1.0)
    # TypeError from the model, or from jaxtyping when runtime type checking is on.
    with pytest.raises(TypeError, match="input"):
        model.step(init(getkey(), 4), jnp.zeros(4, jnp.int32), dt=1.0)


def test_spike_array_input_rejects_input():
    source = SpikeArrayInput(jnp.zeros((3, 2), bool))
    # ValueError from the model, or a TypeError from jaxtyping when type checking is on.
    with pytest.raises((ValueError, TypeError), match="input"):
        source.step(source.init(), jnp.zeros(2), dt=1.0)


def test_models_are_pytrees_with_static_config():
    # Float parameters are leaves (so filter_jit treats them as static Python values and
    # filter_grad can differentiate array-valued ones); string/bool config is static.
    lif = LIF(tau_mem=jnp.array(20.0), reset="zero")
    leaves = jax.tree.leaves(lif)
    assert any(isinstance(x, jax.Array) for x in leaves)
    assert "zero" not in leaves

    def final_v(tau):  # builds the Module from a tracer: __check_init__ must let it through
        state = LIFState(v=jnp.ones(2), refractory=jnp.zeros(2, jnp.int32))
        return jnp.sum(LIF(tau_mem=tau).step(state, jnp.full(2, 0.3), dt=1.0)[0].v)

    # v = exp(-1 / tau) + 0.3 - v_th (a spike, outside the surrogate's support), so
    # d(sum v)/d tau = 2 exp(-1 / tau) / tau^2.
    expected = 2 * math.exp(-1 / 20) / 400
    np.testing.assert_allclose(jax.jit(jax.grad(final_v))(jnp.array(20.0)), expected, rtol=1e-5)
