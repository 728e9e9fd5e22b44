"""Tests for the ragged spike-propagation Pallas kernel (interpret mode on CPU)."""

from functools import partial

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from pallas_kernels.propagate import propagate, propagate_reference

# (rtol, atol) against a float64 dense product; bf16 outputs are rounded to 8 bits.
_TOLERANCES = {
    jnp.dtype(jnp.float32): (1e-5, 1e-5),
    jnp.dtype(jnp.bfloat16): (1e-2, 1e-2),
}

# (n_pre, capacity, n_post, block_size, batch). Capacities 20 and 12 are not multiples of
# 8 or 16; capacity 3 is below the block size (the block shrinks to 2).
_SHAPES = [
    (40, 20, 30, 8, 3),
    (17, 16, 24, 16, 1),
    (5, 3, 4, 8, 2),
    (1, 12, 12, 8, 1),
]


def _connectivity(key, n_pre, capacity, n_post, *, layout, dtype):
    """Random ragged rows with distinct targets in scattered slots.

    Layout "mixed" forces row 0 empty and row 1 full (when there are rows to spare) and
    draws the other rows' counts uniformly; "full" fills every row; "free" leaves every
    slot of every row free.
    """
    rng = np.random.default_rng(int(jr.randint(key, (), 0, 2**31 - 1)))
    max_count = min(capacity, n_post)
    post = np.full((n_pre, capacity), n_post, np.int32)
    weight = np.zeros((n_pre, capacity), np.float32)
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
        weight[i, slots] = rng.normal(size=count)
    return jnp.asarray(post), jnp.asarray(weight).astype(dtype)


def _spikes(key, batch, n_pre, *, pattern):
    if pattern == "none":
        return jnp.zeros((batch, n_pre), jnp.bool_)
    if pattern == "all":
        return jnp.ones((batch, n_pre), jnp.bool_)
    if pattern == "bernoulli":
        return jr.bernoulli(key, 0.4, (batch, n_pre))
    if pattern == "graded":
        # Graded values, negatives included, with about half the rows silent.
        k_on, k_value = jr.split(key)
        on = jr.bernoulli(k_on, 0.5, (batch, n_pre))
        return jnp.where(on, jr.normal(k_value, (batch, n_pre)), 0.0)
    raise AssertionError(pattern)


def _dense(post, weight, spikes, n_post):
    """`spikes @ W` in float64, with `W[i, j]` the weight of row i's slot targeting j."""
    post = np.asarray(post)
    weight = np.asarray(weight.astype(jnp.float32), np.float64)
    matrix = np.zeros((post.shape[0], n_post + 1))
    rows = np.broadcast_to(np.arange(post.shape[0])[:, None], post.shape)
    np.add.at(matrix, (rows, post), weight)
    return np.asarray(spikes.astype(jnp.float32), np.float64) @ matrix[:, :n_post]


def _check(out, post, weight, spikes, n_post, *, scale=1.0):
    rtol, atol = (scale * t for t in _TOLERANCES[jnp.dtype(weight.dtype)])
    assert out.dtype == weight.dtype
    assert out.shape == spikes.shape[:-1] + (n_post,)
    out32 = np.asarray(out.astype(jnp.float32))
    ref = propagate_reference(post, weight, spikes, n_post=n_post)
    assert ref.dtype == weight.dtype
    np.testing.assert_allclose(out32, np.asarray(ref.astype(jnp.float32)), rtol=rtol, atol=atol)
    np.testing.assert_allclose(out32, _dense(post, weight, spikes, n_post), rtol=rtol, atol=atol)


