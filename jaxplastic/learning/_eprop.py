"""Online e-prop for recurrent LIF/ALIF classifiers, on ragged slots or dense matrices.

e-prop (Bellec et al. 2020) replaces backpropagation through time by a forward-running
product of a per-synapse *eligibility trace* and a per-neuron *learning signal*. Here it is
written for the classifiers of :mod:`jaxplastic.models`, with the equations of
mlGeNN's e-prop compiler (symmetric feedback through the readout weights, firing-rate
regularisation; MODELS.md section 1), and returns gradients shaped like the model's parameters,
so any optax optimiser applies them.

One time step ``t`` of ``dt`` ms, in this exact order (``x(t)`` input spikes, ``z(t)`` hidden
spikes, ``y`` the one-hot label; all per example):

1. ``I(t) = W_in^T x(t) + W_rec^T z(t-1)``; the hidden layer steps and emits ``z(t)``.
   ``psi(t) = dz(t)/dv(t)`` is the surrogate derivative *of that step* (pre-reset membrane,
   threshold of the step, 0 while refractory), obtained by forward-mode differentiation of the
   neuron's own ``step``; with ``PiecewiseLinear(0.3)`` it is
   ``(0.3 / v_th) max(0, 1 - |v - A| / v_th)``.
2. Presynaptic traces, ``alpha = exp(-dt / tau_mem)`` of the hidden layer:
   ``zbar_in(t) = alpha zbar_in(t-1) + x(t)`` and ``zbar_rec(t) = alpha zbar_rec(t-1) + z(t-1)``
   (each trace includes the spikes that entered ``I(t)``).
3. Readout ``V(t) = kappa V(t-1) + w_out^T z(t) + b_out`` (``kappa = exp(-dt / tau_out)``),
   error ``E(t) = softmax(V(t)) - y``, learning signal ``L(t) = w_out E(t)``, firing rate
   ``f(t) = g f(t-1) + (1 - g) z(t)`` (``g = exp(-dt / tau_rate)``, spikes per step, starting
   at 0 for every sequence), regularisation signal ``R(t) = c_reg (f(t) - f_target dt/1000)``.
4. Per synapse ``i -> j`` (a ragged slot or a dense entry), with ``zbar`` the presynaptic trace:
   LIF ``e = psi_j zbar_i``; ALIF ``e = psi_j (zbar_i - beta rho eps_a)`` then
   ``eps_a <- rho eps_a + e``; then ``ebar <- kappa ebar + e`` and
   ``grad += ebar L_j(t) + R_j(t) e``.
5. Readout: ``zbar_out(t) = kappa zbar_out(t-1) + z(t)``, ``grad_w_out += zbar_out(t) E(t)^T``,
   ``grad_b_out += bbar(t) E(t)`` with ``bbar(t) = kappa bbar(t-1) + 1``.

With this ordering the result is *exactly* the gradient of
``sum_t [CE(softmax(V(t)), y) + c_reg sum_j sg(f_j(t) - f_target) z_j(t)]`` computed by
autodiff with stop-gradients on the recurrent spikes ``z(t-1)`` in ``I(t)`` and on the reset
(``sg``: stop-gradient), the e-prop approximation of Bellec et al. (2020); the tests check it.
The readout gradients are exact (the readout has no recurrence).

Differences from mlGeNN, kept small on purpose and documented here: mlGeNN filters ``ebar``
and the readout trace with the hidden ``alpha`` rather than ``kappa`` (identical at the
defaults, tau_mem = tau_out = 20 ms), accumulates the bias error unfiltered (``DeltaBias +=
E``; a per-parameter scale that Adam removes), and evaluates ``psi`` and the error from the
stored (post-reset) state one GeNN update later. This library's ALIF compares ``v`` against
``v_th + beta rho a(t-1)`` (it decays ``a`` before the comparison), so the exact ALIF trace
has ``beta rho`` where MODELS.md writes ``beta`` (rho = 0.9995 at the defaults).

Memory: the scan carries per-example traces (``ebar``, and ``eps_a`` for ALIF) of shape
``[batch, pre, cap]`` per ragged projection (``[batch, pre, post]`` dense) plus one batch-summed
gradient accumulator per parameter; nothing grows with the number of time steps.

``mode="factorized"`` computes the same gradients without any per-synapse trace. Summing the
recursions above by parts (derivation in :func:`_factorized_gradients`), the gradient of a
hidden-layer weight is ``grad_ji = sum_(t, b) xpre_i(t) Mbar_j(t)``, with ``xpre`` the
presynaptic spikes that entered ``I(t)`` (``x(t)`` or ``z(t-1)``) and ``Mbar`` a per-neuron
signal obtained by one reverse scan over the recorded ``psi``, ``R`` and ``E``. The gradient
is then one product over ``time x batch``: a GEMM for dense matrices, a sampled product at
the live slots for ragged ones. Memory grows with ``time x batch x neurons`` (the records)
instead of ``batch x synapses``; the result equals online e-prop's to float rounding.

References:
    Bellec, Scherr, Subramoney, Hajek, Salaj, Legenstein & Maass (2020), "A solution to the
    learning dilemma for recurrent networks of spiking neurons", Nature Communications 11, 3625.
    Knight, Senk & Nowotny (2025), "Structural plasticity for sparse spiking networks on
    GPUs", arXiv:2510.19764 (the GeNN/mlGeNN e-prop used here).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from .._custom_types import Array, ArrayLike, Float, Impl, Int, PRNGKeyArray, Shaped
from .._neurons import ALIF, LIF
from .._sampled_matmul import sampled_matmul
from ..models._classifier import (
    AbstractClassifier,
    ClassifierState,
    DenseClassifier,
    RecurrentClassifier,
)

__all__ = [
    "Eprop",
    "EpropGradients",
    "EpropInfo",
    "EpropState",
    "ProjectionTraces",
    "eprop",
    "train_step",
]

_MODES = ("online", "factorized")
_IMPLS = ("auto", "xla", "pallas")


class ProjectionTraces(NamedTuple):
    """Per-synapse e-prop traces of one projection, one entry per synapse and example.

    Ragged projection: `[pre, cap, batch]`, aligned with the slots and batch-minor (the
    fastest layout for the gathers at `post[i, s]`); free slots hold 0. Dense matrix:
    `[batch, pre, post]`. The traces start at zero for every batch of sequences, so rewiring
    between batches needs no trace reset (mid-sequence, zero a changed slot's traces with
    `jnp.where(changed[..., None], 0, trace)`).

    Attributes:
        ebar: filtered eligibility $\\bar e$.
        eps_a: adaptation eligibility $\\epsilon_a$ (ALIF), same shape; None for LIF.
    """

    ebar: Float[Array, "..."]
    eps_a: Float[Array, "..."] | None


class EpropGradients(NamedTuple):
    """Gradient accumulators, summed over the steps so far.

    The readout ones and the dense projections' are summed over the batch; a ragged
    projection's are kept per example, `[pre, cap, batch]` like its traces (one elementwise
    pass per step, no reduction), and summed over the batch by `finalize`.

    Attributes:
        input: input-projection gradient, `[in, cap, batch]` (ragged) or `[in, hidden]`.
        recurrent: recurrent gradient, `[hidden, cap, batch]` or `[hidden, hidden]`.
        w_out: readout weight gradient, `[hidden, out]`.
        b_out: readout bias gradient, `[out]`.
    """

    input: Float[Array, "..."]
    recurrent: Float[Array, "..."]
    w_out: Float[Array, "hidden out"]
    b_out: Float[Array, " out"]


class EpropState(NamedTuple):
    """Everything online e-prop carries from one time step to the next (no time axis).

    Attributes:
        network: the classifier's :class:`~jaxplastic.models.ClassifierState`,
            `[batch, ...]`.
        zbar_in: input spikes filtered with the hidden membrane decay, `[batch, in]`.
        zbar_hidden: hidden spikes filtered likewise, one step behind (the recurrent
            projection's presynaptic trace), `[batch, hidden]`.
        zbar_out: hidden spikes filtered with the readout decay, `[batch, hidden]`.
        bias_trace: the readout decay filter of a constant 1, scalar.
        rate: filtered hidden firing rate (spikes per step), `[batch, hidden]`.
        input_traces: :class:`ProjectionTraces` of the input projection.
        recurrent_traces: :class:`ProjectionTraces` of the recurrent projection.
        grads: :class:`EpropGradients` accumulated so far.
        loss: summed cross-entropy, scalar.
        prediction: summed softmax of the readout, `[batch, out]`.
        rate_hz: summed per-step mean hidden firing rate (Hz), scalar.
        num_steps: steps taken (int32), scalar.
    """

    network: ClassifierState
    zbar_in: Float[Array, "batch in"]
    zbar_hidden: Float[Array, "batch hidden"]
    zbar_out: Float[Array, "batch hidden"]
    bias_trace: Float[Array, ""]
    rate: Float[Array, "batch hidden"]
    input_traces: ProjectionTraces
    recurrent_traces: ProjectionTraces
    grads: EpropGradients
    loss: Float[Array, ""]
    prediction: Float[Array, "batch out"]
    rate_hz: Float[Array, ""]
    num_steps: Int[Array, ""]


class EpropInfo(NamedTuple):
    """Diagnostics of one e-prop pass over a batch.

    Attributes:
        loss: cross-entropy of `softmax(V(t))`, averaged over examples and steps (the
            gradients are of the *sum*, as in mlGeNN).
        accuracy: fraction of examples whose prediction (argmax of the summed softmax) is right.
        prediction: $\\sum_t \\mathrm{softmax}(V(t))$, `[batch, out]`.
        rate_hz: mean hidden firing rate (Hz).
    """

    loss: Float[Array, ""]
    accuracy: Float[Array, ""]
    prediction: Float[Array, "batch out"]
    rate_hz: Float[Array, ""]


class Eprop(NamedTuple):
    """The e-prop rule: pure functions closed over its hyperparameters (from :func:`eprop`).

    Attributes:
        init: `init(model, *, batch_size) -> EpropState`, zero traces and a resting network.
        step: `step(model, state, spikes, *, labels, dt) -> (state, (z, V))`, one time step;
            `spikes` `[batch, in]`, `labels` `[batch]` int.
        finalize: `finalize(model, state, *, labels) -> (grads, EpropInfo)`, the gradient
            pytree (shaped like `eqx.filter(model, eqx.is_inexact_array)`) and diagnostics.
        gradients: `gradients(model, spikes, *, labels, dt=1.0) -> (grads, EpropInfo)` for a
            whole batch `[batch, time, in]`: `init`, a `lax.scan` of `step`, `finalize`
            (`mode="online"`), or a forward scan, a reverse scan over per-neuron signals and
            one product per projection (`mode="factorized"`, the same result).

    `init`, `step` and `finalize` are online in both modes: streaming, one step at a time,
    cannot filter the future backwards.
    """

    init: Callable[..., EpropState]
    step: Callable[..., tuple[EpropState, tuple[Array, Array]]]
    finalize: Callable[..., tuple[Any, EpropInfo]]
    gradients: Callable[..., tuple[Any, EpropInfo]]


# -- helpers ---------------------------------------------------------------------------------


def _scalar(owner: str, name: str, value):
    """A Python number or 0-d array parameter, else ValueError (e-prop needs one value)."""
    if isinstance(value, bool):
        raise ValueError(f"{owner}: {name}: expected a number, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if jnp.ndim(value) != 0:
        raise ValueError(
            f"{owner}: {name}: expected one value for the whole hidden layer (e-prop keeps one "
            f"presynaptic trace per neuron), got shape {jnp.shape(value)}"
        )
    return value


def _decay(dt, tau, dtype):
    """exp(-dt / tau): a Python float when both are Python numbers, else a `dtype` scalar."""
    if isinstance(dt, int | float) and isinstance(tau, int | float):
        return math.exp(-dt / tau)
    return jnp.exp(-jnp.asarray(dt, dtype) / jnp.asarray(tau, dtype))


class _Constants(NamedTuple):
    alpha: Any
    kappa: Any
    rate_decay: Any
    f_target: Any
    rho: Any  # None for LIF
    beta_rho: Any  # None for LIF


def _constants(model: AbstractClassifier, dt, tau_rate: float, f_target_hz: float) -> _Constants:
    dtype = model.w_out.dtype
    hidden = model.hidden
    tau_mem = _scalar("eprop", "hidden.tau_mem", hidden.tau_mem)
    rho = beta_rho = None
    if isinstance(hidden, ALIF):
        rho = _decay(dt, _scalar("eprop", "hidden.tau_adapt", hidden.tau_adapt), dtype)
        beta_rho = _scalar("eprop", "hidden.beta", hidden.beta) * rho
    return _Constants(
        alpha=_decay(dt, tau_mem, dtype),
        kappa=_decay(dt, model.tau_out, dtype),
        rate_decay=_decay(dt, tau_rate, dtype),
        f_target=f_target_hz * dt / 1000.0,
        rho=rho,
        beta_rho=beta_rho,
    )


def _check_model(model) -> None:
    if not isinstance(model, RecurrentClassifier | DenseClassifier):
        raise TypeError(
            "eprop: model: expected a RecurrentClassifier or DenseClassifier, "
            f"got {type(model).__name__}"
        )
    if not isinstance(model.hidden, LIF | ALIF):
        raise TypeError(f"eprop: model.hidden: expected LIF or ALIF, got {model.hidden!r}")
    if isinstance(model.hidden, LIF) and not model.hidden.integrate_during_refractory:
        # A clamped membrane breaks zbar = dv/dw (it would need a per-synapse trace reset).
        raise ValueError(
            "eprop: model.hidden: expected a LIF that keeps integrating while refractory "
            "(integrate_during_refractory=True, as e-prop assumes), got "
            "integrate_during_refractory=False"
        )


def _check_dt(dt) -> None:
    if isinstance(dt, bool) or not isinstance(dt, int | float) or not dt > 0:
        raise ValueError(f"eprop: dt: expected a Python number > 0 (ms), got {dt!r}")


def _trace_shapes(model, batch: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of the per-example traces of (input, recurrent): see :class:`ProjectionTraces`."""
    if isinstance(model, RecurrentClassifier):
        return (*model.input.post.shape, batch), (*model.recurrent.post.shape, batch)
    return (batch, *model.w_in.shape), (batch, *model.w_rec.shape)


def _eligibility(
    traces: ProjectionTraces, psi: Array, zbar: Array, c: _Constants
) -> tuple[Array, ProjectionTraces]:
    """One step of the eligibility traces (elementwise; `psi`, `zbar` broadcast to them)."""
    if traces.eps_a is None:
        e = psi * zbar
        eps_a = None
    else:
        e = psi * (zbar - c.beta_rho * traces.eps_a)
        eps_a = c.rho * traces.eps_a + e
    return e, ProjectionTraces(ebar=c.kappa * traces.ebar + e, eps_a=eps_a)


def _ragged_update(
    post: Int[Array, "pre cap"],
    traces: ProjectionTraces,
    grad: Float[Array, "pre cap batch"],
    zbar_pre: Float[Array, "batch pre"],
    psi: Float[Array, "batch post"],
    learning: Float[Array, "batch post"],
    reg: Float[Array, "batch post"],
    c: _Constants,
) -> tuple[ProjectionTraces, Float[Array, "pre cap batch"]]:
    """Trace and gradient update on the slots of a ragged projection, batch-minor.

    The per-neuron signals are gathered at ``post[i, s]`` (a free slot reads an appended zero
    row, so its trace and gradient stay 0). With the batch as the minor axis each gathered
    index copies one contiguous row, and the gradient is accumulated per example (summed in
    ``finalize``), so the whole update is one elementwise pass with no per-step reduction.
    """
    batch = psi.shape[0]
    zero = jnp.zeros((1, batch), psi.dtype)
    gathered = tuple(
        jnp.take(jnp.concatenate([v.T, zero], axis=0), post, axis=0, mode="clip")
        for v in (psi, learning, reg)
    )
    # Materialise the gathers once: fused into the elementwise update, XLA:CPU recomputes
    # them per consumer, which measured about twice as slow.
    slot_psi, slot_learning, slot_reg = lax.optimization_barrier(gathered)
    e, traces = _eligibility(traces, slot_psi, zbar_pre.T[:, None, :], c)
    return traces, grad + traces.ebar * slot_learning + e * slot_reg


def _dense_update(
    traces: ProjectionTraces,
    grad: Float[Array, "pre post"],
    zbar_pre: Float[Array, "batch pre"],
    psi: Float[Array, "batch post"],
    learning: Float[Array, "batch post"],
    reg: Float[Array, "batch post"],
    c: _Constants,
) -> tuple[ProjectionTraces, Float[Array, "pre post"]]:
    """Trace and gradient update of a dense matrix, batch-major, summed over the batch.

    Summing every step keeps one ``[pre, post]`` accumulator instead of one per example,
    which matters at the paper's batch of 512.
    """
    e, traces = _eligibility(traces, psi[:, None, :], zbar_pre[:, :, None], c)
    hi = lax.Precision.HIGHEST
    grad = grad + jnp.einsum("bij,bj->ij", traces.ebar, learning, precision=hi)
    if traces.eps_a is None:
        # LIF: e = psi_j zbar_i, so its regularisation term is a plain matrix product.
        return traces, grad + jnp.dot(zbar_pre.T, psi * reg, precision=hi)
    return traces, grad + jnp.einsum("bij,bj->ij", e, reg, precision=hi)


def _model_gradients(model: AbstractClassifier, acc: EpropGradients):
    """The accumulators placed in a pytree shaped like the model's inexact-array leaves."""
    grads = jax.tree.map(jnp.zeros_like, eqx.filter(model, eqx.is_inexact_array))
    return eqx.tree_at(lambda m: m._weights(), grads, replace=tuple(acc))


def _checked_batch(owner: str, model: AbstractClassifier, spikes, labels) -> tuple[Array, Array]:
    """`spikes [batch, time, in]` and `labels [batch]` as arrays, checked (labels at runtime)."""
    spikes = jnp.asarray(spikes)
    if spikes.ndim != 3 or spikes.shape[-1] != model.n_in:
        raise ValueError(
            f"{owner}: spikes: expected shape [batch, time, {model.n_in}], got {spikes.shape}"
        )
    batch = spikes.shape[0]
    labels = jnp.asarray(labels)
    if labels.shape != (batch,) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"{owner}: labels: expected int[{batch}], got {labels.dtype}{labels.shape}"
        )
    labels = eqx.error_if(
        labels,
        (labels < 0) | (labels >= model.n_out),
        f"{owner}: labels must lie in [0, {model.n_out})",
    )
    return spikes, labels


