"""Exact event-driven spike propagation through a ragged projection.

``out[b, j] = sum_i spikes[b, i] * sum_s weight[i, s] [post[i, s] == j]``, computed over the
rows of spiking neurons only. Dispatches on a static ``impl`` to the XLA path (CPU, and the
oracle) or the Pallas kernel (GPU). Gradients flow to weights and spikes through a
``custom_vjp`` whose backward pass is a gather.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ._connectivity import RaggedConnectivity
from ._custom_types import Array, Float, Impl, Int, Shaped

__all__ = ["propagate"]

_IMPLS = ("auto", "xla", "pallas")
# Slots gathered per loop iteration on the XLA path: large enough to amortise the loop, small
# enough that a sparse step does little wasted work on the last, partly filled block.
_SLOTS_PER_BLOCK = 8192


def _accumulation_dtype(dtype):
    return jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype


def _default_block_rows(n_pre: int, capacity: int) -> int:
    return max(1, min(n_pre, _SLOTS_PER_BLOCK // max(capacity, 1)))


def _propagate_xla(
    post: Int[Array, "pre cap"],
    weight: Float[Array, "pre cap"],
    spikes: Float[Array, "batch pre"],
    n_post: int,
    block_rows: int,
) -> Float[Array, "batch post"]:
    """Event-driven scatter-add over (example, spiking row) pairs, in blocks of rows.

    The spiking (example, row) pairs are compacted in O(batch * n_pre); a loop then visits
    ``ceil(count / block_rows)`` blocks, so the cost follows the number of spikes and no
    spike is ever dropped, however many neurons fire.
    """
    batch, n_pre = spikes.shape
    acc = _accumulation_dtype(weight.dtype)
    flat_spikes = spikes.reshape(-1)
    total = batch * n_pre
    n_blocks_max = -(-total // block_rows)
    events = jnp.nonzero(flat_spikes != 0, size=n_blocks_max * block_rows, fill_value=total)[0]
    count = jnp.sum(flat_spikes != 0)
    sink = batch * n_post  # flat output index of the dropped entry

    def body(k, out):
        event = lax.dynamic_slice(events, (k * block_rows,), (block_rows,))
        row = event % n_pre
        example = event // n_pre
        valid = event < total
        tgt = post.at[row].get(mode="fill", fill_value=n_post)
        w = weight.at[row].get(mode="fill", fill_value=0).astype(acc)
        s = flat_spikes.at[event].get(mode="fill", fill_value=0).astype(acc)
        index = jnp.where(valid[:, None] & (tgt != n_post), example[:, None] * n_post + tgt, sink)
        return out.at[index.reshape(-1)].add((w * s[:, None]).reshape(-1), mode="drop")

    n_blocks = (count + block_rows - 1) // block_rows
    out = lax.fori_loop(0, n_blocks, body, jnp.zeros(batch * n_post, acc))
    return out.reshape(batch, n_post).astype(weight.dtype)


def _propagate_pallas(post, weight, spikes, n_post, block_rows):
    del block_rows
    from pallas_kernels.propagate import propagate as pallas_propagate

    interpret = jax.default_backend() == "cpu"
    return pallas_propagate(post, weight, spikes, n_post=n_post, interpret=interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _propagate(post, weight, spikes, n_post, impl, block_rows):
    fn = _propagate_pallas if impl == "pallas" else _propagate_xla
    return fn(post, weight, spikes, n_post, block_rows)


def _propagate_fwd(post, weight, spikes, n_post, impl, block_rows):
    out = _propagate(post, weight, spikes, n_post, impl, block_rows)
    return out, (post, weight, spikes)


def _propagate_bwd(n_post, impl, block_rows, residuals, g):
    post, weight, spikes = residuals
    g_pad = jnp.concatenate([g, jnp.zeros((g.shape[0], 1), g.dtype)], axis=1)
    g_slot = g_pad[:, post]  # [batch, pre, cap]; free slots read the zero sink
    d_weight = jnp.einsum("bi,bis->is", spikes, g_slot).astype(weight.dtype)
    d_spikes = jnp.einsum("is,bis->bi", weight, g_slot).astype(spikes.dtype)
    return None, d_weight, d_spikes


_propagate.defvjp(_propagate_fwd, _propagate_bwd)


def propagate(
    conn: RaggedConnectivity,
    spikes: Shaped[Array, "*batch pre"],
    *,
    weight: Float[Array, "pre cap"] | None = None,
    impl: Impl = "auto",
    block_rows: int | None = None,
) -> Float[Array, "*batch post"]:
    """Input to every postsynaptic neuron from one time step of presynaptic spikes.

    $\\text{out}_{bj} = \\sum_i s_{bi} \\sum_{k} w_{ik} [\\text{post}_{ik} = j]$, exact: no spike is
    dropped whatever the activity. Differentiable in ``weight`` and ``spikes``.

    Args:
        conn: the projection.
        spikes: ``[pre]`` or ``[batch, pre]`` spikes (bool) or graded values (float).
        weight: optional ``[pre, cap]`` weights to use instead of ``conn.weight``.
        impl: ``"xla"`` (event-driven gather/scatter, the CPU path and the oracle),
            ``"pallas"`` (GPU kernel; interpret mode on CPU), or ``"auto"`` (Pallas on GPU,
            XLA elsewhere). Static.
        block_rows: spiking rows per loop iteration on the XLA path (static; a heuristic by
            default).

    Returns:
        ``[post]`` or ``[batch, post]`` input, in the weights' dtype.

    Example:
        >>> conn = jaxplastic.fixed_probability(jax.random.key(0), 100, 50, 0.1)
        >>> spikes = jax.random.bernoulli(jax.random.key(1), 0.1, (100,))
        >>> jaxplastic.propagate(conn, spikes).shape
        (50,)
    """
    if impl not in _IMPLS:
        raise ValueError(f"impl: expected one of {_IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = "pallas" if jax.default_backend() == "gpu" else "xla"
    weight = conn.weight if weight is None else weight
    if weight.shape != conn.post.shape:
        raise ValueError(f"weight: expected shape {conn.post.shape}, got {weight.shape}")
    if not jnp.issubdtype(weight.dtype, jnp.floating):
        raise TypeError(f"weight: expected a floating dtype, got {weight.dtype}")
    spikes = jnp.asarray(spikes)
    if spikes.ndim not in (1, 2) or spikes.shape[-1] != conn.n_pre:
        raise ValueError(
            f"spikes: expected shape [{conn.n_pre}] or [batch, {conn.n_pre}], got {spikes.shape}"
        )
    if block_rows is None:
        block_rows = _default_block_rows(conn.n_pre, conn.capacity)
    if not isinstance(block_rows, int) or block_rows < 1:
        raise ValueError(f"block_rows: expected a positive int, got {block_rows!r}")
    single = spikes.ndim == 1
    batched = spikes[None] if single else spikes
    out = _propagate(conn.post, weight, batched.astype(weight.dtype), conn.n_post, impl, block_rows)
    return out[0] if single else out
