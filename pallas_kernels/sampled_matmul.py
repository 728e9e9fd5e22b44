r"""Sampled dense-dense matrix product at the live slots of a ragged projection.

A projection from `pre` to `post` neurons is stored row-wise: `post[i, slot]` is the target of
slot `slot` of presynaptic neuron `i` (a free slot holds the sentinel `n_post`). Given two
dense factors sharing a long contraction axis `k` (in e-prop: time x batch),
`a [k, pre]` and `b [k, post]`, this op computes, only at the slots,

$$\mathrm{out}[i, s] = \sum_k a[k, i]\, b[k, \mathrm{post}[i, s]]
\qquad (0 \text{ at free slots}),$$

i.e. the entries of `a^T @ b` that the ragged rows hold, without forming the dense
`[pre, post]` product. Its cost is `pre * cap * k` multiply-adds instead of `pre * post * k`.

The GPU kernel tiles the slots: program `(r, c)` owns a `block_rows x block_cap` tile of
`[pre, cap]` and loops over `k` in `block_k` chunks, gathering the `block_k`-long rows of the
transposed `b` at the tile's targets (contiguous, coalesced reads) and reducing against the
tile's rows of the transposed `a`. Its scratch is one tile; memory stays bounded for any `k`.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton
from jaxtyping import Array, Float, Int, Shaped


def sampled_matmul_reference(
    post: Int[Array, "pre cap"],
    a: Shaped[Array, "k pre"],
    b: Float[Array, "k post"],
    *,
    n_post: int,
) -> Float[Array, "pre cap"]:
    r"""The sampled product by a dense gather and one contraction (pure jnp).

    $\mathrm{out}[i, s] = \sum_k a[k, i]\, b[k, \mathrm{post}[i, s]]$, 0 at free slots (any
    target outside `[0, n_post)`, the sentinel `n_post` included), accumulated in float32
    (float64 for float64 `b`). It materialises the `[k, pre, cap]` gather: the oracle for
    tests, not a path for large inputs.

    Args:
        post: `[pre, cap]` target of each slot; the sentinel `n_post` marks a free slot.
        a: `[k, pre]` left factor; floating (the dtype of `b`), integer or bool.
        b: `[k, post]` right factor, floating.
        n_post: number of postsynaptic neurons (columns of `b`).

    Returns:
        `[pre, cap]` in `b`'s dtype.
    """
    acc_dtype = _accumulation_dtype(b.dtype)
    live = (post >= 0) & (post < n_post)
    targets = jnp.where(live, post, n_post)
    padded = jnp.concatenate([b.astype(acc_dtype), jnp.zeros((b.shape[0], 1), acc_dtype)], 1)
    gathered = padded[:, targets]  # [k, pre, cap]; free slots read the zero column
    out = jnp.einsum("ki,kis->is", a.astype(acc_dtype), gathered, precision=lax.Precision.HIGHEST)
    return jnp.where(live, out, jnp.zeros((), acc_dtype)).astype(b.dtype)


def _sampled_matmul_kernel(
    post_ref,
    a_ref,
    b_ref,
    out_ref,
    *,
    block_rows: int,
    block_cap: int,
    block_k: int,
    num_k_blocks: int,
    n_pre: int,
    capacity: int,
    n_post: int,
):
    """Computes one `block_rows x block_cap` tile of the output.

    Refs are whole arrays: `post_ref` `[pre, cap]`, `a_ref` `[pre, k_pad]` (a transposed),
    `b_ref` `[post + 1, k_pad]` (b transposed, with a zero row `n_post` that free slots
    read), `out_ref` `[pre, cap]`; `k_pad` is a multiple of `block_k` (the wrapper pads with
    zeros, which add nothing).

    Program `(r, c)` owns rows `[r * block_rows, ...)` and slots `[c * block_cap, ...)`. When a
    block size does not divide its axis, the last tile is shifted back to end at the edge
    (the wrapper guarantees `block_rows <= pre` and `block_cap <= cap`): it recomputes a few
    entries of its neighbour and stores the same values there, so every access is in bounds
    without masks. A tile whose slots are all free stores zeros and skips the `k` loop.
    """
    acc_dtype = out_ref.dtype if out_ref.dtype == jnp.float64 else jnp.float32
    row_start = pl.program_id(0) * block_rows
    slot_start = pl.program_id(1) * block_cap
    if n_pre % block_rows:
        row_start = jnp.minimum(row_start, n_pre - block_rows)
    else:
        row_start = pl.multiple_of(row_start, block_rows)
    if capacity % block_cap:
        slot_start = jnp.minimum(slot_start, capacity - block_cap)
    else:
        slot_start = pl.multiple_of(slot_start, block_cap)
    rows = pl.ds(row_start, block_rows)
    slots = pl.ds(slot_start, block_cap)

    targets = post_ref[rows, slots]
    live = (targets >= 0) & (targets < n_post)
    targets = jnp.where(live, targets, n_post)  # out-of-range targets read the zero row
    out_ref[rows, slots] = jnp.zeros((block_rows, block_cap), out_ref.dtype)

    @pl.when(jnp.sum(live.astype(jnp.int32)) > 0)
    def _():
        def accumulate(kb, acc):
            ks = pl.ds(pl.multiple_of(kb * block_k, block_k), block_k)
            a_block = a_ref[rows, ks].astype(acc_dtype)  # [block_rows, block_k]
            b_block = b_ref[targets, ks].astype(acc_dtype)  # [block_rows, block_cap, block_k]
            return acc + jnp.sum(a_block[:, None, :] * b_block, axis=2)

        acc = lax.fori_loop(
            0, num_k_blocks, accumulate, jnp.zeros((block_rows, block_cap), acc_dtype)
        )
        out_ref[rows, slots] = jnp.where(live, acc, 0.0).astype(out_ref.dtype)


def _accumulation_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """Float64 for float64 inputs, float32 otherwise."""
    return jnp.dtype(jnp.float64) if dtype == jnp.float64 else jnp.dtype(jnp.float32)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _floor_power_of_two(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def _validate(post, a, b, *, n_post, block_rows, block_cap, block_k) -> None:
    if isinstance(n_post, bool) or not isinstance(n_post, int) or n_post <= 0:
        raise ValueError(f"expected n_post to be a positive int, got {n_post!r}")
    for name, value in (("block_rows", block_rows), ("block_cap", block_cap), ("block_k", block_k)):
        if isinstance(value, bool) or not isinstance(value, int) or not _is_power_of_two(value):
            raise ValueError(f"expected {name} to be a positive power of two, got {value!r}")
    if post.ndim != 2:
        raise ValueError(f"expected post to have rank 2 [pre, cap], got shape {post.shape}")
    if not jnp.issubdtype(post.dtype, jnp.integer):
        raise TypeError(f"expected post to have an integer dtype, got {post.dtype}")
    if a.ndim != 2 or a.shape[1] != post.shape[0]:
        raise ValueError(f"expected a to have shape [k, pre={post.shape[0]}], got shape {a.shape}")
    if b.ndim != 2 or b.shape != (a.shape[0], n_post):
        raise ValueError(
            f"expected b to have shape [k={a.shape[0]}, n_post={n_post}], got shape {b.shape}"
        )
    if not jnp.issubdtype(b.dtype, jnp.floating):
        raise TypeError(f"expected b to have a floating dtype, got {b.dtype}")
    if jnp.issubdtype(a.dtype, jnp.floating):
        if a.dtype != b.dtype:
            raise TypeError(
                f"expected a to have b's dtype {b.dtype} (or be integer or bool), got {a.dtype}"
            )
    elif not (a.dtype == jnp.bool_ or jnp.issubdtype(a.dtype, jnp.integer)):
        raise TypeError(f"expected a to be floating, integer or bool, got {a.dtype}")


@functools.partial(
    jax.jit,
    static_argnames=("n_post", "block_rows", "block_cap", "block_k", "interpret", "debug"),
)
def sampled_matmul(
    post: Int[Array, "pre cap"],
    a: Shaped[Array, "k pre"],
    b: Float[Array, "k post"],
    *,
    n_post: int,
    block_rows: int = 4,
    block_cap: int = 32,
    block_k: int = 32,
    interpret: bool = False,
    debug: bool = False,
) -> Float[Array, "pre cap"]:
    r"""The sampled product $\sum_k a[k, i]\, b[k, \mathrm{post}[i, s]]$ with a Pallas kernel.

    The grid is `(cdiv(pre, block_rows), cdiv(cap, block_cap))`; each program loops over `k`
    in chunks of `block_k`, accumulating one tile in float32 (float64 for float64 `b`), so
    memory beyond the inputs is two transposed copies of `a` and `b` (padded to a multiple of
    `block_k`), whatever `k`. Free slots (the sentinel `n_post`, or any target outside
    `[0, n_post)`) are 0; tiles with no live slot skip the loop.

    Args:
        post: `[pre, cap]` target of each slot; the sentinel `n_post` marks a free slot.
        a: `[k, pre]` left factor; floating (then of `b`'s dtype), integer or bool (e.g.
            spikes), cast to the accumulation dtype in the kernel.
        b: `[k, post]` right factor, floating.
        n_post: number of postsynaptic neurons (columns of `b`).
        block_rows: rows per tile, a power of two; lowered to the largest power of two not
            above `pre` when `pre` is smaller. It need not divide `pre`.
        block_cap: slots per tile, a power of two; lowered likewise to fit `cap`.
        block_k: contraction chunk per loop iteration, a power of two.
        interpret: run the kernel with the Pallas interpreter (works on CPU).
        debug: print the kernel jaxpr and the Triton module when lowering.

    Returns:
        `[pre, cap]` in `b`'s dtype.

    Raises:
        ValueError: on bad ranks, mismatched shapes, or bad static arguments.
        TypeError: on a non-integer `post`, non-floating `b` or a mismatched `a` dtype.

    Example:
        >>> post = jnp.array([[1, 2], [0, 2]], jnp.int32)  # n_post = 2 is the sentinel
        >>> a = jnp.array([[1.0, 2.0], [3.0, 4.0]])  # [k, pre]
        >>> b = jnp.array([[1.0, 10.0], [100.0, 1000.0]])  # [k, post]
        >>> sampled_matmul(post, a, b, n_post=2, interpret=True)
        Array([[3010.,    0.],
               [ 402.,    0.]], dtype=float32)
    """
    _validate(
        post, a, b, n_post=n_post, block_rows=block_rows, block_cap=block_cap, block_k=block_k
    )
    n_pre, capacity = post.shape
    k = a.shape[0]
    if n_pre == 0 or capacity == 0:
        return jnp.zeros((n_pre, capacity), b.dtype)
    if k == 0:
        return jnp.zeros((n_pre, capacity), b.dtype)

    rows = min(block_rows, _floor_power_of_two(n_pre))
    cap = min(block_cap, _floor_power_of_two(capacity))
    num_k_blocks = pl.cdiv(k, block_k)
    k_pad = num_k_blocks * block_k
    # Transposed so that the kernel's gathers read contiguous block_k-long rows; b gets a
    # zero row n_post that free slots read.
    a_t = jnp.pad(a, ((0, k_pad - k), (0, 0))).T
    b_t = jnp.pad(b, ((0, k_pad - k), (0, 1))).T
    kernel = functools.partial(
        _sampled_matmul_kernel,
        block_rows=rows,
        block_cap=cap,
        block_k=block_k,
        num_k_blocks=num_k_blocks,
        n_pre=n_pre,
        capacity=capacity,
        n_post=n_post,
    )
    tile = rows * cap * block_k
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((n_pre, capacity), b.dtype),
        grid=(pl.cdiv(n_pre, rows), pl.cdiv(capacity, cap)),
        compiler_params=pltriton.CompilerParams(num_warps=max(1, min(8, tile // 1024))),
        interpret=interpret,
        debug=debug,
        name="sampled_matmul",
    )(post.astype(jnp.int32), a_t, b_t)