# -- factorized e-prop: the same gradients as one sampled matrix product over time ----------


class _Signals(NamedTuple):
    """Per-neuron, per-example signals of one step, stacked over time by the forward scan."""

    z: Float[Array, "batch hidden"]  # hidden spikes z(t)
    psi: Float[Array, "batch hidden"]  # pseudo-derivative psi(t)
    reg: Float[Array, "batch hidden"]  # regularisation signal c_reg (f(t) - f_target)
    error: Float[Array, "batch out"]  # output error E(t) = softmax(V(t)) - y


def _factorized_gradients(
    model: AbstractClassifier,
    spikes: Shaped[Array, "batch time in"],
    labels: Int[Array, " batch"],
    *,
    dt: float,
    c_reg: float,
    f_target_hz: float,
    tau_rate: float,
    impl: Impl,
) -> tuple[Any, EpropInfo]:
    """Online e-prop's gradients from per-neuron signals: no per-synapse trace anywhere.

    Forward scan: the network steps exactly as in online e-prop (same operations, so the same
    spikes) and records ``z, psi, R, E`` per step and example. Reverse scan (per neuron):

    - ``Ebar(s) = E(s) + kappa Ebar(s+1)`` (the error filtered backwards in time), so that
      ``Lbar(s) = sum_{t>=s} kappa^(t-s) L(t) = w_out Ebar(s)`` and
      ``G(s) = Lbar(s) + R(s)``, everything that multiplies ``e_ji(s)``:
      ``sum_t ebar(t) L(t) + R(t) e(t) = sum_s e(s) G(s)``;
    - LIF, ``e_ji(s) = psi_j(s) zbar_i(s)``: ``M(s) = psi(s) G(s)``;
    - ALIF, ``e(s) = psi(s) (zbar(s) - beta rho eps(s-1))`` with
      ``eps(s) = psi(s) zbar(s) + (rho - beta rho psi(s)) eps(s-1)``: unrolling ``eps``,
      ``M(s) = psi(s) (G(s) - beta rho Q(s))`` with the reverse recursion
      ``Q(s) = psi(s+1) G(s+1) + (rho - beta rho psi(s+1)) Q(s+1)``, ``Q(T-1) = 0``;
    - ``Mbar(s) = M(s) + alpha Mbar(s+1)``: the presynaptic filter moved onto the
      postsynaptic side, ``sum_s zbar_i(s) M_j(s) = sum_u x_i(u) Mbar_j(u)`` because
      ``zbar_i(s) = sum_{u<=s} alpha^(s-u) x_i(u)``.

    So ``grad W_in = sum_(t,b) x(t) Mbar(t)^T`` and ``grad W_rec = sum_(t,b) z(t-1) Mbar(t)^T``:
    a GEMM over ``k = time x batch`` for dense matrices, the sampled product at the live slots
    (:func:`~jaxplastic._sampled_matmul.sampled_matmul`) for ragged ones. The readout:
    ``grad w_out = sum z(t) Ebar(t)^T``, ``grad b_out = sum Ebar(t)``.
    """
    c = _constants(model, dt, tau_rate, f_target_hz)
    dtype = model.w_out.dtype
    batch, num_steps, _ = spikes.shape
    target = jax.nn.one_hot(labels, model.n_out, dtype=dtype)
    hi = lax.Precision.HIGHEST

    # Forward: the network, step for step as online e-prop runs it (module docstring, 1-3).
    def forward(carry, _):
        net, rate, loss, prediction, rate_hz, t = carry
        x = lax.dynamic_index_in_dim(spikes, t, axis=1, keepdims=False).astype(dtype)
        current = model.hidden_input(x, net.spikes)

        def spikes_of(i):
            new_state, z = model.hidden.step(net.hidden, i, dt=dt)
            return z, new_state

        z, psi, hidden = jax.jvp(spikes_of, (current,), (jnp.ones_like(current),), has_aux=True)
        v = model.readout_step(net.readout, z, dt=dt)
        softmax = jax.nn.softmax(v, axis=-1)
        error = softmax - target
        rate = c.rate_decay * rate + (1.0 - c.rate_decay) * z
        reg = c_reg * (rate - c.f_target)
        log_p = jax.nn.log_softmax(v, axis=-1)
        carry = (
            ClassifierState(hidden=hidden, readout=v, spikes=z),
            rate,
            loss - jnp.sum(target * log_p),
            prediction + softmax,
            rate_hz + jnp.mean(z) * (1000.0 / dt),
            t + 1,
        )
        return carry, _Signals(z=z, psi=psi, reg=reg, error=error)

    hidden_zeros = jnp.zeros((batch, model.n_hidden), dtype)
    scalar = jnp.zeros((), dtype)
    carry = (
        model.init(batch),
        hidden_zeros,
        scalar,
        jnp.zeros((batch, model.n_out), dtype),
        scalar,
        jnp.zeros((), jnp.int32),
    )
    (_, _, loss, prediction, rate_hz, _), signals = lax.scan(forward, carry, None, length=num_steps)

    # Reverse: M(s) per neuron (see the docstring), filtered backwards with alpha.
    adaptive = isinstance(model.hidden, ALIF)

    def backward(carry, s: _Signals):
        ebar_next, mbar_next, q = carry
        ebar = s.error + c.kappa * ebar_next
        g = jnp.dot(ebar, model.w_out.T, precision=hi) + s.reg
        p = s.psi * g
        if adaptive:
            m = p - c.beta_rho * s.psi * q
            q = p + (c.rho - c.beta_rho * s.psi) * q
        else:
            m = p
        mbar = m + c.alpha * mbar_next
        return (ebar, mbar, q), (ebar, mbar)

    carry = (jnp.zeros((batch, model.n_out), dtype), hidden_zeros, hidden_zeros)
    _, (ebar, mbar) = lax.scan(backward, carry, signals, reverse=True)

    # Products over k = (batch, time), batch-major like the input spikes.
    def flat(x):  # [time, batch, n] -> [batch * time, n]
        return jnp.moveaxis(x, 0, 1).reshape(batch * num_steps, x.shape[-1])

    m_k = flat(mbar)
    z = signals.z
    z_prev = flat(jnp.concatenate([jnp.zeros_like(z[:1]), z], axis=0)[:num_steps])
    x_k = spikes.reshape(batch * num_steps, model.n_in)
    if jnp.issubdtype(x_k.dtype, jnp.floating) or isinstance(model, DenseClassifier):
        x_k = x_k.astype(dtype)  # bool/int spikes go to the sampled product as they are
    if isinstance(model, RecurrentClassifier):
        n_hidden = model.n_hidden
        g_in = sampled_matmul(model.input.post, x_k, m_k, n_post=n_hidden, impl=impl)
        g_rec = sampled_matmul(model.recurrent.post, z_prev, m_k, n_post=n_hidden, impl=impl)
    else:
        g_in = jnp.dot(x_k.T, m_k, precision=hi)
        g_rec = jnp.dot(z_prev.T, m_k, precision=hi)
    g_out = jnp.einsum("tbh,tbo->ho", z, ebar, precision=hi)
    g_b = jnp.sum(ebar, axis=(0, 1))
    grads = _model_gradients(
        model, EpropGradients(input=g_in, recurrent=g_rec, w_out=g_out, b_out=g_b)
    )

    steps = jnp.asarray(max(num_steps, 1), dtype)
    correct = jnp.argmax(prediction, axis=-1) == labels
    return grads, EpropInfo(
        loss=loss / (steps * batch),
        accuracy=jnp.mean(correct.astype(dtype)),
        prediction=prediction,
        rate_hz=rate_hz / steps,
    )


