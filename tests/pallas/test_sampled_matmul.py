"""Tests for the sampled-product Pallas kernel (interpret mode on CPU, compiled on a GPU)."""

from functools import partial

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from pallas_kernels.sampled_matmul import sampled_matmul, sampled_matmul_reference

# (rtol, atol) against a float64 dense product, for unit-normal factors and k <= 64;
# bf16 inputs and outputs are rounded to 8 bits.
_TOLERANCES = {
    jnp.dtype(jnp.float32): (1e-5, 1e-5),
    jnp.dtype(jnp.bfloat16): (2e-2, 5e-2),
}

# (n_pre, capacity, n_post, k, block_rows, block_cap, block_k). Capacities 20, 7, 12 and
# 3 are not multiples of their blocks (3 is below it: the block shrinks to 2); pre 13 and 5
# are not multiples of block_rows; k 37 and 10 are not multiples of block_k.
_SHAPES = [
    (13, 20, 30, 37, 4, 8, 8),
    (16, 16, 24, 64, 4, 16, 32),
    (5, 3, 4, 10, 4, 8, 8),
    (1, 12, 12, 9, 4, 8, 16),
]


def _connectivity(key, n_pre, capacity, n_post, *, layout):
    """Random ragged rows with distinct targets in scattered slots.

    Layout "mixed" forces row 0 empty and row 1 full (when there are rows to spare) and
    draws the other rows' counts uniformly; "full" fills every row; "free" leaves every
    slot of every row free.
    """
    rng = np.random.default_rng(int(jr.randint(key, (), 0, 2**31 - 1)))
    max_count = min(capacity, n_post)
    post = np.full((n_pre, capacity), n_post, np.int32)
    for i in range(n_pre):
        if layout == "free":
            count = 0
        elif layout == "full" or (i == 1 and n_pre > 2):
            count = max_count
        elif i == 0 and n_pre > 2:
            count = 0
        else:
            count = int(rng.integers(0, max_count + 1))
        slots = rng.choice(capacity, count, replace=False)
        post[i, slots] = rng.choice(n_post, count, replace=False)
    return jnp.asarray(post)


def _factors(key, k, n_pre, n_post, *, dtype, a_kind="normal"):
    k_a, k_b = jr.split(key)
    if a_kind == "spikes":
        a = jr.bernoulli(k_a, 0.3, (k, n_pre)).astype(jnp.uint8)
    elif a_kind == "bool":
        a = jr.bernoulli(k_a, 0.3, (k, n_pre))
    else:
        a = jr.normal(k_a, (k, n_pre)).astype(dtype)
    return a, jr.normal(k_b, (k, n_post)).astype(dtype)


def _dense(post, a, b, n_post):
    """`(a^T @ b)[i, post[i, s]]` in float64, 0 at free slots."""
    a = np.asarray(a.astype(jnp.float32), np.float64)
    b = np.asarray(b.astype(jnp.float32), np.float64)
    full = np.concatenate([a.T @ b, np.zeros((a.shape[1], 1))], axis=1)
    post = np.asarray(post)
    return np.take_along_axis(full, np.where((post >= 0) & (post < n_post), post, n_post), 1)


