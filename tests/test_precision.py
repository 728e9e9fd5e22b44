"""Every float product in the library's learning and propagation paths runs at full float32.

A GPU runs a default-precision float32 product in TF32 (10 mantissa bits); on a CPU the
precision setting changes nothing, so these tests read it from the lowered program: every
``dot_general`` must ask for ``HIGHEST``. (On an H200 a default-precision readout and trace
sum made online and factorized e-prop differ by 2e-4.)
"""

import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import jaxplastic as jp
from jaxplastic import ALIF, LIF
from jaxplastic.learning import eprop
from jaxplastic.models import recurrent_classifier

N_IN, N_HIDDEN, N_OUT, BATCH, STEPS = 12, 10, 3, 2, 5


def _dots(lowered) -> list[str]:
    return [line for line in lowered.as_text().splitlines() if "dot_general" in line]


def _assert_highest(dots: list[str]) -> None:
    assert dots, "expected matrix products in the program"
    loose = [d.strip()[:200] for d in dots if "HIGHEST" not in d]
    assert not loose, f"{len(loose)} of {len(dots)} products below HIGHEST precision: {loose}"


@pytest.mark.parametrize("mode", ["online", "factorized"])
@pytest.mark.parametrize("kind", ["dense", "ragged"])
@pytest.mark.parametrize("neuron", [ALIF, LIF])
def test_eprop_products_are_full_float32(mode, kind, neuron):
    model = recurrent_classifier(
        N_IN, N_OUT, n_hidden=N_HIDDEN, neuron=neuron(), p_in=0.5, p_rec=0.5, key=jr.key(0)
    )
    if kind == "dense":
        model = model.to_dense()
    spikes = jnp.zeros((BATCH, STEPS, N_IN), jnp.uint8)
    labels = jnp.zeros((BATCH,), jnp.int32)
    rule = eprop(mode=mode)
    lowered = jax.jit(lambda m, s, y: rule.gradients(m, s, labels=y)).lower(model, spikes, labels)
    _assert_highest(_dots(lowered))


def test_propagate_gradient_is_full_float32():
    conn = jp.fixed_probability(jr.key(0), 20, 15, 0.3, weight=jax.nn.initializers.normal(1.0))
    spikes = jnp.ones((3, 20), jnp.float32)

    def loss(weight, spikes):
        return jnp.sum(jp.propagate(conn, spikes, weight=weight, impl="xla") ** 2)

    lowered = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(conn.weight, spikes)
    _assert_highest(_dots(lowered))
