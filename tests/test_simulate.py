"""`simulate` against a plain Python loop of `step`, plus its validation and tracing."""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxplastic._neurons import (
    ALIF,
    LIF,
    ConductanceLIF,
    PiecewiseLinear,
    PoissonInput,
    SpikeArrayInput,
)
from jaxplastic._simulate import SimulationResult, simulate

from .helpers import tree_allclose


def _loop(model, state, inputs, dt):
    outputs, states = [], []
    for x in inputs:
        state, out = model.step(state, x, dt=dt)
        outputs.append(out)
        states.append(state)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    return state, jnp.stack(outputs), stacked


@pytest.mark.parametrize("model", [LIF(), ALIF(beta=0.2)], ids=["lif", "alif"])
def test_simulate_matches_step_loop(getkey, model):
    inputs = jr.uniform(getkey(), (40, 8), maxval=0.2)
    state = model.init(8)
    result = simulate(model, state, inputs, dt=1.0, record=("v", "refractory"))
    assert isinstance(result, SimulationResult)
    final, spikes, records = result
    loop_final, loop_spikes, loop_states = _loop(model, state, inputs, 1.0)
    assert loop_spikes.sum() > 0
    tree_allclose(final, loop_final)
    tree_allclose(spikes, loop_spikes)
    assert set(records) == {"v", "refractory"}
    tree_allclose(records["v"], loop_states.v)
    tree_allclose(records["refractory"], loop_states.refractory)


def test_simulate_records_single_name_and_nothing(getkey):
    neuron = ConductanceLIF()
    state = neuron.init(5, key=getkey())
    inputs = jnp.full((30, 5), 0.01)
    _, _, records = simulate(neuron, state, inputs, dt=0.1, record="g")
    assert list(records) == ["g"] and records["g"].shape == (30, 5)
    _, spikes, nothing = simulate(neuron, state, inputs, dt=0.1)
    assert nothing == {} and spikes.shape == (30, 5)


class _CounterState(NamedTuple):
    total: jax.Array
    steps: jax.Array


class _Accumulator:
    """Not a Module: any object with `step` works. Counts how often `step` is traced."""

    def __init__(self):
        self.traces = 0

    def step(self, state, inputs, *, dt):
        self.traces += 1
        total = state.total + dt * (inputs["a"] + inputs["b"].sum(-1))
        return _CounterState(total, state.steps + 1), {"total": total, "scaled": 2 * total}


def test_simulate_any_object_pytree_inputs_and_outputs():
    model = _Accumulator()
    state = _CounterState(jnp.zeros(3), jnp.zeros((), jnp.int32))
    inputs = {"a": jnp.ones((10, 3)), "b": jnp.ones((10, 3, 2))}
    final, outputs, records = simulate(model, state, inputs, dt=0.5, record=["steps"])
    np.testing.assert_allclose(final.total, np.full(3, 15.0))
    assert int(final.steps) == 10
    np.testing.assert_allclose(outputs["total"][:, 0], 1.5 * np.arange(1, 11))
    np.testing.assert_allclose(outputs["scaled"], 2 * outputs["total"])
    np.testing.assert_array_equal(records["steps"], np.arange(1, 11))


def test_simulate_compiles_once_per_shape():
    model = _Accumulator()
    state = _CounterState(jnp.zeros(3), jnp.zeros((), jnp.int32))
    inputs = {"a": jnp.ones((10, 3)), "b": jnp.ones((10, 3, 2))}
    simulate(model, state, inputs, dt=1.0)
    traces = model.traces
    simulate(model, state, jax.tree.map(lambda x: 3 * x, inputs), dt=1.0)
    simulate(model, state._replace(total=jnp.ones(3)), inputs, dt=1.0)
    assert model.traces == traces, "new values of the same shapes must not retrace"
    simulate(model, state, {"a": jnp.ones((7, 3)), "b": jnp.ones((7, 3, 2))}, dt=1.0)
    assert model.traces > traces, "a new number of steps is a new shape"


def test_simulate_without_inputs():
    recorded = jnp.eye(4, dtype=bool)
    source = SpikeArrayInput(recorded)
    final, spikes, _ = simulate(source, source.init(), None, dt=1.0, num_steps=6)
    np.testing.assert_array_equal(spikes[:4], np.eye(4, dtype=np.float32))
    np.testing.assert_array_equal(spikes[4:], 0.0)
    assert int(final.t) == 6