def _check(out, post, a, b, n_post, *, scale=1.0):
    rtol, atol = (scale * t for t in _TOLERANCES[jnp.dtype(b.dtype)])
    assert out.dtype == b.dtype
    assert out.shape == post.shape
    out32 = np.asarray(out.astype(jnp.float32))
    ref = sampled_matmul_reference(post, a, b, n_post=n_post)
    assert ref.dtype == b.dtype
    np.testing.assert_allclose(out32, np.asarray(ref.astype(jnp.float32)), rtol=rtol, atol=atol)
    np.testing.assert_allclose(out32, _dense(post, a, b, n_post), rtol=rtol, atol=atol)
    free = ~((np.asarray(post) >= 0) & (np.asarray(post) < n_post))
    np.testing.assert_array_equal(out32[free], 0.0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", _SHAPES)
def test_matches_reference(getkey, shape, dtype):
    n_pre, capacity, n_post, k, block_rows, block_cap, block_k = shape
    post = _connectivity(getkey(), n_pre, capacity, n_post, layout="mixed")
    a, b = _factors(getkey(), k, n_pre, n_post, dtype=dtype)
    out = sampled_matmul(
        post,
        a,
        b,
        n_post=n_post,
        block_rows=block_rows,
        block_cap=block_cap,
        block_k=block_k,
        interpret=True,
    )
    _check(out, post, a, b, n_post)


@pytest.mark.parametrize("layout", ["full", "free"])
@pytest.mark.parametrize("shape", [(13, 20, 30, 37, 4, 8, 8), (6, 1, 3, 5, 4, 8, 8)])
def test_full_and_free_rows(getkey, shape, layout):
    n_pre, capacity, n_post, k, block_rows, block_cap, block_k = shape
    post = _connectivity(getkey(), n_pre, capacity, n_post, layout=layout)
    a, b = _factors(getkey(), k, n_pre, n_post, dtype=jnp.float32)
    out = sampled_matmul(
        post,
        a,
        b,
        n_post=n_post,
        block_rows=block_rows,
        block_cap=block_cap,
        block_k=block_k,
        interpret=True,
    )
    _check(out, post, a, b, n_post)
    if layout == "free":
        np.testing.assert_array_equal(np.asarray(out), 0.0)


@pytest.mark.parametrize("a_kind", ["spikes", "bool"])
def test_spike_factor(getkey, a_kind):
    post = _connectivity(getkey(), 12, 10, 9, layout="mixed")
    a, b = _factors(getkey(), 21, 12, 9, dtype=jnp.float32, a_kind=a_kind)
    out = sampled_matmul(post, a, b, n_post=9, block_cap=8, block_k=8, interpret=True)
    _check(out, post, a, b, 9)


def test_out_of_range_targets_are_free(getkey):
    post = _connectivity(getkey(), 8, 6, 7, layout="full")
    post = post.at[0, 0].set(-3).at[5, 2].set(50)
    a, b = _factors(getkey(), 11, 8, 7, dtype=jnp.float32)
    out = sampled_matmul(post, a, b, n_post=7, block_cap=4, block_k=8, interpret=True)
    _check(out, post, a, b, 7)
    assert float(out[0, 0]) == 0.0 and float(out[5, 2]) == 0.0


def test_inside_outer_jit(getkey):
    post = _connectivity(getkey(), 12, 10, 9, layout="mixed")
    a, b = _factors(getkey(), 20, 12, 9, dtype=jnp.float32)

    @jax.jit
    def twice(post, a, b):
        return 2.0 * sampled_matmul(post, a, b, n_post=9, block_cap=8, interpret=True)

    ref = 2.0 * sampled_matmul_reference(post, a, b, n_post=9)
    np.testing.assert_allclose(np.asarray(twice(post, a, b)), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_connectivity", [False, True])
def test_vmap(getkey, batch_connectivity):
    n_pre, capacity, n_post, k, extra = 12, 10, 9, 20, 2
    post = jnp.stack(
        [_connectivity(key, n_pre, capacity, n_post, layout="mixed") for key in jr.split(getkey())]
    )
    a, b = _factors(getkey(), extra * k, n_pre, n_post, dtype=jnp.float32)
    a, b = a.reshape(extra, k, n_pre), b.reshape(extra, k, n_post)
    in_axes = (0, 0, 0) if batch_connectivity else (None, 0, 0)
    if not batch_connectivity:
        post = post[0]
    kernel = partial(sampled_matmul, n_post=n_post, block_cap=8, block_k=8, interpret=True)
    out = jax.vmap(kernel, in_axes=in_axes)(post, a, b)
    assert out.shape == (extra, n_pre, capacity)
    for e in range(extra):
        p = post[e] if batch_connectivity else post
        np.testing.assert_allclose(
            np.asarray(out[e]), _dense(p, a[e], b[e], n_post), rtol=1e-5, atol=1e-5
        )


def test_empty_shapes():
    out = sampled_matmul(
        jnp.zeros((3, 0), jnp.int32), jnp.ones((4, 3)), jnp.ones((4, 5)), n_post=5, interpret=True
    )
    assert out.shape == (3, 0)
    out = sampled_matmul(
        jnp.zeros((3, 2), jnp.int32), jnp.ones((0, 3)), jnp.ones((0, 5)), n_post=5, interpret=True
    )
    np.testing.assert_array_equal(np.asarray(out), np.zeros((3, 2)))


_GOOD = dict(
    post=jnp.full((4, 3), 5, jnp.int32),
    a=jnp.zeros((6, 4), jnp.float32),
    b=jnp.zeros((6, 5), jnp.float32),
    n_post=5,
    interpret=True,
)


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        (dict(post=jnp.full((4,), 5, jnp.int32)), ValueError, "expected post to have rank 2"),
        (dict(post=jnp.full((4, 3), 5.0)), TypeError, "expected post to have an integer"),
        (dict(a=jnp.zeros((6, 3))), ValueError, "expected a to have shape"),
        (dict(b=jnp.zeros((7, 5))), ValueError, "expected b to have shape"),
        (dict(b=jnp.zeros((6, 5), jnp.int32)), TypeError, "expected b to have a floating"),
        (dict(a=jnp.zeros((6, 4), jnp.bfloat16)), TypeError, "expected a to have b's dtype"),
        (dict(a=jnp.zeros((6, 4), jnp.complex64)), TypeError, "expected a to be"),
        (dict(n_post=0), ValueError, "expected n_post to be a positive int, got 0"),
        (dict(block_rows=3), ValueError, "expected block_rows to be a positive power of two"),
        (dict(block_cap=0), ValueError, "expected block_cap to be a positive power of two"),
        (dict(block_k=True), ValueError, "expected block_k to be a positive power of two"),
    ],
)
def test_validation(changes, error, match):
    kwargs = _GOOD | changes
    with pytest.raises(error, match=match):
        sampled_matmul(kwargs.pop("post"), kwargs.pop("a"), kwargs.pop("b"), **kwargs)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(("capacity", "block_cap", "block_rows"), [(20, 8, 4), (16, 16, 1)])