@pytest.mark.parametrize("pattern", ["none", "all", "bernoulli", "graded"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", _SHAPES)
def test_matches_reference(getkey, shape, dtype, pattern):
    n_pre, capacity, n_post, block_size, batch = shape
    post, weight = _connectivity(getkey(), n_pre, capacity, n_post, layout="mixed", dtype=dtype)
    spikes = _spikes(getkey(), batch, n_pre, pattern=pattern)
    out = propagate(post, weight, spikes, n_post=n_post, block_size=block_size, interpret=True)
    _check(out, post, weight, spikes, n_post)


@pytest.mark.parametrize("layout", ["full", "free"])
@pytest.mark.parametrize("shape", [(40, 20, 30, 8, 3), (6, 16, 16, 16, 2), (6, 1, 3, 8, 2)])
def test_full_and_free_rows(getkey, shape, layout):
    n_pre, capacity, n_post, block_size, batch = shape
    post, weight = _connectivity(
        getkey(), n_pre, capacity, n_post, layout=layout, dtype=jnp.float32
    )
    spikes = _spikes(getkey(), batch, n_pre, pattern="all")
    out = propagate(post, weight, spikes, n_post=n_post, block_size=block_size, interpret=True)
    _check(out, post, weight, spikes, n_post)
    if layout == "free":
        np.testing.assert_array_equal(np.asarray(out), 0.0)


@pytest.mark.parametrize("block_rows", [1, 3, 8])
@pytest.mark.parametrize("block_size", [8, 16, 32])
def test_block_sizes(getkey, block_size, block_rows):
    post, weight = _connectivity(getkey(), 20, 20, 24, layout="mixed", dtype=jnp.float32)
    spikes = _spikes(getkey(), 2, 20, pattern="graded")
    out = propagate(
        post,
        weight,
        spikes,
        n_post=24,
        block_size=block_size,
        block_rows=block_rows,
        interpret=True,
    )
    _check(out, post, weight, spikes, 24)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_one_dimensional_spikes(getkey, dtype):
    post, weight = _connectivity(getkey(), 12, 10, 9, layout="mixed", dtype=dtype)
    spikes = _spikes(getkey(), 1, 12, pattern="graded")[0]
    out = propagate(post, weight, spikes, n_post=9, block_size=8, interpret=True)
    assert out.shape == (9,)
    _check(out, post, weight, spikes, 9)


@pytest.mark.parametrize("spike_dtype", [jnp.int32, jnp.float32, jnp.bfloat16])
def test_numeric_spike_dtypes(getkey, spike_dtype):
    post, weight = _connectivity(getkey(), 12, 10, 9, layout="mixed", dtype=jnp.float32)
    spikes = jr.randint(getkey(), (2, 12), 0, 3).astype(spike_dtype)
    out = propagate(post, weight, spikes, n_post=9, block_size=8, interpret=True)
    _check(out, post, weight, spikes, 9)


def test_silent_rows_are_never_read(getkey):
    # Non-finite weights in silent rows must not leak into the output (0 * inf = nan).
    post, weight = _connectivity(getkey(), 8, 8, 10, layout="full", dtype=jnp.float32)
    weight = weight.at[::2].set(jnp.inf)
    spikes = jnp.tile(jnp.array([0.0, 1.0]), 4)[None]
    out = propagate(post, weight, spikes, n_post=10, block_size=8, interpret=True)
    ref = propagate_reference(post, weight, spikes, n_post=10)
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6, atol=1e-6)


def test_inside_outer_jit(getkey):
    post, weight = _connectivity(getkey(), 12, 10, 9, layout="mixed", dtype=jnp.float32)
    spikes = _spikes(getkey(), 3, 12, pattern="bernoulli")

    @jax.jit
    def step(post, weight, spikes):
        return 2.0 * propagate(post, weight, spikes, n_post=9, block_size=8, interpret=True)

    out = step(post, weight, spikes)
    ref = 2.0 * propagate_reference(post, weight, spikes, n_post=9)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_connectivity", [False, True])
def test_vmap(getkey, batch_connectivity):
    n_pre, capacity, n_post, extra = 12, 10, 9, 2
    keys = jr.split(getkey(), extra)
    pairs = [
        _connectivity(k, n_pre, capacity, n_post, layout="mixed", dtype=jnp.float32) for k in keys
    ]
    post = jnp.stack([p for p, _ in pairs])
    weight = jnp.stack([w for _, w in pairs])
    spikes = _spikes(getkey(), extra * 3, n_pre, pattern="graded").reshape(extra, 3, n_pre)
    in_axes = (0, 0, 0) if batch_connectivity else (None, None, 0)
    if not batch_connectivity:
        post, weight = post[0], weight[0]
    kernel = partial(propagate, n_post=n_post, block_size=8, interpret=True)
    out = jax.vmap(kernel, in_axes=in_axes)(post, weight, spikes)
    ref = jax.vmap(partial(propagate_reference, n_post=n_post), in_axes=in_axes)(
        post, weight, spikes
    )
    assert out.shape == (extra, 3, n_post)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)
    for e in range(extra):
        p, w = (post[e], weight[e]) if batch_connectivity else (post, weight)
        np.testing.assert_allclose(
            np.asarray(out[e]), _dense(p, w, spikes[e], n_post), rtol=1e-5, atol=1e-5
        )


