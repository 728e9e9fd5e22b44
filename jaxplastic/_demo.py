"""`jaxplastic demo`: a sparse recurrent LIF network driven by Poisson input."""

from __future__ import annotations

import time
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._connectivity import RaggedConnectivity, fixed_probability
from ._neurons import LIF, LIFState, PoissonInput, PoissonInputState
from ._propagate import propagate
from ._simulate import simulate


class DemoState(NamedTuple):
    poisson: PoissonInputState
    lif: LIFState
    spikes: jax.Array  # [hidden] spikes of the previous step, delivered this step


class DemoNetwork(eqx.Module):
    """Poisson input -> sparse recurrent LIF population, both projections ragged."""

    inputs: PoissonInput
    lif: LIF
    w_in: RaggedConnectivity
    w_rec: RaggedConnectivity
    rate_hz: float

    def step(self, state: DemoState, _, *, dt: float):
        poisson, input_spikes = self.inputs.step(
            state.poisson, jnp.full(self.w_in.n_pre, self.rate_hz), dt=dt
        )
        current = propagate(self.w_in, input_spikes) + propagate(self.w_rec, state.spikes)
        lif, spikes = self.lif.step(state.lif, current, dt=dt)
        return DemoState(poisson, lif, spikes), (input_spikes.sum(), spikes.sum())


def run_demo(
    *,
    n_input: int = 1000,
    n_hidden: int = 1000,
    p_in: float = 0.05,
    p_rec: float = 0.02,
    rate_hz: float = 20.0,
    w_in: float = 0.03,
    w_rec: float = 0.02,
    steps: int = 2000,
    dt: float = 1.0,
    seed: int = 0,
) -> dict:
    """Builds and runs the demo network; returns rates, synapse counts and speed."""
    k_in, k_rec, k_poisson = jr.split(jr.key(seed), 3)
    net = DemoNetwork(
        inputs=PoissonInput(),
        lif=LIF(),
        w_in=fixed_probability(k_in, n_input, n_hidden, p_in, weight=w_in),
        w_rec=fixed_probability(
            k_rec,
            n_hidden,
            n_hidden,
            p_rec,
            autapses=False,
            weight=jax.nn.initializers.normal(w_rec),
        ),
        rate_hz=rate_hz,
    )
    state = DemoState(
        net.inputs.init(n_input, key=k_poisson), net.lif.init(n_hidden), jnp.zeros(n_hidden)
    )
    t0 = time.perf_counter()
    jax.block_until_ready(simulate(net, state, None, dt=dt, num_steps=steps))
    compile_and_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = jax.block_until_ready(simulate(net, state, None, dt=dt, num_steps=steps))
    elapsed = time.perf_counter() - t0
    in_counts, hidden_counts = (np.asarray(x) for x in result.outputs)
    seconds = steps * dt / 1000.0
    return {
        "n_input": n_input,
        "n_hidden": n_hidden,
        "input_synapses": int(net.w_in.num_synapses),
        "input_capacity": net.w_in.n_pre * net.w_in.capacity,
        "recurrent_synapses": int(net.w_rec.num_synapses),
        "recurrent_capacity": net.w_rec.n_pre * net.w_rec.capacity,
        "input_rate_hz": float(in_counts.sum() / n_input / seconds),
        "hidden_rate_hz": float(hidden_counts.sum() / n_hidden / seconds),
        "steps": steps,
        "model_seconds": seconds,
        "wall_seconds": elapsed,
        "first_run_seconds": compile_and_first,
        "steps_per_second": steps / elapsed,
        "backend": jax.default_backend(),
    }
