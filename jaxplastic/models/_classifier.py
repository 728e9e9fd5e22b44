"""Recurrent spiking classifiers: spike input -> recurrent LIF/ALIF layer -> leaky readout.

The network of the GeNN structural-plasticity classifiers (MODELS.md section 1; Knight, Senk &
Nowotny 2025), in two variants that share every equation:

- :class:`RecurrentClassifier`: the input->hidden and hidden->hidden projections are
  :class:`~jaxplastic.RaggedConnectivity` (fixed-capacity sparse rows, rewirable in place);
- :class:`DenseClassifier`: the dense twin, every connection a dense matrix.

Both have a dense hidden->output matrix ``w_out [hidden, out]``, a trained output bias
``b_out [out]`` and a leaky-integrator readout. The prediction for a sequence is the sum over
time of ``softmax(V_out)``. Train them with :func:`jaxplastic.learning.eprop` (online e-prop)
and :func:`jaxplastic.learning.train_step`.

One time step (``dt`` ms), from the input spikes ``x(t)`` and the hidden spikes of the previous
step ``z(t-1)``:

1. ``I(t) = W_in^T x(t) + W_rec^T z(t-1)`` (:meth:`AbstractClassifier.hidden_input`);
2. the hidden population steps: ``(state, z(t)) = hidden.step(state, I(t), dt=dt)`` (LIF or
   ALIF of :mod:`jaxplastic`, see their docstrings);
3. the readout integrates: ``V(t) = kappa V(t-1) + w_out^T z(t) + b_out`` with
   ``kappa = exp(-dt / tau_out)`` (mlGeNN's ``LeakyIntegrate`` with ``scale_i=False``; the same
   update as :class:`~jaxplastic.LeakyIntegrator`).
"""

from __future__ import annotations

import abc
import math
from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax

from .._connectivity import RaggedConnectivity, fixed_probability
from .._custom_types import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, Shaped
from .._neurons import ALIF, LIF, ALIFState, LIFState
from .._propagate import propagate

__all__ = [
    "AbstractClassifier",
    "ClassifierOutput",
    "ClassifierState",
    "DenseClassifier",
    "RecurrentClassifier",
    "accuracy",
    "dense_classifier",
    "recurrent_classifier",
]


class ClassifierState(NamedTuple):
    """State of a classifier between two time steps.

    Attributes:
        hidden: the hidden population's state (`LIFState` or `ALIFState`), `[*batch, hidden]`.
        readout: readout membrane potential $V$, `[*batch, out]`.
        spikes: hidden spikes of the last step $z(t-1)$, `[*batch, hidden]` (0/1 floats); they
            reach the recurrent projection in the next step.
    """

    hidden: LIFState | ALIFState
    readout: Float[Array, "*batch out"]
    spikes: Float[Array, "*batch hidden"]


class ClassifierOutput(NamedTuple):
    """Per-step record of a run, from :meth:`AbstractClassifier.simulate`.

    Attributes:
        spikes: hidden spikes, `[*batch, time, hidden]`.
        readout: readout potentials $V$, `[*batch, time, out]`.
        prediction: $\\sum_t \\mathrm{softmax}(V(t))$, `[*batch, out]`.
    """

    spikes: Float[Array, "*batch time hidden"]
    readout: Float[Array, "*batch time out"]
    prediction: Float[Array, "*batch out"]


def _check_spikes(owner: str, spikes, n_in: int) -> Array:
    spikes = jnp.asarray(spikes)
    if spikes.ndim < 2 or spikes.shape[-1] != n_in:
        raise ValueError(
            f"{owner}: spikes: expected shape [*batch, time, {n_in}], got {spikes.shape}"
        )
    if not (jnp.issubdtype(spikes.dtype, jnp.number) or spikes.dtype == jnp.bool_):
        raise TypeError(f"{owner}: spikes: expected 0/1 numbers or bools, got {spikes.dtype}")
    return spikes


