"""Data-parallel training: the batch split over devices, the network replicated.

Every device holds the whole model, optimiser state, DEEP R signs and PRNG key, and a slice of
the batch. A training step runs the unchanged single-device step inside :func:`jax.shard_map`
with one difference: its e-prop rule (:func:`data_parallel_rule`) sums the per-device
gradients across devices (``lax.psum``) and averages the diagnostics, right after the forward
pass. Everything after that (signed L1, Adam, pruning, regrowth from the state's key, the
optimiser reset) is computed identically on every device from identical inputs, so the
connectivity stays replicated without ever being communicated, and the result is the
single-device result up to the order of the floating-point sums over the batch.

One step communicates one all-reduce of the gradients (one value per slot and dense weight)
plus three scalars; the connectivity and the rewiring never cross devices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..learning._deep_r_train import Method, Trainer, TrainInfo, TrainState, trainer
from ..learning._eprop import Eprop, EpropInfo, eprop
from ..models._classifier import AbstractClassifier

__all__ = [
    "data_mesh",
    "data_parallel",
    "data_parallel_rule",
    "data_parallel_trainer",
    "replicate",
    "shard_batch",
]

T = TypeVar("T")


def data_mesh(devices: Any = None, *, axis: str = "data") -> Mesh:
    """A one-dimensional mesh of devices with the batch axis ``axis``.

    Args:
        devices: the devices, in order (default ``jax.devices()``: every device of every
            process, after ``jax.distributed.initialize`` on several hosts).
        axis: the mesh axis name.

    Returns:
        A :class:`jax.sharding.Mesh` of shape ``(len(devices),)``.

    Raises:
        ValueError: no device, or an empty axis name.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("data_mesh: devices: expected at least one device, got none")
    if not isinstance(axis, str) or not axis:
        raise ValueError(f"data_mesh: axis: expected a non-empty name, got {axis!r}")
    return Mesh(np.array(devices, dtype=object), (axis,))


def _axis_size(owner: str, mesh: Mesh, axis: str) -> int:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{owner}: mesh: expected a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis not in mesh.shape:
        raise ValueError(
            f"{owner}: axis: expected one of the mesh axes {tuple(mesh.shape)}, got {axis!r}"
        )
    return mesh.shape[axis]


def _batch_size(owner: str, batch) -> int:
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(batch)}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            f"{owner}: batch: expected arrays with one shared leading (example) axis, got "
            f"leading sizes {sorted(sizes, key=str)}"
        )
    return sizes.pop()


def _check_divisible(owner: str, size: int, mesh: Mesh, axis: str) -> None:
    devices = _axis_size(owner, mesh, axis)
    if size % devices:
        raise ValueError(
            f"{owner}: batch: the batch of {size} examples is not divisible by the {devices} "
            f"devices of mesh axis {axis!r}; use a multiple of {devices}"
        )


def replicate(tree: T, mesh: Mesh) -> T:
    """Places every array of ``tree`` on every device of ``mesh`` (fully replicated).

    Arrays already replicated on ``mesh`` are left as they are (no copy). On several hosts,
    every process must pass the same values (e.g. the model built from the same key).

    Args:
        tree: any pytree (a model, a :class:`~jaxplastic.learning.TrainState`); non-array
            leaves are kept.
        mesh: the device mesh.

    Returns:
        The same tree, its arrays with sharding ``NamedSharding(mesh, PartitionSpec())``.
    """
    sharding = NamedSharding(mesh, PartitionSpec())

    def place(x):
        if not eqx.is_array(x):
            return x
        if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
            return x
        if jax.process_count() > 1 and isinstance(x, jax.Array):
            # Across processes only host values (checked equal on every process) can be
            # placed; typed PRNG keys travel as their raw bits.
            if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
                return jr.wrap_key_data(place(jr.key_data(x)), impl=jr.key_impl(x))
            x = np.asarray(x)
        return jax.device_put(x, sharding)

    return jax.tree.map(place, tree)


