"""Spike encodings: latency and rate (Poisson) coding of images, and binning of events.

Every function returns ``uint8`` spike arrays holding 0 or 1: at most one spike per input
neuron per time bin of width ``dt`` (milliseconds). Bin ``k`` covers ``[k * dt, (k + 1) * dt)``.
"""

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Int, Key, PRNGKeyArray, Real, Shaped, UInt8


@dataclasses.dataclass(frozen=True)
class LatencyEncoding:
    """Latency (time-to-first-spike) coding: brighter pixels fire earlier, each at most once.

    A pixel of intensity $x \\in [0, 1]$ above `threshold` fires once, at
    $t = \\tau \\ln\\big(x / (x - \\vartheta)\\big)$ ms (the time an RC neuron of time constant
    $\\tau$ driven by a constant current $x$ takes to reach threshold $\\vartheta$), in bin
    $\\lfloor t / dt \\rfloor$. Pixels at or below threshold stay silent; spikes later than the
    last bin are dropped. The defaults (20 ms, 0.2, that is 51/255) are mlGeNN's MNIST settings.

    Attributes:
        tau: effective membrane time constant in ms (> 0).
        threshold: intensity threshold in [0, 1).
    """

    tau: float = 20.0
    threshold: float = 0.2

    def __post_init__(self):
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"LatencyEncoding: expected tau > 0 (ms), got {self.tau}")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"LatencyEncoding: expected 0 <= threshold < 1, got {self.threshold}")


@dataclasses.dataclass(frozen=True)
class RateEncoding:
    """Rate (Bernoulli/Poisson) coding: every bin spikes with probability proportional to intensity.

    A pixel of intensity $x \\in [0, 1]$ spikes in each bin independently with probability
    $p = \\min(1, x \\, r_{max} \\, dt / 1000)$, the discrete-time Poisson process of rate
    $x \\, r_{max}$ with at most one spike per bin.

    Attributes:
        max_rate_hz: firing rate of a pixel of intensity 1, in Hz (>= 0).
    """

    max_rate_hz: float = 100.0

    def __post_init__(self):
        if not (math.isfinite(self.max_rate_hz) and self.max_rate_hz >= 0):
            raise ValueError(f"RateEncoding: expected max_rate_hz >= 0, got {self.max_rate_hz}")


def _check_steps(num_steps, dt):
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
        raise TypeError(f"expected num_steps to be an int, got {num_steps!r}")
    if num_steps <= 0:
        raise ValueError(f"expected num_steps > 0, got {num_steps}")
    if isinstance(dt, bool) or not isinstance(dt, int | float | np.integer | np.floating):
        raise TypeError(f"expected dt to be a float (ms), got {dt!r}")
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"expected dt > 0 (ms), got {dt!r}")


def _intensities(images, dtype=np.float32) -> np.ndarray:
    """Flattens `[batch, *pixels]` images to `[batch, n]` intensities in [0, 1]."""
    images = np.asarray(images)
    if images.ndim < 2:
        raise ValueError(
            f"expected images of shape [batch, *pixels] (at least 2 dimensions), "
            f"got shape {images.shape}"
        )
    flat = images.reshape(images.shape[0], -1)
    if flat.dtype == np.uint8:
        return flat.astype(dtype) / dtype(255.0)
    if flat.dtype.kind not in "biuf":
        raise ValueError(f"expected a numeric image array, got dtype {flat.dtype}")
    flat = flat.astype(dtype)
    if flat.size and not (np.all(np.isfinite(flat)) and flat.min() >= 0 and flat.max() <= 1):
        raise ValueError(
            "expected uint8 images (0..255) or intensities in [0, 1], "
            f"got values in [{flat.min()}, {flat.max()}] of dtype {images.dtype}"
        )
    return flat


