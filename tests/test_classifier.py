"""Recurrent classifiers: construction, the dense twin, forward simulation, and training."""

import math
import runpy
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import jaxplastic
from jaxplastic.datasets import load
from jaxplastic.learning import eprop, train_step
from jaxplastic.models import (
    ClassifierState,
    DenseClassifier,
    RecurrentClassifier,
    accuracy,
    dense_classifier,
    recurrent_classifier,
)

ROOT = Path(__file__).resolve().parents[1]


def _small(key, neuron="lif", **kwargs):
    # The sizes of tests/test_eprop.py, so that both files share compiled kernels.
    kwargs = {"p_in": 0.5, "p_rec": 0.5, "padding": 1.5, "weight_gain": 3.0, **kwargs}
    return recurrent_classifier(20, 3, n_hidden=16, neuron=neuron, key=key, **kwargs)


def test_defaults_follow_models_md(getkey):
    model = recurrent_classifier(784, 10, key=getkey())
    assert isinstance(model.hidden, jaxplastic.LIF)
    assert (model.n_in, model.n_hidden, model.n_out) == (784, 512, 10)
    assert model.hidden.v_threshold == 0.61 and model.hidden.tau_mem == 20.0
    assert model.hidden.tau_refrac == 5.0 and model.hidden.reset == "subtract"
    assert model.hidden.integrate_during_refractory
    assert model.tau_out == 20.0
    # 1 % density, no autapses, weights Normal(0, 1/sqrt(n_pre)), zero bias.
    density = float(model.input.num_synapses) / (784 * 512)
    assert 0.008 < density < 0.012
    rec = model.recurrent
    assert not bool(jnp.any(rec.post == jnp.arange(512)[:, None]))
    live = model.input.weight[model.input.alive]
    assert abs(float(jnp.std(live)) * math.sqrt(784) - 1.0) < 0.1
    assert abs(float(jnp.std(model.w_out)) * math.sqrt(512) - 1.0) < 0.1
    assert float(jnp.max(jnp.abs(model.b_out))) == 0.0

    alif = recurrent_classifier(784, 10, neuron="alif", key=getkey()).hidden
    assert isinstance(alif, jaxplastic.ALIF)
    assert (alif.v_threshold, alif.tau_adapt, alif.beta, alif.tau_refrac) == (
        0.6,
        2000.0,
        0.0174,
        5.0,
    )


def test_dense_constructor(getkey):
    model = dense_classifier(30, 4, n_hidden=32, neuron="alif", key=getkey())
    assert model.w_in.shape == (30, 32) and model.w_rec.shape == (32, 32)
    assert float(jnp.max(jnp.abs(jnp.diagonal(model.w_rec)))) == 0.0
    assert model(jnp.zeros((2, 5, 30))).shape == (2, 4)


def test_dense_twin_runs_the_same_network(getkey):
    model = _small(getkey(), "alif", padding=2.0)
    twin = model.to_dense()
    assert isinstance(twin, DenseClassifier)
    np.testing.assert_array_equal(twin.w_in, model.input.to_dense())
    spikes = jr.bernoulli(getkey(), 0.2, (3, 30, 20))
    a, b = model.simulate(spikes), twin.simulate(spikes)
    assert float(jnp.mean(a.spikes)) > 0.01
    np.testing.assert_array_equal(a.spikes, b.spikes)
    np.testing.assert_allclose(a.readout, b.readout, rtol=1e-5, atol=1e-5)


def test_call_equals_simulate_and_manual_steps(getkey):
    model = _small(getkey())
    spikes = jr.bernoulli(getkey(), 0.2, (2, 25, 20)).astype(jnp.uint8)
    out = model.simulate(spikes)
    assert out.spikes.shape == (2, 25, 16) and out.readout.shape == (2, 25, 3)
    np.testing.assert_allclose(model(spikes), out.prediction, rtol=1e-5)
    np.testing.assert_allclose(jnp.sum(out.prediction, axis=-1), 25.0, rtol=1e-5)
    state = model.init(2)
    assert isinstance(state, ClassifierState)
    step = eqx.filter_jit(lambda m, s, x: m.step(s, x, dt=1.0))
    for t in range(25):
        state, (z, v) = step(model, state, spikes[:, t])
        np.testing.assert_array_equal(z, out.spikes[:, t])
        np.testing.assert_allclose(v, out.readout[:, t], rtol=1e-5, atol=1e-6)
    # One unbatched example is the first row of the batch.
    np.testing.assert_allclose(model(spikes[0]), out.prediction[0], rtol=1e-5)


