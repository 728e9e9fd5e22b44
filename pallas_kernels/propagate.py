r"""Event-driven spike propagation through fixed-capacity ragged connectivity.

A projection from `pre` to `post` neurons is stored row-wise: `post[i, slot]` is the target
of slot `slot` of presynaptic neuron `i` (a free slot holds the sentinel `n_post`) and
`weight[i, slot]` its weight (zero in free slots). No row holds the same target twice.
Propagation computes, exactly,

$$\mathrm{out}[b, j] = \sum_i \sum_s \mathrm{spikes}[b, i]\, \mathrm{weight}[i, s]\,
[\mathrm{post}[i, s] = j].$$

The GPU kernel is slot-parallel over the rows of the spiking neurons only: the wrapper
compacts the indices of the spiking rows per batch element, and each program delivers one
`block_size` chunk of up to `block_rows` such rows with atomic adds into the output. Silent
rows cost nothing beyond an early exit.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton
from jaxtyping import Array, Float, Int, Shaped


def propagate_reference(
    post: Int[Array, "pre cap"],
    weight: Float[Array, "pre cap"],
    spikes: Shaped[Array, "*batch pre"],
    *,
    n_post: int,
) -> Float[Array, "*batch post"]:
    r"""Delivers spikes through ragged connectivity with a dense scatter-add (pure jnp).

    $\mathrm{out}[b, j] = \sum_{i, s} \mathrm{spikes}[b, i]\, \mathrm{weight}[i, s]\,
    [\mathrm{post}[i, s] = j]$, accumulated in float32 (float64 for float64 weights).
    Slots holding the sentinel `n_post` are dropped. Silent rows contribute nothing even
    when their weights are not finite, matching the kernel, which never reads them.

    Args:
        post: `[pre, cap]` target of each slot; the sentinel `n_post` marks a free slot.
        weight: `[pre, cap]` weight of each slot, zero in free slots.
        spikes: `[batch, pre]` or `[pre]` spike values; bool, or numbers multiplied in
            (graded spikes), zero meaning silent.
        n_post: number of postsynaptic neurons.

    Returns:
        `[batch, post]` (or `[post]` for 1-D `spikes`) input current, in `weight`'s dtype.
    """
    if spikes.ndim == 1:
        return propagate_reference(post, weight, spikes[None], n_post=n_post)[0]
    acc_dtype = _accumulation_dtype(weight.dtype)
    # [batch, pre, cap]; `where` (not a product) keeps silent rows exactly out of the sum.
    contributions = jnp.where(
        spikes.astype(jnp.bool_)[:, :, None],
        spikes.astype(acc_dtype)[:, :, None] * weight.astype(acc_dtype)[None],
        jnp.zeros((), acc_dtype),
    )
    flat_targets = post.reshape(-1)

    def deliver(row_contributions):
        out = jnp.zeros((n_post,), acc_dtype)
        return out.at[flat_targets].add(row_contributions.reshape(-1), mode="drop")

    return jax.vmap(deliver)(contributions).astype(weight.dtype)


def _propagate_kernel(
    rows_ref,
    values_ref,
    count_ref,
    post_ref,
    weight_ref,
    zeros_ref,
    out_ref,
    *,
    block_size: int,
    block_rows: int,
    capacity: int,
    sink: int,
):
    """Adds one `block_size` chunk of up to `block_rows` spiking rows into `out_ref`.

    Program `(b, r, c)` takes the spiking rows `rows[b, r * block_rows + k]`,
    `k < block_rows`, whose position `r * block_rows + k` is below `count[b]`, and for each
    does `out[b, post[row, chunk]] += value * weight[row, chunk]` with one atomic add over
    the chunk `chunk = [c * block_size, (c + 1) * block_size)`. When `block_size` does not
    divide `capacity`, the last chunk is shifted left to end at `capacity` (the wrapper
    guarantees `block_size <= capacity`) and its lanes already covered by the previous
    chunk are sent to the sink: no masks, no padding, every read in bounds.

    Refs are whole arrays: `rows_ref`, `values_ref` `[batch, pre]` (compacted spiking-row
    indices and their spike values), `count_ref` `[batch]`, `post_ref`, `weight_ref`
    `[pre, cap]`, `zeros_ref` `[batch, post + 1]` (aliased to `out_ref`, unread). Column
    `sink = post` of `out_ref` takes free slots; the wrapper drops it.

    A row holds distinct targets, so the lanes of one atomic add never collide except on
    the sink. That matters beyond speed: the interpret-mode discharge of an atomic add is
    a gather-then-scatter, which loses repeated indices within one call.
    """
    del zeros_ref  # Its buffer is out_ref's; it only supplies the zero initial value.
    batch_index = pl.program_id(0)
    first = pl.program_id(1) * block_rows
    chunk_start = pl.program_id(2) * block_size
    count = count_ref[batch_index]
    if capacity % block_size == 0:
        start = pl.multiple_of(chunk_start, block_size)
        fresh = None
    else:
        start = jnp.minimum(chunk_start, capacity - block_size)
        fresh = start + jnp.arange(block_size, dtype=jnp.int32) >= chunk_start
    chunk = pl.ds(start, block_size)

    def deliver(active):
        row = rows_ref[batch_index, active]
        value = values_ref[batch_index, active]
        targets = post_ref[row, chunk]
        if fresh is not None:
            targets = jnp.where(fresh, targets, sink)
        contributions = weight_ref[row, chunk].astype(value.dtype) * value
        pltriton.atomic_add(out_ref, (batch_index, targets), contributions)

    # Unrolled: block_rows is small, and each row gets its own atomic add (see above).
    for k in range(block_rows):
        active = first + k
        pl.when(active < count)(functools.partial(deliver, active))


def _accumulation_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """Float64 for float64 weights, float32 otherwise (atomics have no bf16 form)."""
    return jnp.dtype(jnp.float64) if dtype == jnp.float64 else jnp.dtype(jnp.float32)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _validate(post, weight, spikes, *, n_post, block_size, block_rows) -> None:
    if isinstance(n_post, bool) or not isinstance(n_post, int) or n_post <= 0:
        raise ValueError(f"expected n_post to be a positive int, got {n_post!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise ValueError(f"expected block_size to be an int, got {block_size!r}")
    if not _is_power_of_two(block_size):
        raise ValueError(f"expected block_size to be a positive power of two, got {block_size}")
    if isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows <= 0:
        raise ValueError(f"expected block_rows to be a positive int, got {block_rows!r}")
    if post.ndim != 2:
        raise ValueError(f"expected post to have rank 2 [pre, cap], got shape {post.shape}")
    if weight.shape != post.shape:
        raise ValueError(
            f"expected weight to have post's shape {post.shape}, got shape {weight.shape}"
        )
    if not jnp.issubdtype(post.dtype, jnp.integer):
        raise TypeError(f"expected post to have an integer dtype, got {post.dtype}")
    if not jnp.issubdtype(weight.dtype, jnp.floating):
        raise TypeError(f"expected weight to have a floating dtype, got {weight.dtype}")
    if spikes.ndim not in (1, 2):
        raise ValueError(
            f"expected spikes to have rank 1 [pre] or 2 [batch, pre], got shape {spikes.shape}"
        )
    if spikes.shape[-1] != post.shape[0]:
        raise ValueError(
            f"expected spikes to have a last axis of size pre={post.shape[0]}, "
            f"got shape {spikes.shape}"
        )
    if not (
        spikes.dtype == jnp.bool_
        or jnp.issubdtype(spikes.dtype, jnp.integer)
        or jnp.issubdtype(spikes.dtype, jnp.floating)
    ):
        raise TypeError(f"expected spikes to be bool, integer or floating, got {spikes.dtype}")
    if n_post + 1 > jnp.iinfo(jnp.int32).max:
        raise ValueError(f"expected n_post + 1 to fit in int32, got n_post={n_post}")


@functools.partial(
    jax.jit, static_argnames=("n_post", "block_size", "block_rows", "interpret", "debug")
)
def propagate(
    post: Int[Array, "pre cap"],
    weight: Float[Array, "pre cap"],
    spikes: Shaped[Array, "*batch pre"],
    *,
    n_post: int,
    block_size: int = 128,
    block_rows: int = 1,
    interpret: bool = False,
    debug: bool = False,
) -> Float[Array, "*batch post"]:
    r"""Delivers spikes through ragged connectivity with a slot-parallel Pallas kernel.

    $\mathrm{out}[b, j] = \sum_{i, s} \mathrm{spikes}[b, i]\, \mathrm{weight}[i, s]\,
    [\mathrm{post}[i, s] = j]$, exact, visiting only the rows of spiking neurons. The
    grid is `(batch, cdiv(pre, block_rows), cdiv(cap, block_size))`; program `(b, r, c)`
    handles chunk `c` of the `r`-th group of `block_rows` spiking rows of batch element `b`
    (groups past the number of spiking rows exit at once) and accumulates with atomic
    adds, in float32 (float64 for float64 weights), into a `[batch, post + 1]` buffer
    whose last column, the sink for free slots, is dropped.

    Args:
        post: `[pre, cap]` target of each slot; the sentinel `n_post` marks a free slot.
            No row may hold the same target twice.
        weight: `[pre, cap]` weight of each slot, zero in free slots.
        spikes: `[batch, pre]` or `[pre]` spike values; bool, or numbers multiplied in
            (graded spikes), zero meaning silent.
        n_post: number of postsynaptic neurons.
        block_size: slots per program, a power of two (Triton block shapes must be);
            lowered to the largest power of two not above `cap` when `cap` is smaller.
            It need not divide `cap`: the last chunk of a row overlaps the one before.
        block_rows: spiking rows delivered, one after another, by each program.
        interpret: run the kernel with the Pallas interpreter (works on CPU).
        debug: print the kernel jaxpr and the Triton module when lowering.

    Returns:
        `[batch, post]` (or `[post]` for 1-D `spikes`) input current, in `weight`'s dtype.

    Raises:
        ValueError: on bad ranks, mismatched shapes, or bad static arguments.
        TypeError: on a non-integer `post`, non-floating `weight` or non-numeric `spikes`.

    Example:
        >>> post = jnp.array([[1, 3], [0, 3]], jnp.int32)  # n_post = 3 is the sentinel
        >>> weight = jnp.array([[0.5, 0.0], [2.0, 0.0]])
        >>> spikes = jnp.array([1.0, 1.0])
        >>> propagate(post, weight, spikes, n_post=3, interpret=True)
        Array([2. , 0.5, 0. ], dtype=float32)
    """
    _validate(post, weight, spikes, n_post=n_post, block_size=block_size, block_rows=block_rows)
    if spikes.ndim == 1:
        out = propagate(
            post,
            weight,
            spikes[None],
            n_post=n_post,
            block_size=block_size,
            block_rows=block_rows,
            interpret=interpret,
            debug=debug,
        )
        return out[0]

    batch, n_pre = spikes.shape
    capacity = post.shape[1]
    acc_dtype = _accumulation_dtype(weight.dtype)
    if batch == 0 or n_pre == 0 or capacity == 0:
        return jnp.zeros((batch, n_post), weight.dtype)

    # The kernel needs block <= capacity (see _propagate_kernel); a power of two for Triton.
    block = min(block_size, 1 << (capacity.bit_length() - 1))
    post = post.astype(jnp.int32)

    # Compact the spiking rows of each batch element to the front. The fill value 0 keeps
    # every index in bounds; entries at or past `count` are never read by the kernel.
    spiking = spikes.astype(jnp.bool_)
    rows = jax.vmap(lambda s: jnp.nonzero(s, size=n_pre, fill_value=0)[0])(spiking)
    rows = rows.astype(jnp.int32)
    count = jnp.sum(spiking, axis=1, dtype=jnp.int32)
    values = jnp.take_along_axis(spikes.astype(acc_dtype), rows, axis=1)

    grid = (batch, pl.cdiv(n_pre, block_rows), pl.cdiv(capacity, block))
    kernel = functools.partial(
        _propagate_kernel,
        block_size=block,
        block_rows=block_rows,
        capacity=capacity,
        sink=n_post,
    )
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((batch, n_post + 1), acc_dtype),
        grid=grid,
        # The output starts as this zero buffer: Triton outputs are not initialised.
        input_output_aliases={5: 0},
        compiler_params=pltriton.CompilerParams(num_warps=max(1, min(8, block // 32))),
        interpret=interpret,
        debug=debug,
        name="ragged_propagate",
    )(rows, values, count, post, weight, jnp.zeros((batch, n_post + 1), acc_dtype))
    return out[:, :n_post].astype(weight.dtype)