def latency_encode(
    images: Real[np.ndarray, "batch ..."],
    *,
    num_steps: int,
    dt: float = 1.0,
    tau: float = 20.0,
    threshold: float = 0.2,
) -> UInt8[np.ndarray, "batch time input"]:
    """Latency-codes images: one spike per pixel above threshold, brighter pixels earlier.

    Pixel intensity $x$ (uint8 images are divided by 255; float images must lie in [0, 1])
    fires once at $t = \\tau \\ln(x / (x - \\vartheta))$ ms, in bin $\\lfloor t / dt \\rfloor$.
    Pixels with $x \\le \\vartheta$ stay silent, and spikes at $t \\ge$ `num_steps * dt` are
    cropped (dropped). Deterministic.

    Args:
        images: images of shape `[batch, *pixels]`; everything after the batch axis is flattened
            in row-major order (channels last), giving `input = prod(pixels)` neurons.
        num_steps: number of time bins (> 0).
        dt: bin width in ms (> 0).
        tau: time constant in ms, see `LatencyEncoding`.
        threshold: intensity threshold in [0, 1), see `LatencyEncoding`.

    Returns:
        `uint8` spikes of shape `[batch, num_steps, input]`.

    Raises:
        ValueError: on bad shapes, values outside [0, 1], or bad parameters.

    Example:
        >>> import numpy as np
        >>> from jaxplastic.datasets import latency_encode
        >>> latency_encode(np.array([[255, 0]], np.uint8), num_steps=10)[0, :, 0].nonzero()[0]
        array([4])
    """
    _check_steps(num_steps, dt)
    LatencyEncoding(tau=tau, threshold=threshold)  # validates
    # float64 so that a pixel exactly at the threshold (51 / 255 = 0.2) compares equal to it.
    x = _intensities(images, np.float64)
    out = np.zeros((x.shape[0], num_steps, x.shape[1]), np.uint8)
    b, i = np.nonzero(x > threshold)
    xi = x[b, i]
    t = tau * np.log(xi / (xi - threshold))
    k = np.floor(t / dt)
    keep = k < num_steps
    out[b[keep], k[keep].astype(np.intp), i[keep]] = 1
    return out


@functools.partial(jax.jit, static_argnames=("num_steps",))
def _bernoulli_spikes(
    keys: Key[Array, " batch"], probs: Shaped[Array, "batch input"], num_steps: int
) -> UInt8[Array, "batch time input"]:
    def one(key, p):
        spikes = jr.uniform(key, (num_steps, p.shape[0]), dtype=p.dtype) < p[None, :]
        return spikes.astype(jnp.uint8)

    return jax.vmap(one)(keys, probs)


def _rate_encode_with_keys(x: np.ndarray, keys, *, num_steps, dt, max_rate_hz) -> np.ndarray:
    probs = np.clip(x * np.float32(max_rate_hz * dt / 1000.0), 0.0, 1.0).astype(np.float32)
    return np.asarray(_bernoulli_spikes(keys, jnp.asarray(probs), num_steps))


def example_keys(key: PRNGKeyArray, indices: Int[np.ndarray, " batch"]) -> Key[Array, " batch"]:
    """One key per example, `fold_in(key, index)`: an example's spikes ignore batch order."""
    data = jnp.asarray(np.asarray(indices, np.uint32))
    return jax.vmap(jr.fold_in, in_axes=(None, 0))(key, data)


