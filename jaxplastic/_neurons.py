"""Neuron models: parameters as Modules, state as NamedTuples, one pure `step` per model.

Every model here follows one protocol, so `simulate` (and any user-written network step) can
drive it under `lax.scan`, `jit` and `vmap`:

- `init(n, ...) -> <Model>State`: the initial state, every array of shape `n` (an int for
  `[neurons]`, or a tuple such as `(batch, neurons)` for a batched state);
- `step(state, input, *, dt) -> (state, output)`: one time step of `dt` ms. It is pure, it is
  elementwise over neurons (so it works unchanged on `[neurons]` and `[batch, neurons]`
  states, and under `jax.vmap`), and it is never jitted here: jit the caller.

Time is in ms and rates are in Hz throughout. Spiking models return their spikes as a float
array of zeros and ones (the dtype of the membrane), so that the spikes multiply weights
directly and carry surrogate gradients.

Refractoriness is counted in whole steps: a spike sets `refractory` to
`round(tau_refrac / dt)`, and the count goes down by one at the start of each later step; a
neuron can spike again in the step where the count reaches zero, so the minimum interval
between two spikes is `tau_refrac` (as in GeNN, where `RefracTime` is decremented by `dt`);
models that clamp the membrane while refractory need further steps to climb back. The
`refractory` field is the number of steps still blocked (`> 0` means refractory).
"""

from __future__ import annotations

import abc
from numbers import Integral, Real as _PyReal
from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Real, Shaped

# Local aliases (kept here so that this module stands alone).
RealScalarLike = float | int | Real[Array, ""] | Real[np.ndarray, ""]
"""A real scalar: a Python number or a rank-0 array."""
RealParam = float | int | Real[Array, "..."] | Real[np.ndarray, "..."]
"""A model parameter: a Python number, or an array that broadcasts to the state's shape."""
Shape = int | tuple[int, ...]
"""`n` for `init`: a number of neurons, or a full state shape such as `(batch, neurons)`."""

__all__ = [
    "AbstractSurrogate",
    "PiecewiseLinear",
    "SuperSpike",
    "LIF",
    "LIFState",
    "ALIF",
    "ALIFState",
    "ConductanceLIF",
    "ConductanceLIFState",
    "LeakyIntegrator",
    "LeakyIntegratorState",
    "PoissonInput",
    "PoissonInputState",
    "SpikeArrayInput",
    "SpikeArrayInputState",
]


# ---------------------------------------------------------------------------------------------
# Validation helpers (tier (a)/(b) of STYLE.md 8: Python-level checks on concrete values).
# ---------------------------------------------------------------------------------------------


def _concrete(value) -> np.ndarray | None:
    """Returns `value` as a numpy array, or None when it is traced (nothing to check)."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None


def _check_param(owner: str, name: str, value, *, minimum: float = 0.0, strict: bool = True):
    """Raises ValueError unless every element of a concrete `value` is finite and > minimum."""
    array = _concrete(value)
    if array is None:
        return
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{owner}: {name}: expected a real number, got {value!r}")
    ok = array > minimum if strict else array >= minimum
    if not (np.all(np.isfinite(array)) and np.all(ok)):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(f"{owner}: {name}: expected a finite value {bound}, got {value!r}")


def _check_dt(owner: str, dt) -> None:
    array = _concrete(dt)
    if array is None:
        return
    if array.shape != ():
        raise ValueError(f"{owner}: dt: expected a scalar step size in ms, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) and np.isfinite(array) and array > 0):
        raise ValueError(f"{owner}: dt: expected a finite step size > 0 (ms), got {dt!r}")


def _check_input(owner: str, name: str, value, like: Array) -> Array:
    """Checks that `value` is a floating array of exactly `like`'s shape; returns it as one."""
    try:
        value = jnp.asarray(value)
    except TypeError as e:
        raise TypeError(f"{owner}: {name}: expected a floating-point array, got {value!r}") from e
    if value.shape != like.shape:
        raise ValueError(
            f"{owner}: {name}: expected shape {like.shape} (the shape of the state), "
            f"got {value.shape}"
        )
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"{owner}: {name}: expected a floating-point dtype, got {value.dtype}")
    return value


def _state_shape(owner: str, n) -> tuple[int, ...]:
    if isinstance(n, Integral) and not isinstance(n, bool):
        shape = (int(n),)
    elif isinstance(n, tuple) and all(
        isinstance(d, Integral) and not isinstance(d, bool) for d in n
    ):
        shape = tuple(int(d) for d in n)
    else:
        raise ValueError(f"{owner}: n: expected a number of neurons or a tuple shape, got {n!r}")
    if len(shape) == 0 or any(d < 0 for d in shape):
        raise ValueError(
            f"{owner}: n: expected a non-negative size or a non-empty tuple of them, got {n!r}"
        )
    return shape


def _broadcast(param, like: Array):
    """Broadcasts an array parameter explicitly to the state's shape (rank promotion is off)."""
    if isinstance(param, _PyReal):
        return param
    return jnp.broadcast_to(param, like.shape)


def _refractory_steps(tau_refrac, dt) -> Int[Array, "..."]:
    return jnp.round(jnp.asarray(tau_refrac) / dt).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# Surrogate spike functions.
