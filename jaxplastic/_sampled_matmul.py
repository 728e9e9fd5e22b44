"""The sampled product ``a^T @ b`` at the live slots of a ragged projection.

``out[i, s] = sum_k a[k, i] * b[k, post[i, s]]`` (0 at free slots), the entries of the dense
``[pre, post]`` product that the ragged rows hold, at ``pre * cap * k`` multiply-adds instead
of ``pre * post * k``. Factorized e-prop computes a ragged weight gradient this way, with ``k``
running over time x batch. Dispatches on a static ``impl`` to the XLA path (CPU, and the
oracle) or the Pallas kernel (GPU); both keep memory bounded, whatever ``k``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ._custom_types import Array, Float, Impl, Int, Shaped

__all__ = ["sampled_matmul"]

_IMPLS = ("auto", "xla", "pallas")
# Elements of the largest gathered block on the XLA path, [rows, cap, k_chunk] (4 MiB in
# float32), and the longest contraction chunk; longer contractions loop over chunks, so
# scratch memory does not grow with k. Measured on 2 CPU cores (2,048 x 25 or 62 slots,
# k = 3,200): chunks of 256-1,024 steps with many rows per block ran about twice as fast as
# 4,096-step chunks with few rows.
_GATHER_BUDGET = 1 << 20
_K_CHUNK = 512


def _accumulation_dtype(dtype) -> jnp.dtype:
    return jnp.dtype(jnp.float64) if dtype == jnp.float64 else jnp.dtype(jnp.float32)


def _sampled_matmul_xla(
    post: Int[Array, "pre cap"],
    a: Shaped[Array, "k pre"],
    b: Float[Array, "k post"],
    n_post: int,
    k_chunk: int,
    block_rows: int | None,
) -> Float[Array, "pre cap"]:
    """Row-blocked gathers of the transposed ``b``, contracted against ``a``, chunked in ``k``.

    ``b`` is transposed to ``[post + 1, k]`` (a zero row ``n_post`` for free slots), so each
    gathered target copies one contiguous ``k``-chunk; a block of ``block_rows`` rows gathers
    ``[block_rows, cap, k_chunk]`` and contracts it with those rows of ``a^T``. The outer loop
    runs over ``k`` in chunks of ``k_chunk``, the inner one over row blocks, so scratch memory
    is one gathered block plus the transposed copies of ``a`` and ``b`` (of the inputs' size).
    ``a`` stays in its own dtype (e.g. uint8 spikes) until a block is contracted.
    """
    n_pre, capacity = post.shape
    k = a.shape[0]
    acc = _accumulation_dtype(b.dtype)
    live = (post >= 0) & (post < n_post)
    if n_pre == 0 or capacity == 0 or k == 0:
        return jnp.zeros((n_pre, capacity), b.dtype)
    targets = jnp.where(live, post, n_post).astype(jnp.int32)

    k_chunk = min(k, k_chunk)
    n_chunks = -(-k // k_chunk)
    k_pad = n_chunks * k_chunk
    if block_rows is None:
        block_rows = _GATHER_BUDGET // (capacity * k_chunk)
    block_rows = max(1, min(n_pre, block_rows))
    n_blocks = -(-n_pre // block_rows)
    rows_pad = n_blocks * block_rows

    # [chunks, blocks, rows, k_chunk] and [chunks, post + 1, k_chunk]; zero padding adds 0.
    a_t = jnp.pad(a, ((0, k_pad - k), (0, rows_pad - n_pre)))
    a_t = a_t.reshape(n_chunks, k_chunk, n_blocks, block_rows).transpose(0, 2, 3, 1)
    b_t = jnp.pad(b.astype(acc), ((0, k_pad - k), (0, 1)))
    b_t = b_t.reshape(n_chunks, k_chunk, n_post + 1).transpose(0, 2, 1)
    blocks = jnp.pad(targets, ((0, rows_pad - n_pre), (0, 0)), constant_values=n_post)
    blocks = blocks.reshape(n_blocks, block_rows, capacity)

    def chunk(out, xs):
        a_chunk, b_chunk = xs

        def block(ys):
            block_targets, a_rows = ys
            gathered = b_chunk.at[block_targets].get(mode="promise_in_bounds")
            return jnp.einsum(
                "rsk,rk->rs", gathered, a_rows.astype(acc), precision=lax.Precision.HIGHEST
            )

        return out + lax.map(block, (blocks, a_chunk)), None

    out = jnp.zeros((n_blocks, block_rows, capacity), acc)
    if n_chunks == 1:
        out, _ = chunk(out, (a_t[0], b_t[0]))
    else:
        out, _ = lax.scan(chunk, out, (a_t, b_t))
    out = out.reshape(rows_pad, capacity)[:n_pre]
    return jnp.where(live, out, jnp.zeros((), acc)).astype(b.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _sampled_matmul_pallas(post, a, b, n_post):
    from pallas_kernels.sampled_matmul import sampled_matmul as pallas_sampled_matmul

    interpret = jax.default_backend() == "cpu"
    return pallas_sampled_matmul(post, a, b, n_post=n_post, interpret=interpret)


def _sampled_matmul_pallas_fwd(post, a, b, n_post):
    return _sampled_matmul_pallas(post, a, b, n_post), (post, a, b)


def _sampled_matmul_pallas_bwd(n_post, residuals, g):
    # The backward pass is the XLA path's own (autodiff through its gathers and scan).
    post, a, b = residuals
    _, vjp = jax.vjp(lambda a, b: _sampled_matmul_xla(post, a, b, n_post, _K_CHUNK, None), a, b)
    d_a, d_b = vjp(g)
    return None, d_a, d_b


_sampled_matmul_pallas.defvjp(_sampled_matmul_pallas_fwd, _sampled_matmul_pallas_bwd)


def sampled_matmul(
    post: Int[Array, "pre cap"],
    a: Shaped[Array, "k pre"],
    b: Float[Array, "k post"],
    *,
    n_post: int,
    impl: Impl = "auto",
    k_chunk: int = _K_CHUNK,
    block_rows: int | None = None,
) -> Float[Array, "pre cap"]:
    """The dense product ``a^T @ b`` sampled at the live slots of ragged rows.

    $\\text{out}_{is} = \\sum_k a_{ki}\\, b_{k,\\text{post}_{is}}$, and 0 at free slots (the
    sentinel ``n_post``, or any target outside ``[0, n_post)``). Accumulates in float32
    (float64 for float64 ``b``) at full precision. Differentiable in ``a`` and ``b`` (float
    ``a``).

    Args:
        post: ``[pre, cap]`` target of each slot; the sentinel ``n_post`` marks a free slot.
        a: ``[k, pre]`` left factor: floating (of ``b``'s dtype), integer or bool (spikes).
        b: ``[k, post]`` right factor, floating.
        n_post: number of postsynaptic neurons (columns of ``b``). Static.
        impl: ``"xla"`` (row-blocked gathers, chunked in ``k``; the CPU path and the
            oracle), ``"pallas"`` (GPU kernel; interpret mode on CPU), or ``"auto"``
            (Pallas on GPU, XLA elsewhere). Static.
        k_chunk: longest contraction chunk on the XLA path (static).
        block_rows: rows per gathered block on the XLA path (static; default: as many as
            keep a ``[rows, cap, k_chunk]`` block under 2**20 elements).

    Returns:
        ``[pre, cap]`` in ``b``'s dtype.

    Raises:
        ValueError: bad shapes or static arguments.
        TypeError: non-integer ``post``, non-floating ``b``, or a floating ``a`` of another
            dtype.

    Example:
        >>> post = jnp.array([[1, 2], [0, 2]])  # n_post = 2 is the sentinel
        >>> a = jnp.array([[1.0, 2.0], [3.0, 4.0]])  # [k, pre]
        >>> b = jnp.array([[1.0, 10.0], [100.0, 1000.0]])  # [k, post]
        >>> sampled_matmul(post, a, b, n_post=2)
        Array([[3010.,    0.],
               [ 402.,    0.]], dtype=float32)
    """
    if impl not in _IMPLS:
        raise ValueError(f"impl: expected one of {_IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = "pallas" if jax.default_backend() == "gpu" else "xla"
    if isinstance(n_post, bool) or not isinstance(n_post, int) or n_post < 1:
        raise ValueError(f"n_post: expected a positive int, got {n_post!r}")
    for name, value in (("k_chunk", k_chunk), ("block_rows", block_rows)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if value is not None and value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    post, a, b = jnp.asarray(post), jnp.asarray(a), jnp.asarray(b)
    if post.ndim != 2 or not jnp.issubdtype(post.dtype, jnp.integer):
        raise TypeError(f"post: expected an integer [pre, cap] array, got {post.dtype}{post.shape}")
    if a.ndim != 2 or a.shape[1] != post.shape[0]:
        raise ValueError(f"a: expected shape [k, {post.shape[0]}], got {a.shape}")
    if b.shape != (a.shape[0], n_post):
        raise ValueError(f"b: expected shape ({a.shape[0]}, {n_post}), got {b.shape}")
    if not jnp.issubdtype(b.dtype, jnp.floating):
        raise TypeError(f"b: expected a floating dtype, got {b.dtype}")
    if jnp.issubdtype(a.dtype, jnp.floating):
        if a.dtype != b.dtype:
            raise TypeError(f"a: expected b's dtype {b.dtype} (or integer/bool), got {a.dtype}")
    elif not (a.dtype == jnp.bool_ or jnp.issubdtype(a.dtype, jnp.integer)):
        raise TypeError(f"a: expected a floating, integer or bool dtype, got {a.dtype}")
    if impl == "pallas":
        return _sampled_matmul_pallas(post, a, b, n_post)
    return _sampled_matmul_xla(post, a, b, n_post, k_chunk, block_rows)
