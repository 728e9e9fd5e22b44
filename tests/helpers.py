"""Shared test helpers."""

import jax
import jax.numpy as jnp
import numpy as np

_TOLERANCES = {
    np.dtype("float64"): (1e-10, 1e-12),
    np.dtype("float32"): (1e-5, 1e-6),
    np.dtype("bfloat16"): (2e-2, 2e-2),
    np.dtype("float16"): (2e-3, 2e-3),
}


def tree_allclose(x, y, *, rtol=None, atol=None):
    """Asserts two pytrees have the same structure and allclose leaves (per-dtype tolerances)."""
    xs, xt = jax.tree.flatten(x)
    ys, yt = jax.tree.flatten(y)
    assert xt == yt, f"tree structures differ: {xt} vs {yt}"
    for a, b in zip(xs, ys, strict=True):
        a = np.asarray(a)
        b = np.asarray(b)
        dt = np.result_type(a.dtype, b.dtype)
        r, t = _TOLERANCES.get(np.dtype(dt), (0.0, 0.0))
        np.testing.assert_allclose(
            a.astype(np.float64) if a.dtype.kind == "V" else a,
            b.astype(np.float64) if b.dtype.kind == "V" else b,
            rtol=r if rtol is None else rtol,
            atol=t if atol is None else atol,
        )


def assert_trees_equal(x, y):
    """Asserts two pytrees have the same structure, and leaves of the same dtype and values, bit
    for bit (PRNG keys compared by their key data)."""
    xs, xt = jax.tree.flatten(x)
    ys, yt = jax.tree.flatten(y)
    assert xt == yt, f"tree structures differ: {xt} vs {yt}"
    for a, b in zip(xs, ys, strict=True):
        if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert np.asarray(a).dtype == np.asarray(b).dtype, f"dtypes differ: {a.dtype} vs {b.dtype}"
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
