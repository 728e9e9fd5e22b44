"""`simulate`: run any `step(state, input, *, dt)` model over time with `lax.scan`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

__all__ = ["Steppable", "SimulationResult", "simulate"]


@runtime_checkable
class Steppable(Protocol):
    """Anything with a scan-ready `step(state, input, *, dt) -> (state, output)`."""

    def step(self, state: Any, input: Any, *, dt: Any) -> tuple[Any, Any]: ...


class SimulationResult(NamedTuple):
    """What `simulate` returns (unpacks as `state, outputs, records`).

    Attributes:
        state: the state after the last step.
        outputs: the step outputs (e.g. spikes) stacked along a new leading time axis,
            `[time, ...]`.
        records: `{name: values}` for each field named in `record`, its value after every
            step, `[time, ...]`; empty when nothing is recorded.
    """

    state: PyTree
    outputs: PyTree
    records: dict[str, Array]


@eqx.filter_jit
def simulate(
    model: Steppable,
    state: PyTree,
    inputs: PyTree | None,
    *,
    dt: float | int,
    num_steps: int | None = None,
    record: Sequence[str] | str = (),
) -> SimulationResult:
    """Runs `model.step` over time with `jax.lax.scan`, under `eqx.filter_jit`.

    Step $t$ computes `state, output = model.step(state, inputs[t], dt=dt)`. The model can be
    any object with that method (a neuron model, or a whole network written by the user);
    its state and the inputs are any pytrees. Arrays inside `model` are traced, Python values
    (floats, strings) are static, so changing a float parameter or `dt` recompiles while
    changing an array does not.

    Args:
        model: an object with `step(state, input, *, dt) -> (state, output)`.
        state: the initial state, e.g. `model.init(n)`.
        inputs: a time-major pytree, every leaf `[time, ...]`; leaf `[t]` is the input of step
            `t`. None to run without inputs (then `num_steps` is required and `step` gets None).
        dt: step size (ms), > 0.
        num_steps: number of steps; optional when `inputs` is given (must then equal its
            leading axis).
        record: names of fields of the state to record after every step (e.g. `("v",)`).

    Returns:
        A `SimulationResult` `(state, outputs, records)`: the final state, the stacked outputs
        `[time, ...]`, and `{name: [time, ...]}` for each recorded field.

    Raises:
        ValueError: `dt <= 0`; inputs without a common leading time axis, or disagreeing with
            `num_steps`; no `inputs` and no `num_steps`; a `record` name that is not a field of
            the state.

    Example:
        >>> import jax.numpy as jnp
        >>> from jaxplastic._neurons import LIF
        >>> lif = LIF()
        >>> currents = jnp.full((100, 3), 0.05)
        >>> state, spikes, records = simulate(lif, lif.init(3), currents, dt=1.0, record="v")
        >>> spikes.shape, records["v"].shape
        ((100, 3), (100, 3))
    """
    if not callable(getattr(model, "step", None)):
        raise TypeError(
            "simulate: model: expected an object with a step(state, input, *, dt) method, "
            f"got {type(model).__name__}"
        )
    _check_dt(dt)
    length = _num_steps(inputs, num_steps)
    names = _record_names(state, record)

    def body(carry, x):
        carry, output = model.step(carry, x, dt=dt)
        return carry, (output, {name: getattr(carry, name) for name in names})

    final, (outputs, records) = jax.lax.scan(body, state, inputs, length=length)
    return SimulationResult(state=final, outputs=outputs, records=records)


def _check_dt(dt) -> None:
    if isinstance(dt, jax.core.Tracer):
        return
    array = np.asarray(dt)
    if not (
        array.shape == ()
        and np.issubdtype(array.dtype, np.number)
        and np.isfinite(array)
        and array > 0
    ):
        raise ValueError(f"simulate: dt: expected a finite step size > 0 (ms), got {dt!r}")


def _num_steps(inputs, num_steps) -> int:
    if num_steps is not None and (
        isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0
    ):
        raise ValueError(f"simulate: num_steps: expected an int >= 0 or None, got {num_steps!r}")
    leaves = jax.tree.leaves(inputs)
    if not leaves:
        if num_steps is None:
            raise ValueError(
                "simulate: num_steps: expected an int when inputs has no arrays, got None"
            )
        return num_steps
    shapes = [jnp.shape(leaf) for leaf in leaves]
    if any(len(shape) == 0 for shape in shapes) or len({shape[0] for shape in shapes}) != 1:
        raise ValueError(
            "simulate: inputs: expected every leaf to have the same leading (time) axis, "
            f"got shapes {shapes}"
        )
    length = shapes[0][0]
    if num_steps is not None and num_steps != length:
        raise ValueError(
            f"simulate: num_steps: expected {length} (the leading axis of inputs), got {num_steps}"
        )
    return length


def _record_names(state, record) -> tuple[str, ...]:
    names = (record,) if isinstance(record, str) else tuple(record)
    fields = getattr(state, "_fields", None)
    for name in names:
        if not isinstance(name, str) or not hasattr(state, name):
            available = f" (fields: {', '.join(fields)})" if fields else ""
            raise ValueError(
                f"simulate: record: expected names of fields of {type(state).__name__}"
                f"{available}, got {name!r}"
            )
    return names