class AbstractClassifier(eqx.Module):
    """Spike input -> recurrent spiking layer -> leaky-integrator readout.

    Subclasses hold the two input projections of the hidden layer (ragged or dense) and
    implement :meth:`hidden_input`; everything else (state, step, readout, prediction) is
    shared, so the sparse model and its dense twin run the same equations.
    """

    hidden: eqx.AbstractVar[LIF | ALIF]
    w_out: eqx.AbstractVar[Float[Array, "hidden out"]]
    b_out: eqx.AbstractVar[Float[Array, " out"]]
    tau_out: eqx.AbstractVar[float]

    @property
    @abc.abstractmethod
    def n_in(self) -> int:
        """Number of input neurons."""

    @abc.abstractmethod
    def hidden_input(
        self, x: Float[Array, "*batch in"], z: Float[Array, "*batch hidden"]
    ) -> Float[Array, "*batch hidden"]:
        """Input current $I = W_{in}^T x + W_{rec}^T z$ of the hidden layer for one step.

        Args:
            x: input spikes of this step, `[*batch, in]`.
            z: hidden spikes of the previous step, `[*batch, hidden]`.

        Returns:
            `[*batch, hidden]` input current.
        """

    @property
    def n_hidden(self) -> int:
        """Number of hidden neurons."""
        return self.w_out.shape[0]

    @property
    def n_out(self) -> int:
        """Number of readout neurons (classes)."""
        return self.w_out.shape[1]

    def trainable(self) -> AbstractClassifier:
        """A filter spec (same structure, bool leaves) marking the trained parameters.

        True on the projection weights, `w_out` and `b_out`; False on everything else
        (connectivity indices, other per-synapse variables, neuron parameters).
        Use it as `eqx.filter(model, model.trainable())` or with `optax.masked`.
        """
        spec = jax.tree.map(lambda _: False, self)
        return eqx.tree_at(lambda m: m._weights(), spec, replace=(True,) * len(self._weights()))

    @abc.abstractmethod
    def _weights(self) -> tuple[Array, ...]:
        """The trainable arrays, in the order (input, recurrent, w_out, b_out)."""

    def init(self, batch_shape: int | tuple[int, ...] = ()) -> ClassifierState:
        """The resting state: zero potentials, no spikes, nobody refractory.

        Args:
            batch_shape: leading batch shape, e.g. `32` or `()` for one example.

        Returns:
            A :class:`ClassifierState` with arrays of shape `[*batch_shape, ...]`.
        """
        batch = (batch_shape,) if isinstance(batch_shape, int) else tuple(batch_shape)
        dtype = self.w_out.dtype
        hidden = jax.tree.map(
            lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
            self.hidden.init((*batch, self.n_hidden)),
        )
        return ClassifierState(
            hidden=hidden,
            readout=jnp.zeros((*batch, self.n_out), dtype),
            spikes=jnp.zeros((*batch, self.n_hidden), dtype),
        )

    def readout_step(
        self,
        v: Float[Array, "*batch out"],
        z: Float[Array, "*batch hidden"],
        *,
        dt: float,
    ) -> Float[Array, "*batch out"]:
        """One readout step, $V \\leftarrow \\kappa V + w_{out}^T z + b_{out}$."""
        kappa = jnp.exp(-dt / jnp.asarray(self.tau_out, v.dtype))
        out = jnp.dot(z, self.w_out, precision=lax.Precision.HIGHEST)
        return kappa * v + out + jnp.broadcast_to(self.b_out, v.shape)

    def step(
        self, state: ClassifierState, x: Shaped[ArrayLike, "*batch in"], *, dt: float
    ) -> tuple[ClassifierState, tuple[Float[Array, "*batch hidden"], Float[Array, "*batch out"]]]:
        """Advances the network by one step of `dt` ms.

        Args:
            state: the current :class:`ClassifierState`.
            x: input spikes of this step, `[*batch, in]` (0/1 numbers or bools).
            dt: step size (ms).

        Returns:
            `(state, (z, V))`: the new state, this step's hidden spikes `[*batch, hidden]` and
            readout potentials `[*batch, out]`.
        """
        x = jnp.asarray(x).astype(self.w_out.dtype)
        current = self.hidden_input(x, state.spikes)
        hidden, z = self.hidden.step(state.hidden, current, dt=dt)
        v = self.readout_step(state.readout, z, dt=dt)
        return ClassifierState(hidden=hidden, readout=v, spikes=z), (z, v)

    def simulate(self, spikes: Shaped[ArrayLike, "*batch time in"], *, dt: float = 1.0):
        """Runs a whole sequence and records every step (for inspection and plots).

        Memory grows with the number of steps (the records); use :meth:`__call__` for
        predictions only.

        Args:
            spikes: input spikes `[*batch, time, in]`.
            dt: step size (ms).

        Returns:
            A :class:`ClassifierOutput`.
        """
        spikes = _check_spikes("simulate", spikes, self.n_in)
        batch = spikes.shape[:-2]

        def body(state, x):
            state, (z, v) = self.step(state, x, dt=dt)
            return state, (z, v)

        _, (z, v) = lax.scan(body, self.init(batch), jnp.moveaxis(spikes, -2, 0))
        z, v = jnp.moveaxis(z, 0, -2), jnp.moveaxis(v, 0, -2)
        return ClassifierOutput(
            spikes=z, readout=v, prediction=jnp.sum(jax.nn.softmax(v, axis=-1), axis=-2)
        )

    def __call__(
        self, spikes: Shaped[ArrayLike, "*batch time in"], *, dt: float = 1.0
    ) -> Float[Array, "*batch out"]:
        """The prediction $\\sum_t \\mathrm{softmax}(V(t))$ for a sequence of input spikes.

        Memory does not grow with the number of steps. The predicted class is its argmax.

        Args:
            spikes: input spikes `[*batch, time, in]` (0/1 numbers or bools).
            dt: step size (ms).

        Returns:
            `[*batch, out]` summed softmax of the readout.
        """
        spikes = _check_spikes("__call__", spikes, self.n_in)
        batch = spikes.shape[:-2]
        num_steps = spikes.shape[-2]

        def body(carry, _):
            state, votes, t = carry
            x = lax.dynamic_index_in_dim(spikes, t, axis=spikes.ndim - 2, keepdims=False)
            state, (_, v) = self.step(state, x, dt=dt)
            return (state, votes + jax.nn.softmax(v, axis=-1), t + 1), None

        votes = jnp.zeros((*batch, self.n_out), self.w_out.dtype)
        carry = (self.init(batch), votes, jnp.zeros((), jnp.int32))
        (_, votes, _), _ = lax.scan(body, carry, None, length=num_steps)
        return votes