def rate_encode(
    images: Real[np.ndarray, "batch ..."],
    *,
    num_steps: int,
    key: PRNGKeyArray,
    dt: float = 1.0,
    max_rate_hz: float = 100.0,
) -> UInt8[np.ndarray, "batch time input"]:
    """Rate-codes images as Bernoulli spike trains (Poisson with at most one spike per bin).

    Pixel intensity $x$ (uint8 images are divided by 255; float images must lie in [0, 1])
    spikes in each bin independently with probability $\\min(1, x \\, r_{max} \\, dt / 1000)$.
    Example `b` draws from `jax.random.split(key, batch)[b]`; the same key gives the same spikes.

    Args:
        images: images of shape `[batch, *pixels]`, flattened after the batch axis.
        num_steps: number of time bins (> 0).
        key: a JAX PRNG key.
        dt: bin width in ms (> 0).
        max_rate_hz: rate of a pixel of intensity 1, in Hz.

    Returns:
        `uint8` spikes of shape `[batch, num_steps, input]`.

    Raises:
        ValueError: on bad shapes, values outside [0, 1], or bad parameters.

    Example:
        >>> import jax, numpy as np
        >>> from jaxplastic.datasets import rate_encode
        >>> s = rate_encode(np.ones((1, 3)), num_steps=1000, key=jax.random.key(0))
        >>> s.shape, bool(50 < s.sum(axis=1).mean() < 150)
        ((1, 1000, 3), True)
    """
    _check_steps(num_steps, dt)
    RateEncoding(max_rate_hz=max_rate_hz)  # validates
    x = _intensities(images)
    keys = jr.split(key, x.shape[0])
    return _rate_encode_with_keys(x, keys, num_steps=num_steps, dt=dt, max_rate_hz=max_rate_hz)


def bin_event_batch(
    events: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    num_inputs: int,
    num_steps: int,
    dt: float,
) -> UInt8[np.ndarray, "batch time input"]:
    """`bin_events` over a batch of `(times_ms, units)` pairs, in one array."""
    out = np.zeros((len(events), num_steps, num_inputs), np.uint8)
    flat = out.reshape(-1)
    for b, (times, units) in enumerate(events):
        times = np.asarray(times, np.float64).reshape(-1)
        units = np.asarray(units).reshape(-1)
        if times.shape != units.shape:
            raise ValueError(
                f"expected times and units of equal length, got {times.shape} and {units.shape}"
            )
        if units.size and (units.min() < 0 or units.max() >= num_inputs):
            raise ValueError(
                f"expected units in [0, {num_inputs}), got [{units.min()}, {units.max()}]"
            )
        # Round to the microsecond first: float32 times such as 0.007 s (6.99999e-3) must not
        # fall into the previous bin.
        k = np.floor(np.rint(times * 1000.0) / (dt * 1000.0))
        keep = (k >= 0) & (k < num_steps)
        flat[(b * num_steps + k[keep].astype(np.int64)) * num_inputs + units[keep]] = 1
    return out


def bin_events(
    times: Real[np.ndarray, " events"],
    units: Int[np.ndarray, " events"],
    *,
    num_inputs: int,
    num_steps: int,
    dt: float = 1.0,
) -> UInt8[np.ndarray, "time input"]:
    """Bins spike events into a dense `[time, input]` raster with at most one spike per bin.

    Event `(t, u)` sets bin $\\lfloor t / dt \\rfloor$ of neuron `u` (times are first rounded to
    the nearest microsecond). Several events of one neuron in one bin give a single spike, as in
    GeNN's experiments. The raster is cropped at `num_steps` bins (events at
    `t >= num_steps * dt` or `t < 0` are dropped) and padded with silence when the events end
    earlier.

    Args:
        times: event times in ms.
        units: event neuron indices in `[0, num_inputs)`.
        num_inputs: number of input neurons.
        num_steps: number of bins (> 0).
        dt: bin width in ms (> 0).

    Returns:
        `uint8` raster of shape `[num_steps, num_inputs]`.

    Raises:
        ValueError: on mismatched lengths, out-of-range units or bad parameters.

    Example:
        >>> import numpy as np
        >>> from jaxplastic.datasets import bin_events
        >>> times, units = np.array([0.2, 0.7, 2.5]), np.array([1, 1, 0])
        >>> bin_events(times, units, num_inputs=2, num_steps=3).tolist()
        [[0, 1], [0, 0], [1, 0]]
    """
    _check_steps(num_steps, dt)
    if num_inputs <= 0:
        raise ValueError(f"expected num_inputs > 0, got {num_inputs}")
    return bin_event_batch([(times, units)], num_inputs=num_inputs, num_steps=num_steps, dt=dt)[0]