# -- the rule --------------------------------------------------------------------------------


def eprop(
    *,
    c_reg: float = 0.001,
    f_target_hz: float = 10.0,
    tau_rate: float = 500.0,
    mode: Literal["online", "factorized"] = "online",
    impl: Impl = "auto",
) -> Eprop:
    """e-prop with symmetric feedback and firing-rate regularisation, online or factorized.

    Per synapse $i \\to j$ and step $t$ (the exact ordering is in the module docstring):
    $e_{ji} = \\psi_j \\bar z_i$ (LIF) or
    $e_{ji} = \\psi_j(\\bar z_i - \\beta\\rho\\,\\epsilon_{a,ji})$ (ALIF),
    $\\bar e_{ji} \\leftarrow \\kappa \\bar e_{ji} + e_{ji}$,
    $g_{ji} \\mathrel{+}= \\bar e_{ji} L_j + c_{reg}(f_j - f_{target}) e_{ji}$, with the learning
    signal $L_j = \\sum_k w^{out}_{jk} (\\mathrm{softmax}(V)_k - y_k)$. Readout:
    $g^{out}_{jk} \\mathrel{+}= \\bar z^{\\kappa}_j E_k$. Gradients are summed over time and
    over the batch; the batch is carried explicitly in the traces, which equals a `vmap` over
    examples followed by a sum, without per-example gradient buffers.

    Args:
        c_reg: firing-rate regularisation strength (default 0.001).
        f_target_hz: target hidden firing rate (Hz; default 10).
        tau_rate: time constant of the online firing-rate estimate (ms; default 500).
        mode: how `gradients` computes the same gradients (static):
            `"online"` carries per-synapse, per-example traces through time (memory
            `O(batch x synapses)`, independent of the number of steps);
            `"factorized"` records per-neuron signals in the forward pass, filters them
            backwards in time and forms each weight gradient as one product over
            time x batch, a GEMM (dense) or a sampled product at the live slots (ragged):
            memory `O(time x batch x neurons)`, independent of the synapse count, and much
            faster. Both give the same gradients to float rounding. `init`, `step` and
            `finalize` (streaming, one step at a time) are online in both modes.
        impl: the sampled product of the factorized mode on ragged projections:
            `"xla"`, `"pallas"` or `"auto"` (Pallas on GPU, XLA elsewhere). Static.

    Returns:
        An :class:`Eprop` of pure functions `(init, step, finalize, gradients)`; none is
        jitted (jit the caller, e.g. :func:`train_step`).

    Raises:
        ValueError: an unknown `mode` or `impl`, or a bad hyperparameter.

    Example:
        >>> import jax, jax.numpy as jnp, equinox as eqx, optax
        >>> from jaxplastic.models import recurrent_classifier
        >>> model = recurrent_classifier(20, 3, n_hidden=16, p_in=0.5, p_rec=0.5,
        ...                              key=jax.random.key(0))
        >>> spikes = jax.random.bernoulli(jax.random.key(1), 0.1, (4, 30, 20))
        >>> grads, info = eprop().gradients(model, spikes, labels=jnp.array([0, 1, 2, 0]))
        >>> optimizer = optax.adam(1e-3)
        >>> opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        >>> updates, opt_state = optimizer.update(grads, opt_state)
        >>> model = eqx.apply_updates(model, updates)

    References:
        Bellec et al. (2020), "A solution to the learning dilemma for recurrent networks of
        spiking neurons", Nature Communications 11, 3625. Knight, Senk & Nowotny (2025),
        arXiv:2510.19764.
    """
    if mode not in _MODES:
        raise ValueError(f"eprop: mode: expected one of {_MODES}, got {mode!r}")
    if impl not in _IMPLS:
        raise ValueError(f"eprop: impl: expected one of {_IMPLS}, got {impl!r}")
    for name, value, positive in (
        ("c_reg", c_reg, False),
        ("f_target_hz", f_target_hz, False),
        ("tau_rate", tau_rate, True),
    ):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise ValueError(f"eprop: {name}: expected a finite Python number, got {value!r}")
        if value < 0 or (positive and value == 0):
            bound = "> 0" if positive else ">= 0"
            raise ValueError(f"eprop: {name}: expected a value {bound}, got {value!r}")
    c_reg, f_target_hz, tau_rate = float(c_reg), float(f_target_hz), float(tau_rate)

    def init(model: AbstractClassifier, *, batch_size: int) -> EpropState:
        """Zero traces and accumulators and a resting network.

        Args:
            model: the classifier being trained.
            batch_size: number of sequences run side by side.

        Returns:
            An :class:`EpropState` with no time axis.
        """
        _check_model(model)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"eprop.init: batch_size: expected a positive int, got {batch_size!r}")
        dtype = model.w_out.dtype
        adaptive = isinstance(model.hidden, ALIF)
        shape_in, shape_rec = _trace_shapes(model, batch_size)
        ragged = isinstance(model, RecurrentClassifier)

        def traces(shape):
            zeros = jnp.zeros(shape, dtype)
            return ProjectionTraces(ebar=zeros, eps_a=zeros if adaptive else None)

        def accumulator(shape):
            # Ragged: per example, batch-minor like the traces; dense: summed over the batch.
            return jnp.zeros(shape if ragged else shape[1:], dtype)

        hidden = jnp.zeros((batch_size, model.n_hidden), dtype)
        scalar = jnp.zeros((), dtype)
        return EpropState(
            network=model.init(batch_size),
            zbar_in=jnp.zeros((batch_size, model.n_in), dtype),
            zbar_hidden=hidden,
            zbar_out=hidden,
            bias_trace=scalar,
            rate=hidden,
            input_traces=traces(shape_in),
            recurrent_traces=traces(shape_rec),
            grads=EpropGradients(
                input=accumulator(shape_in),
                recurrent=accumulator(shape_rec),
                w_out=jnp.zeros_like(model.w_out),
                b_out=jnp.zeros_like(model.b_out),
            ),
            loss=scalar,
            prediction=jnp.zeros((batch_size, model.n_out), dtype),
            rate_hz=scalar,
            num_steps=jnp.zeros((), jnp.int32),
        )

    def step(
        model: AbstractClassifier,
        state: EpropState,
        spikes: Shaped[ArrayLike, "batch in"],
        *,
        labels: Int[ArrayLike, " batch"],
        dt: float,
    ) -> tuple[EpropState, tuple[Float[Array, "batch hidden"], Float[Array, "batch out"]]]:
        """One time step of the network and of every trace and accumulator.

        Args:
            model: the classifier being trained.
            state: the :class:`EpropState` after the previous step (or from `init`).
            spikes: input spikes of this step, `[batch, in]`.
            labels: `[batch]` integer class labels.
            dt: step size (ms).

        Returns:
            `(state, (z, V))`: the new state, this step's hidden spikes `[batch, hidden]` and
            readout potentials `[batch, out]`.
        """
        _check_model(model)
        _check_dt(dt)
        c = _constants(model, dt, tau_rate, f_target_hz)
        dtype = model.w_out.dtype
        batch = state.zbar_in.shape[0]
        x = jnp.asarray(spikes)
        if x.shape != (batch, model.n_in):
            raise ValueError(
                f"eprop.step: spikes: expected shape ({batch}, {model.n_in}), got {x.shape}"
            )
        labels = jnp.asarray(labels)
        if labels.shape != (batch,) or not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(
                f"eprop.step: labels: expected int[{batch}], got {labels.dtype}{labels.shape}"
            )
        x = x.astype(dtype)
        net = state.network
        z_prev = net.spikes

        # 1. Hidden layer; psi = dz/dI = dz/dv of this very step (forward mode).
        current = model.hidden_input(x, z_prev)

        def spikes_of(i):
            new_state, z = model.hidden.step(net.hidden, i, dt=dt)
            return z, new_state

        z, psi, hidden = jax.jvp(spikes_of, (current,), (jnp.ones_like(current),), has_aux=True)

        # 2. Presynaptic traces (each includes the spikes that entered I(t)).
        zbar_in = c.alpha * state.zbar_in + x
        zbar_hidden = c.alpha * state.zbar_hidden + z_prev

        # 3. Readout, error, learning and regularisation signals.
        v = model.readout_step(net.readout, z, dt=dt)
        target = jax.nn.one_hot(labels, model.n_out, dtype=dtype)
        softmax = jax.nn.softmax(v, axis=-1)
        error = softmax - target
        learning = jnp.dot(error, model.w_out.T, precision=lax.Precision.HIGHEST)
        rate = c.rate_decay * state.rate + (1.0 - c.rate_decay) * z
        reg = c_reg * (rate - c.f_target)

        # 4. Per-synapse eligibility traces and gradients.
        grads = state.grads
        signals = (psi, learning, reg)
        if isinstance(model, RecurrentClassifier):
            input_traces, g_in = _ragged_update(
                model.input.post, state.input_traces, grads.input, zbar_in, *signals, c
            )
            recurrent_traces, g_rec = _ragged_update(
                model.recurrent.post,
                state.recurrent_traces,
                grads.recurrent,
                zbar_hidden,
                *signals,
                c,
            )
        else:
            input_traces, g_in = _dense_update(
                state.input_traces, grads.input, zbar_in, *signals, c
            )
            recurrent_traces, g_rec = _dense_update(
                state.recurrent_traces, grads.recurrent, zbar_hidden, *signals, c
            )

        # 5. Readout gradients (exact: the readout has no recurrence).
        zbar_out = c.kappa * state.zbar_out + z
        bias_trace = c.kappa * state.bias_trace + 1.0
        g_out = grads.w_out + jnp.dot(zbar_out.T, error, precision=lax.Precision.HIGHEST)
        g_b = grads.b_out + bias_trace * jnp.sum(error, axis=0)

        log_p = jax.nn.log_softmax(v, axis=-1)
        new_state = EpropState(
            network=ClassifierState(hidden=hidden, readout=v, spikes=z),
            zbar_in=zbar_in,
            zbar_hidden=zbar_hidden,
            zbar_out=zbar_out,
            bias_trace=bias_trace,
            rate=rate,
            input_traces=input_traces,
            recurrent_traces=recurrent_traces,
            grads=EpropGradients(input=g_in, recurrent=g_rec, w_out=g_out, b_out=g_b),
            loss=state.loss - jnp.sum(target * log_p),
            prediction=state.prediction + softmax,
            rate_hz=state.rate_hz + jnp.mean(z) * (1000.0 / dt),
            num_steps=state.num_steps + 1,
        )
        return new_state, (z, v)

    def finalize(
        model: AbstractClassifier, state: EpropState, *, labels: Int[ArrayLike, " batch"]
    ) -> tuple[Any, EpropInfo]:
        """The gradient pytree and diagnostics from a state after the last step.

        Args:
            model: the classifier being trained.
            state: the :class:`EpropState` after the last step.
            labels: `[batch]` integer class labels (for the accuracy).

        Returns:
            `(grads, info)` as for `gradients`.
        """
        _check_model(model)
        acc = state.grads
        if isinstance(model, RecurrentClassifier):
            acc = acc._replace(
                input=jnp.sum(acc.input, axis=-1), recurrent=jnp.sum(acc.recurrent, axis=-1)
            )
        grads = _model_gradients(model, acc)
        dtype = model.w_out.dtype
        steps = jnp.maximum(state.num_steps, 1).astype(dtype)
        batch = state.prediction.shape[0]
        correct = jnp.argmax(state.prediction, axis=-1) == jnp.asarray(labels)
        return grads, EpropInfo(
            loss=state.loss / (steps * batch),
            accuracy=jnp.mean(correct.astype(dtype)),
            prediction=state.prediction,
            rate_hz=state.rate_hz / steps,
        )

    def gradients(
        model: AbstractClassifier,
        spikes: Shaped[ArrayLike, "batch time in"],
        *,
        labels: Int[ArrayLike, " batch"],
        dt: float = 1.0,
    ) -> tuple[Any, EpropInfo]:
        """e-prop gradients of one batch of sequences, summed over examples and time.

        Args:
            model: a :class:`RecurrentClassifier` or :class:`DenseClassifier`.
            spikes: input spikes `[batch, time, in]` (0/1 numbers or bools, e.g. uint8).
            labels: `[batch]` integer class labels.
            dt: step size (ms).

        Returns:
            `(grads, info)`: `grads` shaped like `eqx.filter(model, eqx.is_inexact_array)`
            (ragged weight gradients `[pre, cap]` on the slots, 0 in free slots; zeros on
            inexact leaves that are not trained), and an :class:`EpropInfo`.
        """
        _check_model(model)
        spikes, labels = _checked_batch("eprop.gradients", model, spikes, labels)
        if mode == "factorized":
            _check_dt(dt)
            return _factorized_gradients(
                model,
                spikes,
                labels,
                dt=dt,
                c_reg=c_reg,
                f_target_hz=f_target_hz,
                tau_rate=tau_rate,
                impl=impl,
            )
        batch, num_steps, _ = spikes.shape

        def body(state, _):
            # Index the batch-major input in place (no time-major copy of the sequence, no
            # array of step indices): scratch memory does not depend on the number of steps.
            x = lax.dynamic_index_in_dim(spikes, state.num_steps, axis=1, keepdims=False)
            state, _ = step(model, state, x, labels=labels, dt=dt)
            return state, None

        state, _ = lax.scan(body, init(model, batch_size=batch), None, length=num_steps)
        return finalize(model, state, labels=labels)

    return Eprop(init=init, step=step, finalize=finalize, gradients=gradients)