def _flatten_batch(fn, x: Array, z: Array) -> Array:
    """Calls `fn(x2d, z2d)` on the inputs with their batch axes flattened to one."""
    batch = x.shape[:-1]
    if len(batch) == 1:
        return fn(x, z)
    out = fn(x.reshape(-1, x.shape[-1]), z.reshape(-1, z.shape[-1]))
    return out.reshape(*batch, out.shape[-1])


class RecurrentClassifier(AbstractClassifier):
    """Recurrent spiking classifier with ragged (sparse, rewirable) hidden-layer projections.

    Build one with :func:`recurrent_classifier`; :meth:`to_dense` gives the dense twin.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = recurrent_classifier(20, 3, n_hidden=16, p_in=0.5, p_rec=0.5,
        ...                              key=jax.random.key(0))
        >>> model(jnp.zeros((2, 10, 20))).shape
        (2, 3)

    References:
        Bellec et al. (2020), "A solution to the learning dilemma for recurrent networks of
        spiking neurons", Nature Communications 11, 3625. Knight, Senk & Nowotny (2025),
        arXiv:2510.19764 (GeNN structural plasticity).
    """

    input: RaggedConnectivity
    recurrent: RaggedConnectivity
    w_out: Float[Array, "hidden out"]
    b_out: Float[Array, " out"]
    hidden: LIF | ALIF
    tau_out: float

    def __init__(
        self,
        input: RaggedConnectivity,
        recurrent: RaggedConnectivity,
        w_out: Float[ArrayLike, "hidden out"],
        b_out: Float[ArrayLike, " out"],
        hidden: LIF | ALIF,
        tau_out: float = 20.0,
    ):
        """Assembles a classifier from its parts (see :func:`recurrent_classifier`).

        Args:
            input: input -> hidden projection, `n_pre = in`, `n_post = hidden`.
            recurrent: hidden -> hidden projection.
            w_out: `[hidden, out]` readout weights.
            b_out: `[out]` readout bias.
            hidden: the hidden population, `LIF` or `ALIF`.
            tau_out: readout membrane time constant (ms), > 0.
        """
        self.input = input
        self.recurrent = recurrent
        self.w_out = jnp.asarray(w_out)
        self.b_out = jnp.asarray(b_out)
        self.hidden = hidden
        self.tau_out = tau_out

    def __check_init__(self):
        _check_common("RecurrentClassifier", self)
        n_hidden = self.w_out.shape[0]
        if self.input.n_post != n_hidden:
            raise ValueError(
                f"RecurrentClassifier: input: expected n_post = {n_hidden} (rows of w_out), "
                f"got {self.input.n_post}"
            )
        if self.recurrent.n_pre != n_hidden or self.recurrent.n_post != n_hidden:
            raise ValueError(
                f"RecurrentClassifier: recurrent: expected a {n_hidden} -> {n_hidden} "
                f"projection, got {self.recurrent.n_pre} -> {self.recurrent.n_post}"
            )
        for name, conn in (("input", self.input), ("recurrent", self.recurrent)):
            if conn.weight.dtype != self.w_out.dtype:
                raise TypeError(
                    f"RecurrentClassifier: {name}: expected weights of dtype "
                    f"{self.w_out.dtype} (that of w_out), got {conn.weight.dtype}"
                )

    @property
    def n_in(self) -> int:
        return self.input.n_pre

    def _weights(self):
        return (
            self.input.synapses["weight"],
            self.recurrent.synapses["weight"],
            self.w_out,
            self.b_out,
        )

    def hidden_input(self, x, z):
        def drive(x2, z2):
            return propagate(self.input, x2) + propagate(self.recurrent, z2)

        if x.ndim == 1:
            return drive(x, z)
        return _flatten_batch(drive, x, z)

    def to_dense(self) -> DenseClassifier:
        """The dense twin: the same network with `W_in`, `W_rec` as dense matrices.

        Absent synapses become zeros, which the dense model is free to train.
        """
        return DenseClassifier(
            w_in=self.input.to_dense(),
            w_rec=self.recurrent.to_dense(),
            w_out=self.w_out,
            b_out=self.b_out,
            hidden=self.hidden,
            tau_out=self.tau_out,
        )