_GOOD = dict(
    post=jnp.full((4, 3), 5, jnp.int32),
    weight=jnp.zeros((4, 3), jnp.float32),
    spikes=jnp.zeros((2, 4), jnp.float32),
)


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        (dict(post=jnp.full((4,), 5, jnp.int32)), ValueError, "expected post to have rank 2"),
        (dict(post=jnp.full((4, 3), 5.0)), TypeError, "expected post to have an integer"),
        (dict(weight=jnp.zeros((4, 2))), ValueError, "expected weight to have post's shape"),
        (dict(weight=jnp.zeros((4, 3), jnp.int32)), TypeError, "expected weight to have a float"),
        (dict(spikes=jnp.zeros((1, 2, 4))), ValueError, "expected spikes to have rank 1"),
        (dict(spikes=jnp.zeros((2, 5))), ValueError, "expected spikes to have a last axis"),
        (dict(spikes=jnp.zeros((2, 4), jnp.complex64)), TypeError, "expected spikes to be"),
        (dict(n_post=0), ValueError, "expected n_post to be a positive int, got 0"),
        (dict(n_post=-3), ValueError, "expected n_post to be a positive int"),
        (dict(block_size=12), ValueError, "expected block_size to be a positive power of two"),
        (dict(block_size=0), ValueError, "expected block_size to be a positive power of two"),
        (dict(block_rows=0), ValueError, "expected block_rows to be a positive int"),
    ],
)
def test_bad_inputs(changes, error, match):
    kwargs = dict(_GOOD, n_post=5, block_size=8, interpret=True) | changes
    with pytest.raises(error, match=match):
        propagate(**kwargs)


def test_empty_shapes():
    post = jnp.zeros((3, 0), jnp.int32)
    out = propagate(post, jnp.zeros((3, 0)), jnp.ones((2, 3)), n_post=4, interpret=True)
    np.testing.assert_array_equal(np.asarray(out), np.zeros((2, 4)))
    post = jnp.zeros((3, 4), jnp.int32)
    out = propagate(post, jnp.zeros((3, 4)), jnp.ones((0, 3)), n_post=4, interpret=True)
    assert out.shape == (0, 4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(
    ("capacity", "block_size", "block_rows"), [(20, 8, 2), (16, 16, 1), (1, 8, 1)]
)
def test_lowers_for_cuda_without_gpu(capsys, capacity, block_size, block_rows, dtype):
    """Runs the Triton lowering on CPU, so Triton-only errors (block shapes, ops) show here."""
    n_pre, n_post = 40, 30
    post = jnp.full((n_pre, capacity), n_post, jnp.int32)
    weight = jnp.zeros((n_pre, capacity), dtype)
    spikes = jnp.zeros((3, n_pre), jnp.bool_)
    kernel = partial(
        propagate, n_post=n_post, block_size=block_size, block_rows=block_rows, debug=True
    )
    try:
        lowered = jax.jit(kernel).trace(post, weight, spikes).lower(lowering_platforms=("cuda",))
    except ValueError as e:
        if "Cannot lower pallas_call on platform" not in str(e):
            raise
        pytest.skip(f"this jaxlib cannot lower Pallas for cuda: {e}")
    except RuntimeError as e:
        if "does not have a Triton compilation handler" not in str(e):
            raise
        pytest.skip(f"this jaxlib cannot compile Triton for cuda without a GPU: {e}")
    text = lowered.as_text()
    assert "ragged_propagate" in text
    assert "triton" in text
    # debug=True prints the Triton module: the scatter must be a float atomic add.
    triton_module = capsys.readouterr().out
    assert "tt.func public @ragged_propagate" in triton_module
    assert "tt.atomic_rmw fadd" in triton_module


@pytest.mark.gpu
@pytest.mark.parametrize("block_rows", [1, 4])
@pytest.mark.parametrize("block_size", [32, 128])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_compiled_on_gpu(getkey, dtype, block_size, block_rows):
    n_pre, capacity, n_post, batch = 300, 100, 200, 4
    post, weight = _connectivity(getkey(), n_pre, capacity, n_post, layout="mixed", dtype=dtype)
    for pattern in ("none", "all", "bernoulli", "graded"):
        spikes = _spikes(getkey(), batch, n_pre, pattern=pattern)
        out = propagate(
            post, weight, spikes, n_post=n_post, block_size=block_size, block_rows=block_rows
        )
        # Longer sums in an order the atomics leave unspecified: a looser float32 bound.
        _check(out, post, weight, spikes, n_post, scale=10.0)