def test_readout_is_the_leaky_integrator(getkey):
    model = _small(getkey())
    model = eqx.tree_at(lambda m: m.b_out, model, jnp.array([0.1, -0.2, 0.3]))
    readout = jaxplastic.LeakyIntegrator(tau_mem=model.tau_out, bias=model.b_out)
    z = jr.bernoulli(getkey(), 0.5, (2, 16)).astype(jnp.float32)
    v = jr.normal(getkey(), (2, 3))
    _, expected = readout.step(jaxplastic.LeakyIntegratorState(v=v), z @ model.w_out, dt=1.0)
    np.testing.assert_allclose(model.readout_step(v, z, dt=1.0), expected, rtol=1e-6)


def test_trainable_spec(getkey):
    for model in (_small(getkey()), _small(getkey()).to_dense()):
        params = eqx.filter(model, model.trainable())
        leaves = jax.tree.leaves(params)
        assert len(leaves) == 4
        assert {id(x) for x in leaves} == {id(x) for x in model._weights()}


def test_construction_errors(getkey):
    model = _small(getkey())
    with pytest.raises(ValueError, match="w_out"):
        RecurrentClassifier(
            model.input, model.recurrent, model.w_out[:-1], model.b_out, model.hidden
        )
    with pytest.raises(ValueError, match="b_out"):
        RecurrentClassifier(
            model.input, model.recurrent, model.w_out, model.b_out[:-1], model.hidden
        )
    with pytest.raises(ValueError, match="recurrent"):
        RecurrentClassifier(model.input, model.input, model.w_out, model.b_out, model.hidden)
    with pytest.raises(ValueError, match="tau_out"):
        RecurrentClassifier(
            model.input, model.recurrent, model.w_out, model.b_out, model.hidden, tau_out=0.0
        )
    with pytest.raises(TypeError, match="hidden"):
        RecurrentClassifier(
            model.input, model.recurrent, model.w_out, model.b_out, jaxplastic.LeakyIntegrator()
        )
    with pytest.raises(ValueError, match="neuron"):
        recurrent_classifier(20, 3, n_hidden=16, neuron="izhikevich", key=getkey())
    with pytest.raises(ValueError, match="spikes"):
        model(jnp.zeros((2, 10, 21)))


def test_accuracy(getkey):
    model = _small(getkey())
    spikes = jr.bernoulli(getkey(), 0.2, (6, 20, 20))
    predicted = jnp.argmax(model(spikes), axis=-1)
    assert float(accuracy(model, spikes, predicted)) == 1.0
    assert float(accuracy(model, spikes, (predicted + 1) % 3)) == 0.0


# -- training on the offline dataset -----------------------------------------------------------


@pytest.mark.standard_promotion
def test_training_on_offline_mnist(getkey):
    """A sparse (10 %) 784-64-10 LIF network, 512 training digits, 4 epochs of online e-prop."""
    num_steps = 40
    train = load("mnist_offline", num_steps=num_steps)
    train = train.subset(np.random.default_rng(0).permutation(len(train))[:512])
    test = load("mnist_offline", split="test", num_steps=num_steps)
    test_spikes, test_labels = next(test.batches(len(test), seed=0, shuffle=False))

    model = recurrent_classifier(
        784, 10, n_hidden=64, p_in=0.1, p_rec=0.1, weight_gain=2.0, key=getkey()
    )
    optimizer = optax.adam(5e-3)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    rule = eprop()
    epoch_losses = []
    for epoch in range(4):
        losses = []
        for batch in train.batches(32, seed=epoch, drop_remainder=True):
            model, opt_state, info = train_step(
                model, opt_state, batch, getkey(), optimizer=optimizer, rule=rule
            )
            losses.append(float(info.loss))
        epoch_losses.append(np.mean(losses))
    assert epoch_losses[-1] < 0.75 * epoch_losses[0], epoch_losses
    test_accuracy = float(accuracy(model, test_spikes, test_labels))
    assert test_accuracy > 0.4, test_accuracy  # chance is 0.1
    for conn in (model.input, model.recurrent):  # free slots stayed empty
        assert float(jnp.max(jnp.abs(jnp.where(conn.alive, 0.0, conn.weight)))) == 0.0


@pytest.mark.standard_promotion
@pytest.mark.parametrize("extra", [[], ["--dense", "--neuron", "alif"]])
def test_example_script_runs(extra, capsys):
    # In-process (not a subprocess), so that it reuses this session's compiled kernels.
    example = runpy.run_path(str(ROOT / "examples" / "eprop_mnist.py"), run_name="example")
    tiny = ["--epochs", "1", "--train-size", "64", "--num-steps", "20", "--hidden", "32"]
    example["main"]([*tiny, *extra])
    out = capsys.readouterr().out
    assert "epoch 0" in out and "test accuracy" in out