# ---------------------------------------------------------------------------------------------


@jax.custom_jvp
def _heaviside(x: Array, surrogate: AbstractSurrogate) -> Array:
    return jnp.where(x >= 0, 1.0, 0.0).astype(x.dtype)


@_heaviside.defjvp
def _heaviside_jvp(primals, tangents):
    x, surrogate = primals
    x_dot, _ = tangents  # the Heaviside step does not depend on the surrogate's parameters
    return _heaviside(x, surrogate), surrogate.derivative(x) * x_dot


class AbstractSurrogate(eqx.Module):
    """A Heaviside step with a surrogate derivative, for gradients through spikes.

    Calling a surrogate on `x` returns $H(x) = [x \\ge 0]$ as a float array. Its derivative,
    in forward mode (`jax.jvp`) and reverse mode (`jax.grad`), is `derivative(x)` instead of
    the Dirac delta. It is implemented with `jax.custom_jvp`, so it works under `jit`, `vmap`
    and both modes of differentiation.

    The spiking models call it on a dimensionless distance to threshold, e.g.
    $u = (v - v_{th}) / v_{th}$ for `LIF`; each model's docstring states its `u`.

    Subclasses implement `derivative` only (abstract/final rule); `__call__` is final.
    """

    @abc.abstractmethod
    def derivative(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        """The surrogate for $dH/dx$, elementwise."""

    def __call__(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        """Returns $H(x)$ (ones where `x >= 0`), differentiated through `derivative`."""
        return _heaviside(x, self)


class PiecewiseLinear(AbstractSurrogate):
    """The triangular pseudo-derivative of e-prop.

    $\\partial H / \\partial x \\approx \\gamma \\max(0, 1 - |x|)$.

    With $x = (v - A)/v_{th}$ (the `LIF`/`ALIF` convention) this gives, with respect to $v$,
    exactly the e-prop pseudo-derivative
    $\\psi = (\\gamma / v_{th}) \\max(0, 1 - |v - A| / v_{th})$.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> jax.grad(lambda x: PiecewiseLinear(gamma=0.3)(x))(jnp.array(0.5))
        Array(0.15, dtype=float32)

    References:
        Bellec et al. (2018), "Long short-term memory and learning-to-learn in networks of
        spiking neurons", NeurIPS. Bellec et al. (2020), "A solution to the learning dilemma
        for recurrent networks of spiking neurons", Nature Communications 11, 3625.
    """

    gamma: RealScalarLike = 0.3

    def __check_init__(self):
        _check_param("PiecewiseLinear", "gamma", self.gamma, strict=False)

    def derivative(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return self.gamma * jnp.maximum(0.0, 1.0 - jnp.abs(x))


class SuperSpike(AbstractSurrogate):
    """The SuperSpike surrogate: the derivative of a fast sigmoid.

    $\\partial H / \\partial x \\approx 1 / (1 + \\beta |x|)^2$.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> jax.grad(lambda x: SuperSpike(beta=10.0)(x))(jnp.array(0.1))
        Array(0.25, dtype=float32)

    References:
        Zenke & Ganguli (2018), "SuperSpike: supervised learning in multilayer spiking
        neural networks", Neural Computation 30(6), 1514-1541.
    """

    beta: RealScalarLike = 10.0

    def __check_init__(self):
        _check_param("SuperSpike", "beta", self.beta, strict=False)

    def derivative(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return 1.0 / (1.0 + self.beta * jnp.abs(x)) ** 2


# ---------------------------------------------------------------------------------------------
# Current-based LIF and ALIF (the e-prop / mlGeNN form).
# ---------------------------------------------------------------------------------------------


class LIFState(NamedTuple):
    """State of a `LIF` population.

    Attributes:
        v: membrane potential (dimensionless units of the input), `[*batch, neurons]`.
        refractory: remaining refractory steps (int32), `[*batch, neurons]`; 0 = free.
    """

    v: Float[Array, "*batch neurons"]
    refractory: Int[Array, "*batch neurons"]


class LIF(eqx.Module):
    """Leaky integrate-and-fire neuron with current input, in the e-prop (mlGeNN) form.

    Each step (exact integration of a leaky membrane whose input arrives as a jump,
    $\\alpha = e^{-dt/\\tau_m}$):

    $v \\leftarrow \\alpha v + I$,
    $z = H\\big((v - v_{th}) / v_{th}\\big)$ unless refractory,
    then on a spike $v \\leftarrow v - v_{th}$ (`reset="subtract"`) or $v \\leftarrow 0$
    (`reset="zero"`), and the neuron is refractory for `round(tau_refrac / dt)` steps.

    The membrane is dimensionless with rest at 0 and the input $I$ is added as is (no
    membrane resistance, no $(1 - \\alpha)$ factor): this is mlGeNN's `LeakyIntegrateFire`
    with `scale_i=False`, the model that GeNN's e-prop classifiers use. During the refractory
    period the membrane keeps integrating but no spike can be emitted
    (`integrate_during_refractory=True`, as in e-prop); set it to False to clamp `v` instead.
    For a LIF in physical units (mV, nF, conductance synapses) see `ConductanceLIF`.

    The spike is `surrogate(u)` with $u = (v - v_{th}) / v_{th}$, masked to 0 while
    refractory, so with the default `PiecewiseLinear(0.3)` the derivative of a spike with
    respect to $v$ is the e-prop pseudo-derivative
    $\\psi = (0.3 / v_{th}) \\max(0, 1 - |v - v_{th}| / v_{th})$, and 0 while refractory.
    Gradients also flow through the reset.

    Example:
        >>> import jax.numpy as jnp
        >>> lif = LIF()
        >>> state = lif.init(3)
        >>> state, spikes = lif.step(state, jnp.array([0.0, 0.5, 1.0]), dt=1.0)
        >>> spikes
        Array([0., 0., 1.], dtype=float32)

    References:
        Bellec et al. (2020), "A solution to the learning dilemma for recurrent networks of
        spiking neurons", Nature Communications 11, 3625. Knight, Senk & Nowotny (2025),
        arXiv:2510.19764 (GeNN structural plasticity).
    """

    tau_mem: RealParam
    v_threshold: RealParam
    tau_refrac: RealParam
    reset: Literal["subtract", "zero"] = eqx.field(static=True)
    integrate_during_refractory: bool = eqx.field(static=True)
    surrogate: AbstractSurrogate

    def __init__(
        self,
        tau_mem: RealParam = 20.0,
        v_threshold: RealParam = 0.61,
        tau_refrac: RealParam = 5.0,
        reset: Literal["subtract", "zero"] = "subtract",
        integrate_during_refractory: bool = True,
        surrogate: AbstractSurrogate | None = None,
    ):
        """Builds a LIF population (defaults: the N-MNIST hidden layer of MODELS.md).

        Args:
            tau_mem: membrane time constant (ms), > 0.
            v_threshold: firing threshold, > 0 (it also scales the surrogate's input).
            tau_refrac: refractory period (ms), >= 0; rounded to whole steps.
            reset: `"subtract"` ($v \\leftarrow v - v_{th}$) or `"zero"` ($v \\leftarrow 0$).
            integrate_during_refractory: keep integrating while refractory (e-prop), or
                clamp $v$ (GeNN's `LIF`).
            surrogate: the surrogate spike function; default `PiecewiseLinear(gamma=0.3)`.
        """
        self.tau_mem = tau_mem
        self.v_threshold = v_threshold
        self.tau_refrac = tau_refrac
        self.reset = reset
        self.integrate_during_refractory = integrate_during_refractory
        self.surrogate = PiecewiseLinear() if surrogate is None else surrogate

    def __check_init__(self):
        _check_param("LIF", "tau_mem", self.tau_mem)
        _check_param("LIF", "v_threshold", self.v_threshold)
        _check_param("LIF", "tau_refrac", self.tau_refrac, strict=False)
        _check_reset("LIF", self.reset)
        _check_surrogate("LIF", self.surrogate)

    def init(self, n: Shape) -> LIFState:
        """Returns the resting state: `v = 0`, not refractory.

        Args:
            n: number of neurons, or a state shape such as `(batch, neurons)`.

        Returns:
            A `LIFState` with arrays of shape `n`.
        """
        shape = _state_shape("LIF.init", n)
        return LIFState(v=jnp.zeros(shape), refractory=jnp.zeros(shape, jnp.int32))

    def step(
        self, state: LIFState, input: Float[ArrayLike, "*batch neurons"], *, dt: RealScalarLike
    ) -> tuple[LIFState, Float[Array, "*batch neurons"]]:
        """Advances the population by one step of `dt` ms.

        Args:
            state: the current `LIFState`.
            input: synaptic input $I$ for this step, shape of `state.v`.
            dt: step size (ms), > 0.

        Returns:
            `(state, spikes)`, spikes a float array of 0/1 shaped like `state.v`.

        Raises:
            ValueError: `dt <= 0` or `input` not shaped like `state.v`.
        """
        _check_dt("LIF.step", dt)
        input = _check_input("LIF.step", "input", input, state.v)
        alpha = jnp.exp(-dt / _broadcast(self.tau_mem, state.v))
        v = alpha * state.v + input
        if not self.integrate_during_refractory:
            v = jnp.where(state.refractory > 0, state.v, v)
        refractory = jnp.maximum(state.refractory - 1, 0)
        v_th = _broadcast(self.v_threshold, state.v)
        spikes = jnp.where(refractory == 0, self.surrogate((v - v_th) / v_th), 0.0)
        v = _reset(self.reset, v, spikes, v_th)
        refractory = jnp.where(
            spikes > 0, _refractory_steps(_broadcast(self.tau_refrac, state.v), dt), refractory
        )
        return LIFState(v=v, refractory=refractory), spikes


class ALIFState(NamedTuple):
    """State of an `ALIF` population.

    Attributes:
        v: membrane potential, `[*batch, neurons]`.
        a: threshold adaptation variable (decaying spike count), `[*batch, neurons]`.
        refractory: remaining refractory steps (int32), `[*batch, neurons]`; 0 = free.
    """

    v: Float[Array, "*batch neurons"]
    a: Float[Array, "*batch neurons"]
    refractory: Int[Array, "*batch neurons"]


class ALIF(eqx.Module):
    """Adaptive LIF neuron (LSNN) with current input, in the e-prop (mlGeNN) form.

    Each step, with $\\alpha = e^{-dt/\\tau_m}$ and $\\rho = e^{-dt/\\tau_a}$:

    $v \\leftarrow \\alpha v + I$, $a \\leftarrow \\rho a$,
    $A = v_{th} + \\beta a$,
    $z = H\\big((v - A) / v_{th}\\big)$ unless refractory,
    then on a spike $v \\leftarrow v - v_{th}$ and $a \\leftarrow a + 1$, and the neuron is
    refractory for `round(tau_refrac / dt)` steps (integration continues meanwhile).

    So $a$ follows $a_t = \\rho a_{t-1} + z_{t-1}$ and the threshold of step $t$ is
    $v_{th} + \\beta \\rho a_{t-1}$. "Reset by subtraction to 0" (MODELS.md, mlGeNN's
    `relative_reset=True` with `v_reset=0`) is read as $v \\leftarrow v - (v_{th} - 0) z$:
    the base threshold is subtracted, not the adapted one $A$, as in mlGeNN.
    `reset="zero"` sets $v \\leftarrow 0$ instead.

    The surrogate acts on $u = (v - A) / v_{th}$, so with `PiecewiseLinear(0.3)` the spike's
    derivative with respect to $v$ is
    $\\psi = (0.3 / v_{th}) \\max(0, 1 - |v - A| / v_{th})$ (0 while refractory), and with
    respect to the previous step's $a$ it is $-\\beta \\rho \\psi$.

    Example:
        >>> import jax.numpy as jnp
        >>> alif = ALIF()
        >>> state = alif.init(2)
        >>> state, spikes = alif.step(state, jnp.array([0.1, 0.7]), dt=1.0)
        >>> state.a
        Array([0., 1.], dtype=float32)

    References:
        Bellec et al. (2018), "Long short-term memory and learning-to-learn in networks of
        spiking neurons", NeurIPS. Bellec et al. (2020), "A solution to the learning dilemma
        for recurrent networks of spiking neurons", Nature Communications 11, 3625.
    """

    tau_mem: RealParam
    v_threshold: RealParam
    tau_adapt: RealParam
    beta: RealParam
    tau_refrac: RealParam
    reset: Literal["subtract", "zero"] = eqx.field(static=True)
    surrogate: AbstractSurrogate

    def __init__(
        self,
        tau_mem: RealParam = 20.0,
        v_threshold: RealParam = 0.6,
        tau_adapt: RealParam = 2000.0,
        beta: RealParam = 0.0174,
        tau_refrac: RealParam = 5.0,
        reset: Literal["subtract", "zero"] = "subtract",
        surrogate: AbstractSurrogate | None = None,
    ):
        """Builds an ALIF population (defaults: the DVS Gesture hidden layer of MODELS.md).

        Args:
            tau_mem: membrane time constant (ms), > 0.
            v_threshold: base threshold $v_{th}$, > 0 (also scales the surrogate's input).
            tau_adapt: adaptation time constant (ms), > 0.
            beta: adaptation strength, >= 0 (0 gives a LIF that still tracks `a`).
            tau_refrac: refractory period (ms), >= 0; rounded to whole steps.
            reset: `"subtract"` ($v \\leftarrow v - v_{th}$) or `"zero"` ($v \\leftarrow 0$).
            surrogate: the surrogate spike function; default `PiecewiseLinear(gamma=0.3)`.
        """
        self.tau_mem = tau_mem
        self.v_threshold = v_threshold
        self.tau_adapt = tau_adapt
        self.beta = beta
        self.tau_refrac = tau_refrac
        self.reset = reset
        self.surrogate = PiecewiseLinear() if surrogate is None else surrogate

    def __check_init__(self):
        _check_param("ALIF", "tau_mem", self.tau_mem)
        _check_param("ALIF", "v_threshold", self.v_threshold)
        _check_param("ALIF", "tau_adapt", self.tau_adapt)
        _check_param("ALIF", "beta", self.beta, strict=False)
        _check_param("ALIF", "tau_refrac", self.tau_refrac, strict=False)
        _check_reset("ALIF", self.reset)
        _check_surrogate("ALIF", self.surrogate)

    def init(self, n: Shape) -> ALIFState:
        """Returns the resting state: `v = 0`, `a = 0`, not refractory.

        Args:
            n: number of neurons, or a state shape such as `(batch, neurons)`.

        Returns:
            An `ALIFState` with arrays of shape `n`.
        """
        shape = _state_shape("ALIF.init", n)
        return ALIFState(
            v=jnp.zeros(shape), a=jnp.zeros(shape), refractory=jnp.zeros(shape, jnp.int32)
        )

    def threshold(self, state: ALIFState) -> Float[Array, "*batch neurons"]:
        """The adapted threshold $A = v_{th} + \\beta a$ of a state's own `a`.

        This is the threshold mlGeNN's e-prop uses for the pseudo-derivative (from the stored
        state after a step). The next `step` first decays `a`, so it compares $v$ against
        $v_{th} + \\beta \\rho a$.
        """
        return _broadcast(self.v_threshold, state.a) + _broadcast(self.beta, state.a) * state.a

    def step(
        self, state: ALIFState, input: Float[ArrayLike, "*batch neurons"], *, dt: RealScalarLike
    ) -> tuple[ALIFState, Float[Array, "*batch neurons"]]:
        """Advances the population by one step of `dt` ms.

        Args:
            state: the current `ALIFState`.
            input: synaptic input $I$ for this step, shape of `state.v`.
            dt: step size (ms), > 0.

        Returns:
            `(state, spikes)`, spikes a float array of 0/1 shaped like `state.v`.

        Raises:
            ValueError: `dt <= 0` or `input` not shaped like `state.v`.
        """
        _check_dt("ALIF.step", dt)
        input = _check_input("ALIF.step", "input", input, state.v)
        alpha = jnp.exp(-dt / _broadcast(self.tau_mem, state.v))
        rho = jnp.exp(-dt / _broadcast(self.tau_adapt, state.v))
        v = alpha * state.v + input
        a = rho * state.a
        refractory = jnp.maximum(state.refractory - 1, 0)
        v_th = _broadcast(self.v_threshold, state.v)
        threshold = v_th + _broadcast(self.beta, state.v) * a
        spikes = jnp.where(refractory == 0, self.surrogate((v - threshold) / v_th), 0.0)
        v = _reset(self.reset, v, spikes, v_th)
        a = a + spikes
        refractory = jnp.where(
            spikes > 0, _refractory_steps(_broadcast(self.tau_refrac, state.v), dt), refractory
        )
        return ALIFState(v=v, a=a, refractory=refractory), spikes


def _check_reset(owner: str, reset) -> None:
    if reset not in ("subtract", "zero"):
        raise ValueError(f"{owner}: reset: expected 'subtract' or 'zero', got {reset!r}")


def _check_surrogate(owner: str, surrogate) -> None:
    if not isinstance(surrogate, AbstractSurrogate):
        raise TypeError(
            f"{owner}: surrogate: expected an AbstractSurrogate (e.g. PiecewiseLinear(), "
            f"SuperSpike()), got {surrogate!r}"
        )


def _reset(kind: str, v: Array, spikes: Array, v_th) -> Array:
    if kind == "subtract":
        return v - v_th * spikes
    return v * (1.0 - spikes)


# ---------------------------------------------------------------------------------------------
# Conductance-based LIF (the topographic-map target layer; GeNN's LIF + ExpCond).
# ---------------------------------------------------------------------------------------------


class ConductanceLIFState(NamedTuple):
    """State of a `ConductanceLIF` population.

    Attributes:
        v: membrane potential (mV), `[*batch, neurons]`.
        g: total excitatory synaptic conductance (uS), `[*batch, neurons]`.
        refractory: remaining refractory steps (int32), `[*batch, neurons]`; 0 = free.
    """

    v: Float[Array, "*batch neurons"]
    g: Float[Array, "*batch neurons"]
    refractory: Int[Array, "*batch neurons"]


class ConductanceLIF(eqx.Module):
    """LIF neuron with exponentially decaying conductance synapses (GeNN `LIF` + `ExpCond`).

    Units are GeNN's: time ms, potential mV, capacitance nF, current nA, conductance uS
    (so that uS x mV = nA and ms / nF = MOhm). The step's `input` is the conductance
    increment in uS delivered this step: the sum of the weights of the spikes arriving now
    (a weight of 0.2 is 0.2 uS).

    Each step, in GeNN's order (the caller's propagation of the previous step's spikes
    plays the part of GeNN's synapse update, which runs before the neuron update):

    1. $g \\leftarrow g + \\Delta g$ (the input);
    2. $I = g (E_{rev} - v) + I_{offset}$, held fixed over the step;
    3. unless refractory, exponential-Euler step of the membrane,
       $v \\leftarrow v_\\infty + (v - v_\\infty) e^{-dt/\\tau_m}$ with
       $v_\\infty = v_{rest} + R I$, $R = \\tau_m / C$; while refractory $v$ is clamped;
    4. spike $z = H(u)$, $u = (v - v_{th}) / (v_{th} - v_{rest})$, unless refractory; on a
       spike $v \\leftarrow v_{reset}$ and the neuron is clamped for `round(tau_refrac / dt)`
       steps;
    5. $g \\leftarrow g\\, e^{-dt/\\tau_{syn}}$ (exact decay).

    Step 3 is exact for a constant current; treating the synaptic current as constant over
    the step (rather than the conductance) is GeNN's scheme, kept so that results compare
    with the paper's.

    Example:
        >>> import jax.numpy as jnp, jax.random as jr
        >>> neuron = ConductanceLIF()
        >>> state = neuron.init(4, key=jr.key(0))
        >>> state, spikes = neuron.step(state, jnp.zeros(4), dt=0.1)

    References:
        Bamford, Murray & Willshaw (2010), "Synaptic rewiring for topographic mapping and
        receptive field development", Neural Networks 23(4), 517-527. Knight, Senk & Nowotny
        (2025), arXiv:2510.19764 (GeNN structural plasticity).
    """

    capacitance: RealParam
    tau_mem: RealParam
    v_rest: RealParam
    v_reset: RealParam
    v_threshold: RealParam
    tau_refrac: RealParam
    tau_syn: RealParam
    e_rev: RealParam
    i_offset: RealParam
    v_init_mean: RealScalarLike
    v_init_std: RealScalarLike
    surrogate: AbstractSurrogate

    def __init__(
        self,
        capacitance: RealParam = 20.0,
        tau_mem: RealParam = 20.0,
        v_rest: RealParam = -70.0,
        v_reset: RealParam = -70.0,
        v_threshold: RealParam = -54.0,
        tau_refrac: RealParam = 5.0,
        tau_syn: RealParam = 5.0,
        e_rev: RealParam = 0.0,
        i_offset: RealParam = 0.0,
        v_init_mean: RealScalarLike = -60.0,
        v_init_std: RealScalarLike = 5.0,
        surrogate: AbstractSurrogate | None = None,
    ):
        """Builds the population (defaults: the topographic-map target layer of MODELS.md).

        Args:
            capacitance: membrane capacitance $C$ (nF), > 0.
            tau_mem: membrane time constant (ms), > 0; the leak conductance is $C/\\tau_m$.
            v_rest: resting potential (mV).
            v_reset: reset potential (mV).
            v_threshold: firing threshold (mV), > `v_rest`.
            tau_refrac: refractory period (ms), >= 0; rounded to whole steps.
            tau_syn: synaptic conductance decay time constant (ms), > 0.
            e_rev: synaptic reversal potential (mV).
            i_offset: constant offset current (nA).
            v_init_mean: mean of the initial membrane potential (mV).
            v_init_std: standard deviation of the initial potential (mV), >= 0.
            surrogate: the surrogate spike function; default `PiecewiseLinear(gamma=0.3)`.
        """
        self.capacitance = capacitance
        self.tau_mem = tau_mem
        self.v_rest = v_rest
        self.v_reset = v_reset
        self.v_threshold = v_threshold
        self.tau_refrac = tau_refrac
        self.tau_syn = tau_syn
        self.e_rev = e_rev
        self.i_offset = i_offset
        self.v_init_mean = v_init_mean
        self.v_init_std = v_init_std
        self.surrogate = PiecewiseLinear() if surrogate is None else surrogate

    def __check_init__(self):
        owner = "ConductanceLIF"
        _check_param(owner, "capacitance", self.capacitance)
        _check_param(owner, "tau_mem", self.tau_mem)
        _check_param(owner, "tau_syn", self.tau_syn)
        _check_param(owner, "tau_refrac", self.tau_refrac, strict=False)
        _check_param(owner, "v_init_std", self.v_init_std, strict=False)
        for name in ("v_rest", "v_reset", "v_threshold", "e_rev", "i_offset", "v_init_mean"):
            _check_param(owner, name, getattr(self, name), minimum=-np.inf)
        v_th, v_rest = _concrete(self.v_threshold), _concrete(self.v_rest)
        if v_th is not None and v_rest is not None and not np.all(v_th > v_rest):
            raise ValueError(
                f"{owner}: v_threshold: expected a value > v_rest ({self.v_rest!r}), "
                f"got {self.v_threshold!r}"
            )
        _check_surrogate(owner, self.surrogate)

    def init(self, n: Shape, *, key: PRNGKeyArray | None = None) -> ConductanceLIFState:
        """Returns the initial state: $v \\sim N(\\mu, \\sigma)$, $g = 0$, not refractory.

        Args:
            n: number of neurons, or a state shape such as `(batch, neurons)`.
            key: PRNG key for the initial potentials; required when `v_init_std > 0`.

        Returns:
            A `ConductanceLIFState` with arrays of shape `n`.

        Raises:
            ValueError: `key` is None while `v_init_std > 0`.
        """
        shape = _state_shape("ConductanceLIF.init", n)
        std = _concrete(self.v_init_std)
        if key is None:
            if std is None or np.any(std != 0):
                raise ValueError(
                    "ConductanceLIF.init: key: expected a PRNG key because v_init_std="
                    f"{self.v_init_std!r} is not 0, got None (or set v_init_std=0.0)"
                )
            v = jnp.full(shape, self.v_init_mean, dtype=float)
        else:
            v = self.v_init_mean + self.v_init_std * jr.normal(key, shape)
        return ConductanceLIFState(v=v, g=jnp.zeros(shape), refractory=jnp.zeros(shape, jnp.int32))

    def step(
        self,
        state: ConductanceLIFState,
        input: Float[ArrayLike, "*batch neurons"],
        *,
        dt: RealScalarLike,
    ) -> tuple[ConductanceLIFState, Float[Array, "*batch neurons"]]:
        """Advances the population by one step of `dt` ms.

        Args:
            state: the current `ConductanceLIFState`.
            input: conductance increment (uS) arriving this step, shape of `state.v`.
            dt: step size (ms), > 0.

        Returns:
            `(state, spikes)`, spikes a float array of 0/1 shaped like `state.v`.

        Raises:
            ValueError: `dt <= 0` or `input` not shaped like `state.v`.
        """
        _check_dt("ConductanceLIF.step", dt)
        input = _check_input("ConductanceLIF.step", "input", input, state.v)
        like = state.v
        g = state.g + input
        current = g * (_broadcast(self.e_rev, like) - state.v) + _broadcast(self.i_offset, like)
        tau_mem = _broadcast(self.tau_mem, like)
        v_rest = _broadcast(self.v_rest, like)
        v_inf = v_rest + (tau_mem / _broadcast(self.capacitance, like)) * current
        v = v_inf + (state.v - v_inf) * jnp.exp(-dt / tau_mem)
        v = jnp.where(state.refractory > 0, state.v, v)
        refractory = jnp.maximum(state.refractory - 1, 0)
        v_th = _broadcast(self.v_threshold, like)
        spikes = jnp.where(refractory == 0, self.surrogate((v - v_th) / (v_th - v_rest)), 0.0)
        # v (1 - z) + v_reset z is exact for z in {0, 1} and keeps the surrogate gradient.
        v = v * (1.0 - spikes) + _broadcast(self.v_reset, like) * spikes
        refractory = jnp.where(
            spikes > 0, _refractory_steps(_broadcast(self.tau_refrac, like), dt), refractory
        )
        g = g * jnp.exp(-dt / _broadcast(self.tau_syn, like))
        return ConductanceLIFState(v=v, g=g, refractory=refractory), spikes


# ---------------------------------------------------------------------------------------------
# Leaky integrator readout.
# ---------------------------------------------------------------------------------------------


class LeakyIntegratorState(NamedTuple):
    """State of a `LeakyIntegrator` population.

    Attributes:
        v: membrane potential, `[*batch, neurons]`.
    """

    v: Float[Array, "*batch neurons"]


class LeakyIntegrator(eqx.Module):
    """Non-spiking leaky integrator, the readout of the e-prop classifiers.

    $v \\leftarrow \\kappa v + I + b$, with $\\kappa = e^{-dt/\\tau_m}$ and bias $b$
    (mlGeNN's `LeakyIntegrate` with `scale_i=False`). `step` returns the updated $v$ as its
    output; the classifier takes `softmax(v)` of it every step.

    Example:
        >>> import jax.numpy as jnp
        >>> readout = LeakyIntegrator(bias=jnp.array([0.0, 1.0]))
        >>> state, v = readout.step(readout.init(2), jnp.array([1.0, 1.0]), dt=1.0)
        >>> v
        Array([1., 2.], dtype=float32)

    References:
        Bellec et al. (2020), "A solution to the learning dilemma for recurrent networks of
        spiking neurons", Nature Communications 11, 3625.
    """

    tau_mem: RealParam
    bias: RealParam

    def __init__(self, tau_mem: RealParam = 20.0, bias: RealParam = 0.0):
        """Builds a leaky-integrator readout.

        Args:
            tau_mem: membrane time constant (ms), > 0.
            bias: bias added every step, a scalar or a `[neurons]` array (trainable).
        """
        self.tau_mem = tau_mem
        self.bias = bias

    def __check_init__(self):
        _check_param("LeakyIntegrator", "tau_mem", self.tau_mem)
        _check_param("LeakyIntegrator", "bias", self.bias, minimum=-np.inf)

    def init(self, n: Shape) -> LeakyIntegratorState:
        """Returns `v = 0`, arrays of shape `n` (neurons, or `(batch, neurons)`)."""
        return LeakyIntegratorState(v=jnp.zeros(_state_shape("LeakyIntegrator.init", n)))

    def step(
        self,
        state: LeakyIntegratorState,
        input: Float[ArrayLike, "*batch neurons"],
        *,
        dt: RealScalarLike,
    ) -> tuple[LeakyIntegratorState, Float[Array, "*batch neurons"]]:
        """Advances by one step of `dt` ms.

        Args:
            state: the current `LeakyIntegratorState`.
            input: input $I$ for this step, shape of `state.v`.
            dt: step size (ms), > 0.

        Returns:
            `(state, v)`, the updated membrane potential as the output.

        Raises:
            ValueError: `dt <= 0` or `input` not shaped like `state.v`.
        """
        _check_dt("LeakyIntegrator.step", dt)
        input = _check_input("LeakyIntegrator.step", "input", input, state.v)
        kappa = jnp.exp(-dt / _broadcast(self.tau_mem, state.v))
        v = kappa * state.v + input + _broadcast(self.bias, state.v)
        return LeakyIntegratorState(v=v), v


# ---------------------------------------------------------------------------------------------
# Input populations.
# ---------------------------------------------------------------------------------------------


class PoissonInputState(NamedTuple):
    """State of a `PoissonInput` population.

    Attributes:
        key: PRNG key, split on every step.
        spikes: the spikes of the last step (zeros at first), `[*batch, neurons]`; kept so
            that the state fixes the population's shape and holds its latest output.
    """

    key: PRNGKeyArray
    spikes: Float[Array, "*batch neurons"]


class PoissonInput(eqx.Module):
    """Poisson spike sources with per-step rates.

    Each step every neuron spikes, independently, with probability
    $p = 1 - e^{-r\\, dt / 1000}$, $r$ its rate in Hz given as the step's input (so the rates
    may change every step, e.g. a moving stimulus). At most one spike per neuron and step;
    the spike count in $T$ steps is Binomial$(T, p)$. Rates <= 0 give no spikes. The state
    carries a PRNG key that is split on every step.

    Example:
        >>> import jax.numpy as jnp, jax.random as jr
        >>> source = PoissonInput()
        >>> state = source.init(100, key=jr.key(0))
        >>> state, spikes = source.step(state, jnp.full(100, 20.0), dt=1.0)
    """

    def init(self, n: Shape, *, key: PRNGKeyArray) -> PoissonInputState:
        """Returns the initial state.

        Args:
            n: number of neurons, or a state shape such as `(batch, neurons)`.
            key: PRNG key for the spike trains.

        Returns:
            A `PoissonInputState` holding `key` and zero spikes of shape `n`.
        """
        shape = _state_shape("PoissonInput.init", n)
        if not isinstance(key, jax.Array):
            raise TypeError(f"PoissonInput.init: key: expected a PRNG key, got {key!r}")
        return PoissonInputState(key=key, spikes=jnp.zeros(shape))

    def step(
        self,
        state: PoissonInputState,
        input: Float[ArrayLike, "*batch neurons"],
        *,
        dt: RealScalarLike,
    ) -> tuple[PoissonInputState, Float[Array, "*batch neurons"]]:
        """Draws one step of spikes.

        Args:
            state: the current `PoissonInputState`.
            input: rates (Hz) for this step, shape of `state.spikes`.
            dt: step size (ms), > 0.

        Returns:
            `(state, spikes)`, spikes a float array of 0/1 shaped like the rates.

        Raises:
            ValueError: `dt <= 0` or `input` not shaped like `state.spikes`.
        """
        _check_dt("PoissonInput.step", dt)
        rate = _check_input("PoissonInput.step", "input", input, state.spikes)
        key, subkey = jr.split(state.key)
        probability = -jnp.expm1(-rate * (dt / 1000.0))
        spikes = (jr.uniform(subkey, rate.shape, rate.dtype) < probability).astype(rate.dtype)
        return PoissonInputState(key=key, spikes=spikes), spikes


class SpikeArrayInputState(NamedTuple):
    """State of a `SpikeArrayInput`.

    Attributes:
        t: index of the next row to replay (int32 scalar).
    """

    t: Int[Array, ""]


class SpikeArrayInput(eqx.Module):
    """Replays a recorded spike array, one row per step.

    Step $t$ emits `spikes[t]` (as floats); after the last row it emits zeros. The array is
    a field of the module (a dynamic leaf under `eqx.filter_jit`, so a new array of the same
    shape does not recompile). When the spikes are already time-major data, passing them to
    `simulate` (or to your own `lax.scan`) as inputs is equivalent and simpler; this class
    exists so that an input population can be driven like any other model.

    Example:
        >>> import jax.numpy as jnp
        >>> source = SpikeArrayInput(jnp.array([[True, False], [False, True]]))
        >>> state, spikes = source.step(source.init(), None, dt=1.0)
        >>> spikes
        Array([1., 0.], dtype=float32)
    """

    spikes: Shaped[Array, "time *batch neurons"]

    def __init__(self, spikes: Shaped[ArrayLike, "time *batch neurons"]):
        """Wraps a recorded spike array.

        Args:
            spikes: `[time, neurons]` (or `[time, batch, neurons]`) array of spikes, bool or
                0/1 numbers.
        """
        self.spikes = jnp.asarray(spikes)

    def __check_init__(self):
        if self.spikes.ndim < 2:
            raise ValueError(
                "SpikeArrayInput: spikes: expected an array [time, neurons] or "
                f"[time, batch, neurons], got shape {self.spikes.shape}"
            )

    def init(self) -> SpikeArrayInputState:
        """Returns the state at the first row (`t = 0`)."""
        return SpikeArrayInputState(t=jnp.zeros((), jnp.int32))

    def step(
        self, state: SpikeArrayInputState, input: None = None, *, dt: RealScalarLike
    ) -> tuple[SpikeArrayInputState, Float[Array, "*batch neurons"]]:
        """Emits the next row.

        Args:
            state: the current `SpikeArrayInputState`.
            input: must be None (the spikes come from the module).
            dt: step size (ms), > 0; checked, not otherwise used (one row per step).

        Returns:
            `(state, spikes)`, spikes `float[*batch, neurons]`, zeros past the last row.
        """
        _check_dt("SpikeArrayInput.step", dt)
        if input is not None:
            raise ValueError(
                "SpikeArrayInput.step: input: expected None (the spikes come from the "
                f"module), got {type(input).__name__}"
            )
        num_rows = self.spikes.shape[0]
        row = jax.lax.dynamic_index_in_dim(
            self.spikes, jnp.minimum(state.t, num_rows - 1), keepdims=False
        )
        spikes = jnp.where(state.t < num_rows, row.astype(float), 0.0)
        return SpikeArrayInputState(t=state.t + 1), spikes