def shard_batch(batch: T, mesh: Mesh, *, axis: str = "data") -> T:
    """Splits a batch over the devices of ``mesh`` along its leading (example) axis.

    On one process, ``batch`` is the whole batch. On several processes (after
    ``jax.distributed.initialize``), it is this process's part: each process passes
    ``global_batch / process_count`` examples, and the result is one global array whose rows
    are the processes' parts in process order
    (:func:`jax.make_array_from_process_local_data`).

    Args:
        batch: a pytree of arrays sharing their leading axis, e.g. ``(spikes [batch, time,
            in], labels [batch])``.
        mesh: the device mesh.
        axis: the mesh axis that splits the batch.

    Returns:
        The same tree of global arrays, sharded ``PartitionSpec(axis)``.

    Raises:
        ValueError: the (global) batch size is not divisible by the number of devices on
            ``axis``, or the leaves disagree on the batch size.
    """
    size = _batch_size("shard_batch", batch) * jax.process_count()
    _check_divisible("shard_batch", size, mesh, axis)
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )


def data_parallel_rule(rule: Eprop | None = None, *, axis: str = "data") -> Eprop:
    """An e-prop rule whose gradients are summed over the devices of mesh axis ``axis``.

    ``gradients`` computes the gradients of this device's slice of the batch with ``rule``,
    then sums them over the devices (``lax.psum``): summed over the batch, as on one device.
    Its :class:`~jaxplastic.learning.EpropInfo` is that of the whole batch too (loss,
    accuracy and rate averaged over devices, which is exact for equal slices; predictions
    gathered in batch order). Use it only inside :func:`jax.shard_map` (or
    :func:`data_parallel`) over ``axis``; ``init``, ``step`` and ``finalize`` are unchanged.

    Args:
        rule: the single-device rule (default ``eprop()``; any mode).
        axis: the mesh axis over which the batch is split.

    Returns:
        An :class:`~jaxplastic.learning.Eprop`. Create it once and reuse it: it is a static
        argument of the training steps, so a new one recompiles them.
    """
    rule = eprop() if rule is None else rule
    if not isinstance(rule, Eprop):
        raise TypeError(f"data_parallel_rule: rule: expected an Eprop, got {type(rule).__name__}")
    local_gradients = rule.gradients

    def gradients(model, spikes, *, labels, dt=1.0) -> tuple[Any, EpropInfo]:
        grads, info = local_gradients(model, spikes, labels=labels, dt=dt)
        grads = lax.psum(grads, axis)
        info = EpropInfo(
            loss=lax.pmean(info.loss, axis),
            accuracy=lax.pmean(info.accuracy, axis),
            prediction=lax.all_gather(info.prediction, axis, tiled=True),
            rate_hz=lax.pmean(info.rate_hz, axis),
        )
        return grads, info

    return rule._replace(gradients=gradients)