# -- training step ---------------------------------------------------------------------------


def _mask_free_slots(model: AbstractClassifier, updates):
    """Zeroes updates on free ragged slots, so that every optimiser keeps them at weight 0."""
    if not isinstance(model, RecurrentClassifier):
        return updates
    return eqx.tree_at(
        lambda u: (u.input.synapses["weight"], u.recurrent.synapses["weight"]),
        updates,
        replace=(
            jnp.where(model.input.alive, updates.input.synapses["weight"], 0.0),
            jnp.where(model.recurrent.alive, updates.recurrent.synapses["weight"], 0.0),
        ),
    )


@eqx.filter_jit
def train_step(
    model: AbstractClassifier,
    opt_state: Any,
    batch: tuple[Shaped[ArrayLike, "batch time in"], Int[ArrayLike, " batch"]],
    key: PRNGKeyArray | None = None,
    *,
    optimizer: Any,
    rule: Eprop | None = None,
    dt: float = 1.0,
) -> tuple[AbstractClassifier, Any, EpropInfo]:
    """One jitted training step: e-prop gradients of a batch, then the optimiser.

    $\\theta \\leftarrow \\theta + \\mathrm{optimizer}(\\nabla^{e\\text{-}prop}_\\theta)$, on the
    trainable leaves (`eqx.filter(model, eqx.is_inexact_array)`). On a ragged model, updates
    of free slots are zeroed, so the free-slot invariant holds with any optimiser.

    Args:
        model: a :class:`RecurrentClassifier` or :class:`DenseClassifier`.
        opt_state: `optimizer.init(eqx.filter(model, eqx.is_inexact_array))`.
        batch: `(spikes [batch, time, in], labels [batch])`, e.g. from
            `jaxplastic.datasets.load(...).batches(...)`.
        key: PRNG key; e-prop itself is deterministic and does not use it. It is accepted so
            that this step and a stochastic one (DEEP R rewiring) share one signature.
        optimizer: an optax `GradientTransformation` (static: create it once).
        rule: the e-prop rule (static; default `eprop()`).
        dt: step size (ms, static).

    Returns:
        `(model, opt_state, info)` with an :class:`EpropInfo`.

    Example:
        >>> import jax, jax.numpy as jnp, equinox as eqx, optax
        >>> from jaxplastic.models import recurrent_classifier
        >>> model = recurrent_classifier(20, 3, n_hidden=16, p_in=0.5, p_rec=0.5,
        ...                              key=jax.random.key(0))
        >>> optimizer = optax.adam(1e-3)
        >>> opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        >>> batch = (jnp.ones((4, 30, 20), jnp.uint8), jnp.array([0, 1, 2, 0]))
        >>> model, opt_state, info = train_step(
        ...     model, opt_state, batch, jax.random.key(1), optimizer=optimizer)
    """
    del key  # deterministic; see the docstring
    rule = eprop() if rule is None else rule
    spikes, labels = batch
    grads, info = rule.gradients(model, spikes, labels=labels, dt=dt)
    params = eqx.filter(model, eqx.is_inexact_array)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    updates = _mask_free_slots(model, updates)
    return eqx.apply_updates(model, updates), opt_state, info