class DenseClassifier(AbstractClassifier):
    """The dense twin of :class:`RecurrentClassifier`: every connection a dense matrix.

    Build one with :func:`dense_classifier` or :meth:`RecurrentClassifier.to_dense`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> model = dense_classifier(20, 3, n_hidden=16, key=jax.random.key(0))
        >>> model(jnp.zeros((2, 10, 20))).shape
        (2, 3)
    """

    w_in: Float[Array, "in hidden"]
    w_rec: Float[Array, "hidden hidden"]
    w_out: Float[Array, "hidden out"]
    b_out: Float[Array, " out"]
    hidden: LIF | ALIF
    tau_out: float

    def __init__(
        self,
        w_in: Float[ArrayLike, "in hidden"],
        w_rec: Float[ArrayLike, "hidden hidden"],
        w_out: Float[ArrayLike, "hidden out"],
        b_out: Float[ArrayLike, " out"],
        hidden: LIF | ALIF,
        tau_out: float = 20.0,
    ):
        """Assembles a dense classifier (see :func:`dense_classifier`).

        Args:
            w_in: `[in, hidden]` input weights.
            w_rec: `[hidden, hidden]` recurrent weights (row = presynaptic neuron).
            w_out: `[hidden, out]` readout weights.
            b_out: `[out]` readout bias.
            hidden: the hidden population, `LIF` or `ALIF`.
            tau_out: readout membrane time constant (ms), > 0.
        """
        self.w_in = jnp.asarray(w_in)
        self.w_rec = jnp.asarray(w_rec)
        self.w_out = jnp.asarray(w_out)
        self.b_out = jnp.asarray(b_out)
        self.hidden = hidden
        self.tau_out = tau_out

    def __check_init__(self):
        _check_common("DenseClassifier", self)
        n_hidden = self.w_out.shape[0]
        if self.w_in.ndim != 2 or self.w_in.shape[1] != n_hidden:
            raise ValueError(
                f"DenseClassifier: w_in: expected shape [in, {n_hidden}], got {self.w_in.shape}"
            )
        if self.w_rec.shape != (n_hidden, n_hidden):
            raise ValueError(
                f"DenseClassifier: w_rec: expected shape ({n_hidden}, {n_hidden}), "
                f"got {self.w_rec.shape}"
            )
        for name in ("w_in", "w_rec"):
            if getattr(self, name).dtype != self.w_out.dtype:
                raise TypeError(
                    f"DenseClassifier: {name}: expected dtype {self.w_out.dtype} (that of "
                    f"w_out), got {getattr(self, name).dtype}"
                )

    @property
    def n_in(self) -> int:
        return self.w_in.shape[0]

    def _weights(self):
        return (self.w_in, self.w_rec, self.w_out, self.b_out)

    def hidden_input(self, x, z):
        hi = lax.Precision.HIGHEST  # exact float32 like the ragged path, on GPUs too
        return jnp.dot(x, self.w_in, precision=hi) + jnp.dot(z, self.w_rec, precision=hi)