def test_simulate_poisson_key_is_threaded(getkey):
    source = PoissonInput()
    rates = jnp.full((50, 1000), 100.0)
    final, spikes, _ = simulate(source, source.init(1000, key=getkey()), rates, dt=1.0)
    p = 1 - math.exp(-0.1)
    assert abs(float(spikes.mean()) - p) < 5 * math.sqrt(p * (1 - p) / spikes.size)
    again = simulate(source, final, rates, dt=1.0).outputs
    assert not np.array_equal(spikes, again), "the final state carries the advanced key"


def test_simulate_no_jit_smoke(getkey):
    lif = LIF()
    inputs = jr.uniform(getkey(), (5, 3), maxval=0.5)
    jitted = simulate(lif, lif.init(3), inputs, dt=1.0, record="v")
    with jax.disable_jit():
        eager = simulate(lif, lif.init(3), inputs, dt=1.0, record="v")
    tree_allclose(tuple(jitted), tuple(eager))


def test_simulate_under_vmap_and_batched_state(getkey):
    lif = LIF()
    inputs = jr.uniform(getkey(), (30, 4, 6), maxval=0.2)  # [time, batch, n]
    batched = simulate(lif, lif.init((4, 6)), inputs, dt=1.0)
    out_axes = SimulationResult(state=0, outputs=1, records=0)
    vmapped = jax.vmap(
        lambda x: simulate(lif, lif.init(6), x, dt=1.0), in_axes=1, out_axes=out_axes
    )(inputs)
    tree_allclose(batched, vmapped)


def test_simulate_bptt_gradient_closed_form():
    # Below threshold v_T = sum_t alpha^(T-1-t) I_t, so dv_T/dI_t = alpha^(T-1-t). (A zero
    # surrogate removes the gradient that would otherwise flow through the subtractive
    # reset, since the triangular surrogate is non-zero for all 0 < v < 2 v_th.)
    lif = LIF(surrogate=PiecewiseLinear(gamma=0.0))
    steps = 25

    def final_v(inputs):
        return simulate(lif, lif.init(1), inputs, dt=1.0).state.v.sum()

    grad = jax.grad(final_v)(jnp.full((steps, 1), 0.01))
    alpha = math.exp(-1.0 / 20.0)
    np.testing.assert_allclose(grad[:, 0], alpha ** np.arange(steps - 1, -1, -1), rtol=1e-5)


def test_simulate_gradient_through_spikes_is_finite_and_nonzero(getkey):
    alif = ALIF()
    inputs = jr.uniform(getkey(), (40, 8), maxval=0.15)

    def rate(scale):
        return simulate(alif, alif.init(8), scale * inputs, dt=1.0).outputs.mean()

    value, grad = jax.value_and_grad(rate)(1.0)
    assert value > 0 and np.isfinite(grad) and grad > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(dt=0.0), ValueError, "dt: expected"),
        (dict(dt=-0.1), ValueError, "dt: expected"),
        (dict(dt=1.0, num_steps=7), ValueError, "num_steps: expected 10"),
        (dict(dt=1.0, num_steps=-1), ValueError, "num_steps: expected an int"),
        (dict(dt=1.0, record=("w",)), ValueError, "record: expected names of fields of LIFState"),
        (dict(dt=1.0, inputs=None), ValueError, "num_steps: expected an int"),
        (dict(dt=1.0, inputs=(jnp.ones((10, 2)), jnp.ones((9, 2)))), ValueError, "leading"),
        (dict(dt=1.0, inputs=jnp.ones((10, 3))), ValueError, r"input: expected shape \(2,\)"),
        (dict(dt=1.0, model=object()), TypeError, "model"),
    ],
)
def test_simulate_validation(kwargs, error, match):
    lif = LIF()
    arguments = dict(model=lif, state=lif.init(2), inputs=jnp.ones((10, 2)))
    arguments.update(kwargs)
    model, state, inputs = arguments.pop("model"), arguments.pop("state"), arguments.pop("inputs")
    with pytest.raises(error, match=match):
        simulate(model, state, inputs, **arguments)
