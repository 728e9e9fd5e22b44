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
from ._custom_types import Array, Bool, Float, Impl, Int, Shaped

__all__ = ["propagate"]

_IMPLS = ("auto", "xla", "pallas")
# Slots gathered per small block on the XLA path: large enough to amortise the loop, small
# enough that a sparse step does little wasted work on the last, partly filled block.
_SLOTS_PER_BLOCK = 8192
# Full blocks of this many small blocks go first, so that busy steps (a batch, high rates) run
# a few large gathers and scatters instead of hundreds of small ones; the remainder then runs
# in small blocks, so the waste stays below one small block.
_BLOCKS_PER_BIG_BLOCK = 16

_ROW_GATHER = lax.GatherDimensionNumbers(
    offset_dims=(1,), collapsed_slice_dims=(0,), start_index_map=(0,)
)
_ELEMENT_GATHER = lax.GatherDimensionNumbers(
    offset_dims=(), collapsed_slice_dims=(0,), start_index_map=(0,)
)
_ELEMENT_SCATTER = lax.ScatterDimensionNumbers(
    update_window_dims=(), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0,)
)
_IN_BOUNDS = lax.GatherScatterMode.PROMISE_IN_BOUNDS


def _accumulation_dtype(dtype):
    return jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype


def _default_block_rows(n_pre: int, capacity: int) -> int:
    return max(1, min(n_pre, _SLOTS_PER_BLOCK // max(capacity, 1)))


def _inclusive_cumsum(counts: Int[Array, " n"], total_bound: int) -> Int[Array, " n"]:
    """Inclusive prefix sum of small non-negative int32 counts.

    XLA:CPU lowers ``jnp.cumsum`` to a log-depth scan of many small ops; two float32 matmuls
    with triangular ones (within blocks of 64, then across blocks) are several times faster
    and exact while every partial sum stays below 2**24 (``total_bound``, static).
    """
    if total_bound >= 2**24:
        return jnp.cumsum(counts, dtype=jnp.int32)
    n = counts.shape[0]
    width = 64
    n_blocks = -(-n // width)

    def upper(m):
        return (jnp.arange(m)[:, None] <= jnp.arange(m)[None, :]).astype(jnp.float32)

    padded = jnp.pad(counts, (0, n_blocks * width - n)).reshape(n_blocks, width)
    hi = lax.Precision.HIGHEST
    within = jnp.dot(padded.astype(jnp.float32), upper(width), precision=hi)
    block_sums = within[:, -1]
    before = jnp.dot(block_sums, upper(n_blocks), precision=hi) - block_sums
    return (within + before[:, None]).astype(jnp.int32).reshape(-1)[:n]


def _partition(active: Bool[Array, " n"], size: int) -> tuple[Int[Array, " size"], Int[Array, ""]]:
    """Indices of the active entries, in order, padded with zeros to ``size >= n``.

    Returns the indices and their number. The ranks come from popcounts of 32-bit words and a
    prefix sum over the words, so the cost is one pass over the mask, a prefix sum over
    ``n / 32`` words and one scatter; ``jnp.nonzero`` (a full-length scan) costs several
    times more on CPU.
    """
    n = active.shape[0]
    n_words = -(-n // 32)
    bits = jnp.pad(active, (0, n_words * 32 - n)).reshape(n_words, 32)
    bit = jnp.left_shift(jnp.uint32(1), jnp.arange(32, dtype=jnp.uint32))
    words = jnp.sum(jnp.where(bits, bit[None, :], jnp.uint32(0)), axis=1, dtype=jnp.uint32)
    word_counts = lax.population_count(words).astype(jnp.int32)
    word_ends = _inclusive_cumsum(word_counts, n_words * 32)
    below = lax.population_count(words[:, None] & (bit - jnp.uint32(1))[None, :])
    rank = below.astype(jnp.int32) + (word_ends - word_counts)[:, None]
    # Inactive entries get distinct positions past the end, which the scatter drops.
    index = jnp.arange(n_words * 32, dtype=jnp.int32).reshape(n_words, 32)
    position = jnp.where(bits, rank, size + index).reshape(-1)[:n]
    order = lax.scatter(
        jnp.zeros(size, jnp.int32),
        position[:, None],
        jnp.arange(n, dtype=jnp.int32),
        _ELEMENT_SCATTER,
        indices_are_sorted=False,
        unique_indices=True,
        mode=lax.GatherScatterMode.FILL_OR_DROP,
    )
    return order, word_ends[-1]


def _propagate_xla(
    post: Int[Array, "pre cap"],
    weight: Float[Array, "pre cap"],
    spikes: Float[Array, "batch pre"],
    n_post: int,
    block_rows: int,
) -> Float[Array, "batch post"]:
    """Event-driven scatter-add over (example, spiking row) pairs, in blocks of rows.

    The spiking (example, row) pairs are compacted in O(batch * n_pre); loops
    then visit ``count // big`` full big blocks and ``ceil(rest / block_rows)`` small ones,
    so the cost follows the number of spikes and no spike is ever dropped, however many
    neurons fire. Each block gathers its rows' targets and weights and scatter-adds them into
    a flat ``[batch + 1, n_post + cap]`` buffer: a free slot adds into its own sink column
    ``n_post + slot`` (one shared sink would chain every free slot's add through one
    address), and the padding pairs of the last block add zeros into the spare example row.
    """
    batch, n_pre = spikes.shape
    capacity = post.shape[1]
    acc = _accumulation_dtype(weight.dtype)
    total = batch * n_pre
    width = n_post + capacity
    if total == 0:
        return jnp.zeros((batch, n_post), weight.dtype)
    if max(2 * total + 64, (batch + 1) * width) >= 2**31:
        raise ValueError(
            f"spikes: 2 * batch * n_pre = {2 * total} and (batch + 1) * (n_post + capacity) = "
            f"{(batch + 1) * width} must stay below 2**31 on the XLA path; split the batch"
        )
    flat_spikes = spikes.reshape(-1)
    small = block_rows
    padded = -(-total // small) * small
    order, count = _partition(flat_spikes != 0, padded)
    big = small * _BLOCKS_PER_BIG_BLOCK
    sink = n_post + jnp.arange(capacity, dtype=post.dtype)[None, :]
    spare_row = batch * width

    def fetch(start, rows):
        start = start.astype(jnp.int32)
        event = lax.dynamic_slice(order, (start,), (rows,))
        valid = start + lax.iota(jnp.int32, rows) < count
        row = lax.rem(event, jnp.int32(n_pre))
        base = jnp.where(valid, lax.div(event, jnp.int32(n_pre)) * width, spare_row)
        value = lax.gather(flat_spikes, event[:, None], _ELEMENT_GATHER, (1,), mode=_IN_BOUNDS)
        value = jnp.where(valid, value.astype(acc), jnp.zeros((), acc))
        targets = lax.gather(post, row[:, None], _ROW_GATHER, (1, capacity), mode=_IN_BOUNDS)
        weights = lax.gather(weight, row[:, None], _ROW_GATHER, (1, capacity), mode=_IN_BOUNDS)
        return targets, weights, base, value

    def deliver(start, rows, out):
        # The conditional is always taken. It keeps the row gathers out of the elementwise
        # fusions below: fused, XLA:CPU emits them element by element, several times slower
        # than a standalone row gather.
        def skip(start):
            del start
            return (
                jnp.zeros((rows, capacity), post.dtype),
                jnp.zeros((rows, capacity), weight.dtype),
                jnp.zeros((rows,), jnp.int32),
                jnp.zeros((rows,), acc),
            )

        targets, weights, base, value = lax.cond(
            count > 0, functools.partial(fetch, rows=rows), skip, start
        )
        index = jnp.where(targets == n_post, sink, targets).astype(jnp.int32) + base[:, None]
        contribution = weights.astype(acc) * value[:, None]
        return lax.scatter_add(
            out,
            index.reshape(-1, 1),
            contribution.reshape(-1),
            _ELEMENT_SCATTER,
            mode=_IN_BOUNDS,
        )

    out = jnp.zeros((batch + 1) * width, acc)
    done = jnp.zeros((), jnp.int32)
    if big <= padded:
        n_big = count // big
        out = lax.fori_loop(0, n_big, lambda k, out: deliver(k * big, big, out), out)
        done = n_big * big
    n_small = (count - done + small - 1) // small
    out = lax.fori_loop(0, n_small, lambda k, out: deliver(done + k * small, small, out), out)
    return out[: batch * width].reshape(batch, width)[:, :n_post].astype(weight.dtype)


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
    hi = lax.Precision.HIGHEST  # float32 sums, not TF32, on GPUs too
    d_weight = jnp.einsum("bi,bis->is", spikes, g_slot, precision=hi).astype(weight.dtype)
    d_spikes = jnp.einsum("is,bis->bi", weight, g_slot, precision=hi).astype(spikes.dtype)
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