def _check_common(owner: str, model: AbstractClassifier) -> None:
    if not isinstance(model.hidden, LIF | ALIF):
        raise TypeError(f"{owner}: hidden: expected a LIF or ALIF population, got {model.hidden!r}")
    w_out, b_out = model.w_out, model.b_out
    if w_out.ndim != 2:
        raise ValueError(f"{owner}: w_out: expected a 2-D [hidden, out] array, got {w_out.shape}")
    if not jnp.issubdtype(w_out.dtype, jnp.floating):
        raise TypeError(f"{owner}: w_out: expected a floating dtype, got {w_out.dtype}")
    if b_out.shape != (w_out.shape[1],) or b_out.dtype != w_out.dtype:
        raise ValueError(
            f"{owner}: b_out: expected {w_out.dtype}[{w_out.shape[1]}], "
            f"got {b_out.dtype}{list(b_out.shape)}"
        )
    tau = model.tau_out
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not tau > 0:
        raise ValueError(f"{owner}: tau_out: expected a Python number > 0 (ms), got {tau!r}")


# -- constructors --------------------------------------------------------------------------------

Neuron = Literal["lif", "alif"] | LIF | ALIF


def _hidden_population(neuron: Neuron) -> LIF | ALIF:
    if isinstance(neuron, LIF | ALIF):
        return neuron
    if neuron == "lif":
        return LIF()
    if neuron == "alif":
        return ALIF()
    raise ValueError(f"neuron: expected 'lif', 'alif' or a LIF/ALIF instance, got {neuron!r}")


def _normal(std: float):
    std = float(std)

    def init(key, shape, dtype):
        return std * jr.normal(key, shape, dtype)

    return init


def _check_sizes(**sizes) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")


def recurrent_classifier(
    n_in: int,
    n_out: int,
    *,
    key: PRNGKeyArray,
    n_hidden: int = 512,
    neuron: Neuron = "lif",
    p_in: float = 0.01,
    p_rec: float = 0.01,
    padding: float = 1.0,
    capacity_in: int | None = None,
    capacity_rec: int | None = None,
    tau_out: float = 20.0,
    weight_gain: float = 1.0,
    dtype=jnp.float32,
) -> RecurrentClassifier:
    """A sparse recurrent classifier with the defaults of MODELS.md section 1.

    Input->hidden and hidden->hidden are pairwise-Bernoulli (:func:`~jaxplastic.fixed_probability`)
    with probabilities `p_in`, `p_rec` and no autapses in the recurrent projection; hidden->out
    is dense. Weights are Normal(0, 1/sqrt(n_pre)) as in the paper's code (the whole presynaptic
    population, not the expected in-degree, sets the scale), times `weight_gain`; the bias is 0.

    Args:
        n_in: number of inputs.
        n_out: number of classes.
        key: PRNG key.
        n_hidden: hidden neurons (default 512).
        neuron: `"lif"` (`LIF()`: threshold 0.61, tau_mem 20 ms, refractory 5 ms; N-MNIST),
            `"alif"` (`ALIF()`: threshold 0.6, tau_adapt 2000 ms, beta 0.0174; DVS Gesture)
            or a configured `LIF`/`ALIF`.
        p_in, p_rec: connection probabilities in (0, 1] (default 1 %).
        padding: spare row capacity factor (>= 1), for rewiring (DEEP R).
        capacity_in, capacity_rec: explicit row capacities (default: from the binomial bound
            times `padding`).
        tau_out: readout time constant (ms).
        weight_gain: factor on every initial weight's standard deviation.
        dtype: floating dtype of the weights.

    Returns:
        A :class:`RecurrentClassifier`.

    Example:
        >>> model = recurrent_classifier(784, 10, key=jax.random.key(0))
        >>> model.n_hidden, model.input.capacity >= 1
        (512, True)
    """
    _check_sizes(n_in=n_in, n_out=n_out, n_hidden=n_hidden)
    k_in, k_rec, k_out = jr.split(key, 3)
    hidden = _hidden_population(neuron)
    conn_in = fixed_probability(
        k_in,
        n_in,
        n_hidden,
        p_in,
        capacity=capacity_in,
        padding=padding,
        weight=_normal(weight_gain / math.sqrt(n_in)),
        dtype=dtype,
    )
    conn_rec = fixed_probability(
        k_rec,
        n_hidden,
        n_hidden,
        p_rec,
        capacity=capacity_rec,
        padding=padding,
        autapses=False,
        weight=_normal(weight_gain / math.sqrt(n_hidden)),
        dtype=dtype,
    )
    w_out = (weight_gain / math.sqrt(n_hidden)) * jr.normal(k_out, (n_hidden, n_out), dtype)
    return RecurrentClassifier(
        conn_in, conn_rec, w_out, jnp.zeros(n_out, dtype), hidden, tau_out=tau_out
    )