def data_parallel(
    step: Callable[[Any, Any, Any], tuple[Any, Any, Any]],
    *,
    mesh: Mesh,
    axis: str = "data",
) -> Callable[[Any, Any, Any], tuple[Any, Any, Any]]:
    """Runs a training step data-parallel: batch split over ``axis``, all else replicated.

    ``step(model, state, batch) -> (model, state, info)`` is a single-device training step
    whose e-prop rule is a :func:`data_parallel_rule` over the same ``axis`` (so that its
    gradients are reduced over devices), e.g. ``trainer(method, rule=...).step`` or
    ``functools.partial(deep_r_train_step, optimizer=..., rule=...)``. The returned function
    runs it under :func:`jax.shard_map` in one ``eqx.filter_jit`` program: the batch
    ``PartitionSpec(axis)``, the model and state replicated in and out.

    Every device computes the post-gradient part of the step (optimiser, rewiring from the
    state's key) on identical inputs, so its outputs are identical on every device: the
    outputs are replicated arrays on ``mesh``. Without a reducing rule the devices would
    diverge (each would train on its own slice); that is not detected.

    Args:
        step: the single-device step (un-jitted or jitted; it is traced inside).
        mesh: the device mesh.
        axis: the mesh axis that splits the batch.

    Returns:
        ``step(model, state, batch) -> (model, state, info)``: same signature and results;
        ``model`` and ``state`` are placed with :func:`replicate` first (no copy when they
        already are, e.g. the outputs of the previous step), ``batch`` is split (give it as
        from :func:`shard_batch` to avoid a copy from one device). The batch size must be
        divisible by the number of devices on ``axis``.

    Raises:
        ValueError: the batch size is not divisible by the number of devices on ``axis``.
    """
    _axis_size("data_parallel", mesh, axis)

    @eqx.filter_jit
    def sharded(model, state, batch):
        dynamic, static = eqx.partition((model, state), eqx.is_array)
        out_static = []

        def local(dynamic, batch):
            out_dynamic, out_static_part = eqx.partition(
                step(*eqx.combine(dynamic, static), batch), eqx.is_array
            )
            out_static.append(out_static_part)
            return out_dynamic

        # check_vma=False: the single-device step's scans and conds mix replicated parameters
        # with per-device values, which the varying-axes type check rejects; the outputs are
        # replicated by construction (see the module docstring), and tests check it.
        out_dynamic = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(PartitionSpec(), PartitionSpec(axis)),
            out_specs=PartitionSpec(),
            check_vma=False,
        )(dynamic, batch)
        return eqx.combine(out_dynamic, out_static[0])

    def parallel_step(model, state, batch):
        _check_divisible("data_parallel step", _batch_size("data_parallel step", batch), mesh, axis)
        return sharded(replicate(model, mesh), replicate(state, mesh), batch)

    return parallel_step


def data_parallel_trainer(
    method: Method,
    *,
    mesh: Mesh,
    axis: str = "data",
    rule: Eprop | None = None,
    **options: Any,
) -> Trainer:
    """:func:`~jaxplastic.learning.trainer` run data-parallel over the devices of ``mesh``.

    The same methods (``"dense"``, ``"static"``, ``"deep_r"``) and options; the step splits
    each batch over ``axis`` and reduces the gradients (:func:`data_parallel`), and gives the
    single-device trainer's result up to the order of the floating-point sums over the batch.

    Args:
        method: ``"dense"``, ``"static"`` or ``"deep_r"``.
        mesh: the device mesh (e.g. :func:`data_mesh`).
        axis: the mesh axis that splits the batch.
        rule: the single-device e-prop rule (default ``eprop()``); it is wrapped in
            :func:`data_parallel_rule`.
        **options: the keyword arguments of :func:`~jaxplastic.learning.trainer`
            (``learning_rate``, ``l1_strength``, ``optimizer``, ``dt``, ...).

    Returns:
        A :class:`~jaxplastic.learning.Trainer`: ``init(model, *, key)`` returns a replicated
        :class:`~jaxplastic.learning.TrainState`; ``step(model, state, batch)`` as
        :func:`data_parallel`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jaxplastic.learning import with_padding
        >>> from jaxplastic.models import recurrent_classifier
        >>> mesh = data_mesh()
        >>> train = data_parallel_trainer("deep_r", mesh=mesh, l1_strength=0.01)
        >>> model = with_padding(recurrent_classifier(20, 3, n_hidden=16, p_in=0.2,
        ...                                           p_rec=0.2, key=jax.random.key(0)), 2.0)
        >>> state = train.init(model, key=jax.random.key(1))
        >>> n = 4 * len(jax.devices())
        >>> batch = shard_batch((jnp.ones((n, 30, 20), jnp.uint8), jnp.arange(n) % 3), mesh)
        >>> model, state, info = train.step(model, state, batch)
    """
    _axis_size("data_parallel_trainer", mesh, axis)
    base = trainer(method, rule=data_parallel_rule(rule, axis=axis), **options)
    step = data_parallel(base.step, mesh=mesh, axis=axis)

    def init(model: AbstractClassifier, *, key) -> TrainState:
        return replicate(base.init(model, key=key), mesh)

    def typed_step(model, state: TrainState, batch) -> tuple[Any, TrainState, TrainInfo]:
        return step(model, state, batch)

    return Trainer(method=base.method, optimizer=base.optimizer, init=init, step=typed_step)