def test_lowers_for_cuda_without_gpu(capsys, capacity, block_cap, block_rows, dtype):
    """Runs the Triton lowering on CPU, so Triton-only errors (block shapes, ops) show here."""
    n_pre, n_post, k = 13, 30, 50
    post = jnp.full((n_pre, capacity), n_post, jnp.int32)
    a = jnp.zeros((k, n_pre), jnp.uint8)
    b = jnp.zeros((k, n_post), dtype)
    kernel = partial(
        sampled_matmul,
        n_post=n_post,
        block_rows=block_rows,
        block_cap=block_cap,
        block_k=16,
        debug=True,
    )
    try:
        lowered = jax.jit(kernel).trace(post, a, b).lower(lowering_platforms=("cuda",))
    except ValueError as e:
        if "Cannot lower pallas_call on platform" not in str(e):
            raise
        pytest.skip(f"this jaxlib cannot lower Pallas for cuda: {e}")
    except RuntimeError as e:
        if "does not have a Triton compilation handler" not in str(e):
            raise
        pytest.skip(f"this jaxlib cannot compile Triton for cuda without a GPU: {e}")
    text = lowered.as_text()
    assert "sampled_matmul" in text
    assert "triton" in text
    # debug=True prints the Triton module: a loop over k with a 3-D gather of b's rows.
    triton_module = capsys.readouterr().out
    assert "tt.func public @sampled_matmul" in triton_module
    assert "scf.for" in triton_module
    tile = f"tensor<{min(block_rows, n_pre)}x{block_cap}x16x!tt.ptr<"
    assert tile in triton_module


@pytest.mark.gpu
@pytest.mark.parametrize(("block_rows", "block_cap", "block_k"), [(4, 32, 32), (1, 64, 64)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_compiled_on_gpu(getkey, dtype, block_rows, block_cap, block_k):
    n_pre, capacity, n_post, k = 300, 100, 200, 500
    for layout in ("mixed", "full", "free"):
        post = _connectivity(getkey(), n_pre, capacity, n_post, layout=layout)
        for a_kind in ("normal", "spikes"):
            a, b = _factors(getkey(), k, n_pre, n_post, dtype=dtype, a_kind=a_kind)
            out = sampled_matmul(
                post,
                a,
                b,
                n_post=n_post,
                block_rows=block_rows,
                block_cap=block_cap,
                block_k=block_k,
            )
            # k = 500 terms: a looser bound than the interpret-mode tests' k <= 64.
            _check(out, post, a, b, n_post, scale=10.0)