def dense_classifier(
    n_in: int,
    n_out: int,
    *,
    key: PRNGKeyArray,
    n_hidden: int = 512,
    neuron: Neuron = "lif",
    tau_out: float = 20.0,
    weight_gain: float = 1.0,
    dtype=jnp.float32,
) -> DenseClassifier:
    """A dense recurrent classifier with the defaults of MODELS.md section 1 ("dense" column).

    Every weight is Normal(0, 1/sqrt(n_pre)) times `weight_gain`, except the diagonal of
    `w_rec`, which starts at zero (no autapses initially; the dense model may train it).

    Args:
        n_in: number of inputs.
        n_out: number of classes.
        key: PRNG key.
        n_hidden: hidden neurons (default 512).
        neuron: `"lif"`, `"alif"` or a configured `LIF`/`ALIF` (see
            :func:`recurrent_classifier`).
        tau_out: readout time constant (ms).
        weight_gain: factor on every initial weight's standard deviation.
        dtype: floating dtype of the weights.

    Returns:
        A :class:`DenseClassifier`.
    """
    _check_sizes(n_in=n_in, n_out=n_out, n_hidden=n_hidden)
    k_in, k_rec, k_out = jr.split(key, 3)
    w_in = weight_gain / math.sqrt(n_in) * jr.normal(k_in, (n_in, n_hidden), dtype)
    w_rec = weight_gain / math.sqrt(n_hidden) * jr.normal(k_rec, (n_hidden, n_hidden), dtype)
    w_rec = jnp.where(jnp.eye(n_hidden, dtype=bool), jnp.zeros((), dtype), w_rec)
    w_out = weight_gain / math.sqrt(n_hidden) * jr.normal(k_out, (n_hidden, n_out), dtype)
    return DenseClassifier(
        w_in, w_rec, w_out, jnp.zeros(n_out, dtype), _hidden_population(neuron), tau_out=tau_out
    )


@eqx.filter_jit
def accuracy(
    model: AbstractClassifier,
    spikes: Shaped[ArrayLike, "batch time in"],
    labels: Int[ArrayLike, " batch"],
    *,
    dt: float = 1.0,
) -> Float[Array, ""]:
    """Fraction of examples whose predicted class (argmax of the summed softmax) is the label.

    Args:
        model: a classifier.
        spikes: input spikes `[batch, time, in]`.
        labels: `[batch]` integer class labels.
        dt: step size (ms).

    Returns:
        Scalar accuracy in [0, 1].
    """
    labels = jnp.asarray(labels)
    correct: Bool[Array, " batch"] = jnp.argmax(model(spikes, dt=dt), axis=-1) == labels
    return jnp.mean(correct.astype(model.w_out.dtype))
