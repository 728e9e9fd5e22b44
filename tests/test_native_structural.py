"""The native CPU kernels of the structural primitives against their XLA references.

Both implementations must give the same projection, the same ``changed`` mask and the same
counts, bit for bit, on random states with heavy contention (repeated proposals, full rows
and columns, out-of-range entries), alone, inside ``update_rows``, and under ``vmap``; and
the same column view when building it from scratch.
"""

import re
import shutil

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jaxplastic as jp
from jaxplastic._connectivity import _column_arrays, _column_arrays_xla, build_column_view
from native_kernels import structural as native

from .examples.rules import grow_random, prune_below
from .helpers import assert_trees_equal

# The kernels are CPU custom calls: where the default device is a GPU, jit places the
# programs there and impl="native" cannot lower.
built = pytest.mark.skipif(
    not native.available() or jax.default_backend() != "cpu",
    reason="native kernels not built, or the default device is not a CPU",
)


def test_library_is_built_where_a_compiler_exists():
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("no C++ compiler on this machine")
    assert native.available(), native.load_error()


def _state(seed, n_pre, n_post, cap, col_cap, fill):
    rng = np.random.default_rng(seed)
    dense = np.zeros((n_pre, n_post), np.float32)
    for i in range(n_pre):
        k = rng.integers(0, min(fill, n_post) + 1)
        cols = rng.choice(n_post, size=k, replace=False)
        dense[i, cols] = rng.uniform(0.1, 1.0, size=k)
    if col_cap is not None:
        for j in range(n_post):
            dense[np.nonzero(dense[:, j])[0][col_cap:], j] = 0
    conn = jp.from_dense(dense, capacity=cap, column_capacity=col_cap)
    # A second variable of another dtype, zero in free slots.
    tag = jnp.where(conn.alive, jnp.arange(conn.post.size).reshape(conn.post.shape), 0)
    return jp.RaggedConnectivity(
        conn.post, {**conn.synapses, "tag": tag.astype(jnp.int16)}, conn.column, conn.n_post
    )


_remove = jax.jit(jp.remove_synapses, static_argnames="impl")
_add = jax.jit(jp.add_synapses, static_argnames="impl")
shapes = st.sampled_from([(9, 7, 4, 5), (30, 50, 12, 9), (64, 40, 8, None), (5, 300, 40, 3)])
_K = 400  # proposals per call


@built
@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), shapes, st.floats(0.0, 1.0), st.integers(0, _K))
def test_remove_and_add_equal_the_xla_versions(seed, shape, p_remove, k):
    n_pre, n_post, cap, col_cap = shape
    conn = _state(seed, n_pre, n_post, cap, col_cap, fill=cap)
    rng = np.random.default_rng(seed + 1)
    mask = jnp.asarray(rng.random(conn.post.shape) < p_remove)
    out = {impl: _remove(conn, mask, impl=impl) for impl in ("xla", "native")}
    assert_trees_equal(out["native"], out["xla"])
    conn = out["xla"][0]
    # Few distinct rows and targets: repeats, full rows and full columns are common. The
    # first k of a fixed 400 are proposals, the rest "none": one compilation per shape.
    rows = rng.integers(-1, min(n_pre, 6) + 1, _K).astype(np.int32)
    targets = rng.integers(-1, min(n_post, 8) + 2, _K).astype(np.int32)
    targets[rng.random(_K) < 0.2] = n_post  # no proposal
    targets[k:] = n_post
    values = {
        "weight": jnp.asarray(rng.normal(size=_K), jnp.float32),
        "tag": jnp.asarray(rng.integers(1, 100, _K), jnp.int16),
    }
    out = {impl: _add(conn, rows, targets, values, impl=impl) for impl in ("xla", "native")}
    assert_trees_equal(out["native"], out["xla"])
    info = out["native"][1]
    assert int(info.added) + int(info.refused) <= k


_remove_slots = jax.jit(jp.remove_slots, static_argnames="impl")


@built
@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), shapes, st.integers(0, _K), st.booleans())
def test_remove_slots_equals_the_xla_version(seed, shape, k, repeats):
    """Lists with repeated slots, free slots, invalid and out-of-range entries."""
    n_pre, n_post, cap, col_cap = shape
    conn = _state(seed, n_pre, n_post, cap, col_cap, fill=cap)
    rng = np.random.default_rng(seed + 2)
    spread = min(n_pre, 4) if repeats else n_pre
    rows = rng.integers(-1, spread + 1, k).astype(np.int32)
    slots = rng.integers(-1, cap + 1, k).astype(np.int32)
    valid = rng.random(k) < 0.9
    out = {impl: _remove_slots(conn, rows, slots, valid, impl=impl) for impl in ("xla", "native")}
    assert_trees_equal(out["native"], out["xla"])
    new, info = out["native"]
    # The invariants (free bits included) still hold, and the mask removal agrees.
    jp.RaggedConnectivity(new.post, new.synapses, new.column, new.n_post)
    assert_trees_equal(_remove(conn, info.changed, impl="native"), out["native"])


@built
def test_remove_slots_vmaps_like_each_network_alone():
    conns = [_state(s, 12, 9, 5, 6, fill=5) for s in range(3)]
    batch = jax.tree.map(lambda *x: jnp.stack(x), *conns)
    rng = np.random.default_rng(4)
    rows = jnp.asarray(rng.integers(0, 12, (3, 20)), jnp.int32)
    slots = jnp.asarray(rng.integers(0, 5, (3, 20)), jnp.int32)
    valid = jnp.ones((3, 20), bool)
    out = {
        impl: jax.jit(
            jax.vmap(lambda c, r, s, v, impl=impl: jp.remove_slots(c, r, s, v, impl=impl))
        )(batch, rows, slots, valid)
        for impl in ("xla", "native")
    }
    assert_trees_equal(out["native"], out["xla"])
    for b, conn in enumerate(conns):
        alone = jp.remove_slots(conn, rows[b], slots[b], valid[b], impl="native")
        assert_trees_equal(alone, jax.tree.map(lambda x, b=b: x[b], out["native"]))


@built
@pytest.mark.parametrize("with_column", [True, False])
def test_update_rows_equals_the_xla_version(with_column):
    conn = _state(3, 40, 30, 10, 16 if with_column else None, fill=9)

    def step(conn, key, impl):
        conn, a = jp.update_rows(conn, prune_below(0.5), key, impl=impl)
        conn, b = jp.update_rows(conn, grow_random(6, 0.5, 0.3), key, impl=impl)
        return conn, a.merge(b)

    step = jax.jit(step, static_argnames="impl")
    for seed in range(3):
        out = {impl: step(conn, jr.key(seed), impl) for impl in ("xla", "native")}
        assert_trees_equal(out["native"], out["xla"])
        assert int(out["native"][1].added) > 0
        conn = out["native"][0]


@built
def test_vmap_over_networks_equals_the_xla_version():
    conns = [_state(s, 12, 9, 5, 6, fill=5) for s in range(4)]
    batch = jax.tree.map(lambda *x: jnp.stack(x), *conns)
    rng = np.random.default_rng(0)
    mask = jnp.asarray(rng.random((4, 12, 5)) < 0.3)
    rows = jnp.asarray(rng.integers(0, 12, (4, 30)), jnp.int32)
    targets = jnp.asarray(rng.integers(0, 9, (4, 30)), jnp.int32)
    weight = jnp.asarray(rng.normal(size=(4, 30)), jnp.float32)

    def step(conn, mask, rows, targets, weight, impl):
        conn, removed = jp.remove_synapses(conn, mask, impl=impl)
        conn, added = jp.add_synapses(conn, rows, targets, {"weight": weight}, impl=impl)
        return conn, removed.merge(added)

    out = {
        impl: jax.jit(jax.vmap(lambda *a, impl=impl: step(*a, impl)))(
            batch, mask, rows, targets, weight
        )
        for impl in ("xla", "native")
    }
    assert_trees_equal(out["native"], out["xla"])
    # Each network on its own gives the same result as its slice of the batch.
    for b, conn in enumerate(conns):
        alone = step(conn, mask[b], rows[b], targets[b], weight[b], "native")
        assert_trees_equal(alone, jax.tree.map(lambda x, b=b: x[b], out["native"]))


# A network of 700 x 100 slots is over the kernels' thresholds for sharing one network's work
# out over XLA's CPU threads (on a machine with several): removal by mask and addition in
# parts over rows, then over columns, and the column build in parts over slots.
_LARGE = (700, 2000, 100)


def _large_proposals(rng, n_pre, n_post, k, hot_columns):
    """k proposals: a fifth on 5 rows (repeats and full rows), with `hot_columns` a fifth
    on 3 targets (full columns), a few out of range and a few "none"."""
    rows = rng.integers(0, n_pre, k)
    hot = rng.random(k) < 0.2
    rows[hot] = rng.integers(0, 5, hot.sum())
    targets = rng.integers(0, n_post, k)
    if hot_columns:
        hot = rng.random(k) < 0.2
        targets[hot] = rng.integers(0, 3, hot.sum())
    rows[rng.random(k) < 0.01] = -1
    targets[rng.random(k) < 0.01] = n_post + 1
    targets[rng.random(k) < 0.02] = n_post  # no proposal
    values = {
        "weight": jnp.asarray(rng.normal(size=k), jnp.float32),
        "tag": jnp.asarray(rng.integers(1, 100, k), jnp.int16),
    }
    return jnp.asarray(rows, jnp.int32), jnp.asarray(targets, jnp.int32), values


def _prune_and_grow(row, pre, post, key):
    weak = row.alive & (jnp.abs(row.synapses["weight"]) < 0.2)
    targets = jr.randint(key, (4,), 0, row.n_post, dtype=row.post.dtype)
    return jp.RowUpdate(remove=weak, add_post=targets)


@built
@pytest.mark.parametrize("hot_columns", [False, True])
def test_large_networks_equal_the_xla_versions(hot_columns):
    """With and without columns that fill: the split work (and, where a column fills, the
    undone split and the greedy pass that replaces it) gives the XLA versions' results."""
    n_pre, n_post, cap = _LARGE
    col_cap = 30 if hot_columns else 80
    conn = _state(7, n_pre, n_post, cap, col_cap, fill=cap)
    rng = np.random.default_rng(8)
    mask = jnp.asarray(rng.random(conn.post.shape) < 0.05)
    out = {impl: _remove(conn, mask, impl=impl) for impl in ("xla", "native")}
    assert_trees_equal(out["native"], out["xla"])
    conn = out["native"][0]
    rows, targets, values = _large_proposals(rng, n_pre, n_post, 3000, hot_columns)
    out = {impl: _add(conn, rows, targets, values, impl=impl) for impl in ("xla", "native")}
    assert_trees_equal(out["native"], out["xla"])
    info = out["native"][1]
    assert (int(info.refused_column_full) > 0) == hot_columns
    assert int(info.refused_row_full) > 0 and int(info.refused_duplicate) > 0
    assert int(info.added) > 1000
    conn = out["native"][0]
    # update_rows: removal, then 2,800 proposals after it (the `changed` it carries must
    # survive an undone split).
    step = jax.jit(
        lambda c, key, impl: jp.update_rows(c, _prune_and_grow, key, impl=impl),
        static_argnames="impl",
    )
    out = {impl: step(conn, jr.key(3), impl) for impl in ("xla", "native")}
    assert_trees_equal(out["native"], out["xla"])
    assert int(out["native"][1].removed) > 0 and int(out["native"][1].added) > 0
    conn = out["native"][0]
    jp.RaggedConnectivity(conn.post, conn.synapses, conn.column, conn.n_post)  # invariants
    assert_trees_equal(
        _columns_native(conn.post, n_post, col_cap), _columns_xla(conn.post, n_post, col_cap)
    )


@built
def test_large_networks_under_vmap_equal_each_network_alone():
    n_pre, n_post, cap = _LARGE
    conns = [_state(s, n_pre, n_post, cap, 40, fill=cap) for s in (1, 2)]
    batch = jax.tree.map(lambda *x: jnp.stack(x), *conns)
    rng = np.random.default_rng(9)
    mask = jnp.asarray(rng.random((2, n_pre, cap)) < 0.05)
    proposals = [_large_proposals(rng, n_pre, n_post, 3000, b == 1) for b in range(2)]
    rows, targets, values = jax.tree.map(lambda *x: jnp.stack(x), *proposals)

    def step(conn, mask, rows, targets, values):
        conn, removed = jp.remove_synapses(conn, mask, impl="native")
        conn, added = jp.add_synapses(conn, rows, targets, values, impl="native")
        return conn, removed.merge(added)

    out = jax.jit(jax.vmap(step))(batch, mask, rows, targets, values)
    for b, conn in enumerate(conns):
        alone = jax.jit(step)(conn, mask[b], rows[b], targets[b], proposals[b][2])
        assert_trees_equal(alone, jax.tree.map(lambda x, b=b: x[b], out))
    posts = batch.post
    assert_trees_equal(
        jax.vmap(lambda p: native.columns(p, n_post, 40))(posts),
        jax.vmap(lambda p: _column_arrays_xla(p, n_post, 40))(posts),
    )


@built
def test_native_under_donation_equals_the_xla_version():
    conn = _state(5, 50, 60, 8, 12, fill=8)
    mask = jnp.asarray(np.random.default_rng(1).random(conn.post.shape) < 0.2)
    expected = _remove(conn, mask, impl="xla")
    donated = jax.jit(jp.remove_synapses, donate_argnums=0, static_argnames="impl")
    got = donated(jax.tree.map(jnp.copy, conn), mask, impl="native")
    assert_trees_equal(got, expected)


def _custom_call_targets(fn, *args, platform):
    lowered = jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,))
    text = lowered.as_text()
    # Whole names: "jaxplastic_remove" also begins "jaxplastic_remove_slots".
    return set(re.findall(r"@(jaxplastic_\w+)\(", text))


@built
def test_auto_takes_the_native_kernels_on_cpu_only():
    conn = _state(0, 9, 7, 4, 5, fill=3)
    mask = jnp.zeros(conn.post.shape, bool)
    rows, targets = jnp.array([1, 2]), jnp.array([3, 4])

    def step(conn, impl):
        conn, _ = jp.remove_synapses(conn, mask, impl=impl)
        conn, _ = jp.remove_slots(conn, rows, targets, impl=impl)
        return jp.add_synapses(conn, rows, targets, impl=impl)

    assert _custom_call_targets(lambda c: step(c, "auto"), conn, platform="cpu") == {
        "jaxplastic_remove",
        "jaxplastic_remove_slots",
        "jaxplastic_add",
    }
    assert _custom_call_targets(lambda c: step(c, "xla"), conn, platform="cpu") == set()
    # A program lowered for a GPU holds no CPU custom call.
    assert _custom_call_targets(lambda c: step(c, "auto"), conn, platform="cuda") == set()

    def build(post, impl):  # without build_column_view's overflow check, a CPU callback
        return _column_arrays(post, conn.n_post, 5, impl)

    for impl, platform, expected in [
        ("auto", "cpu", {"jaxplastic_columns"}),
        ("xla", "cpu", set()),
        ("auto", "cuda", set()),
    ]:
        got = _custom_call_targets(
            lambda p, impl=impl: build(p, impl), conn.post, platform=platform
        )
        assert got == expected, (impl, platform)


def test_impl_argument_is_checked():
    conn = _state(0, 9, 7, 4, 5, fill=3)
    mask = jnp.zeros(conn.post.shape, bool)
    with pytest.raises(ValueError, match="impl"):
        jp.remove_synapses(conn, mask, impl="fast")
    narrow = jp.RaggedConnectivity(conn.post.astype(jnp.int16), conn.synapses, None, conn.n_post)
    if native.available():
        with pytest.raises(ValueError, match="int32 or int64"):
            jp.remove_synapses(narrow, mask, impl="native")
    # "auto" falls back to XLA where the native kernels do not fit.
    new, info = jp.remove_synapses(narrow, mask)
    assert int(info.removed) == 0 and new.post.dtype == jnp.int16


def test_without_the_library_auto_uses_xla_and_native_says_why(monkeypatch):
    monkeypatch.setattr(native, "available", lambda: False)
    monkeypatch.setattr(native, "load_error", lambda: "libjaxplastic_structural.so is missing")
    conn = _state(0, 9, 7, 4, 5, fill=3)
    mask = jnp.zeros(conn.post.shape, bool).at[0, 0].set(True)
    assert (
        _custom_call_targets(lambda c: jp.remove_synapses(c, mask), conn, platform="cpu") == set()
    )
    new, info = jp.remove_synapses(conn, mask)
    assert int(info.removed) == int(conn.alive[0, 0])
    with pytest.raises(RuntimeError, match="is missing"):
        jp.add_synapses(conn, jnp.array([1]), jnp.array([2]), impl="native")
    # The column view's build too. A shape no other test uses: the build's jitted part
    # chooses its implementation when it is traced, and a cached trace would not ask again.
    post = jnp.asarray(np.random.default_rng(3).integers(0, 12, (7, 3)), jnp.int32)
    lowered = jax.jit(lambda p: _column_arrays(p, 11, 9, "auto")).trace(post).lower()
    assert "jaxplastic_columns" not in lowered.as_text()
    view = build_column_view(post, 11, 9)
    expected = jax.jit(_column_arrays_xla, static_argnums=(1, 2))(post, 11, 9)
    assert_trees_equal((view.pre_slot, view.position), expected[:2])
    with pytest.raises(RuntimeError, match="is missing"):
        build_column_view(post, 11, 9, impl="native")


@built
def test_int64_indices_equal_the_xla_version():
    # With 64-bit indices enabled, post and the column view are int64: the kernels' other
    # instantiation.
    with jax.enable_x64(True):
        conn = _state(7, 20, 15, 6, 7, fill=6)
        assert conn.post.dtype == jnp.int64 and conn.column.pre_slot.dtype == jnp.int64
        rng = np.random.default_rng(7)
        mask = jnp.asarray(rng.random(conn.post.shape) < 0.3)
        rows = jnp.asarray(rng.integers(-1, 21, 60))
        targets = jnp.asarray(rng.integers(0, 16, 60))
        values = {"weight": jnp.asarray(rng.normal(size=60), jnp.float32)}
        out = {}
        for impl in ("xla", "native"):
            c, removed = jp.remove_synapses(conn, mask, impl=impl)
            c, listed = jp.remove_slots(c, rows, targets % 6, impl=impl)
            c, added = jp.add_synapses(c, rows, targets, values, impl=impl)
            out[impl] = (c, removed.merge(listed).merge(added))
        assert_trees_equal(out["native"], out["xla"])
        assert int(out["native"][1].added) > 0 and int(out["native"][1].removed) > 0
        # The column view built from scratch.
        built_native = build_column_view(conn.post, conn.n_post, 7, impl="native")
        assert_trees_equal(built_native, build_column_view(conn.post, conn.n_post, 7, impl="xla"))


_columns_native = jax.jit(native.columns, static_argnums=(1, 2))
_columns_xla = jax.jit(_column_arrays_xla, static_argnums=(1, 2))


@built
@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 2**31),
    st.sampled_from([(9, 7, 4), (30, 50, 12), (64, 40, 8), (5, 300, 40), (1, 1, 1)]),
    st.integers(1, 12),
)
def test_column_build_equals_the_xla_version(seed, shape, column_capacity):
    # Random rows of distinct targets, some columns over capacity: the counts, the positions
    # (also of the slots that do not fit) and pre_slot must all agree.
    n_pre, n_post, cap = shape
    rng = np.random.default_rng(seed)
    post = np.full((n_pre, cap), n_post, np.int32)
    for i in range(n_pre):
        k = rng.integers(0, min(cap, n_post) + 1)
        post[i, rng.choice(cap, k, replace=False)] = rng.choice(n_post, k, replace=False)
    post = jnp.asarray(post)
    got = _columns_native(post, n_post, column_capacity)
    assert_trees_equal(got, _columns_xla(post, n_post, column_capacity))
    counts = np.bincount(np.asarray(post).ravel(), minlength=n_post + 1)[:n_post]
    np.testing.assert_array_equal(got[2], counts)


@built
def test_column_build_under_vmap_and_its_overflow_errors():
    posts = jnp.stack([_state(s, 12, 9, 5, None, fill=5).post for s in range(3)])
    got = jax.vmap(lambda p: native.columns(p, 9, 8))(posts)
    assert_trees_equal(got, jax.vmap(lambda p: _column_arrays_xla(p, 9, 8))(posts))
    for b in range(3):
        assert_trees_equal(jax.tree.map(lambda x, b=b: x[b], got), _columns_native(posts[b], 9, 8))
    # A column over capacity is an error, eagerly and under jit.
    longest = int(np.bincount(np.asarray(posts[0]).ravel(), minlength=10)[:9].max())
    with pytest.raises(ValueError, match="over column_capacity"):
        build_column_view(posts[0], 9, longest - 1, impl="native")
    jitted = jax.jit(build_column_view, static_argnums=(1, 2), static_argnames="impl")
    with pytest.raises(Exception, match="exceeds column_capacity"):
        jax.block_until_ready(jitted(posts[0], 9, longest - 1, impl="native"))
    with pytest.raises(ValueError, match="impl"):
        build_column_view(posts[0], 9, longest, impl="fast")


@pytest.mark.parametrize("impl", ["xla", pytest.param("native", marks=built)])
@pytest.mark.parametrize("shape", [(0, 2), (3, 0)])
def test_projections_without_rows_or_slots(impl, shape):
    # Nothing fits, every result is still written: out of range without rows; row full (and
    # then a repeat) without slots.
    n_post = 5
    post = jnp.full(shape, n_post, jnp.int32)
    conn = jp.RaggedConnectivity(post, {"weight": jnp.zeros(shape)}, None, n_post)
    conn = conn.with_column_view(3)
    assert_trees_equal(
        conn.column, build_column_view(post, n_post, 3, impl="xla" if impl == "native" else impl)
    )
    assert (conn.column.pre_slot == 0).all()  # the free-entry sentinel: no slots
    new, info = jp.remove_synapses(conn, jnp.ones(shape, bool), impl=impl)
    assert int(info.removed) == 0
    new, info = jp.remove_slots(new, jnp.array([0, 1]), jnp.array([0, 0]), impl=impl)
    assert int(info.removed) == 0
    rows, targets = jnp.array([0, 1, 0, 1]), jnp.array([1, 2, n_post, 2])
    new, info = jp.add_synapses(new, rows, targets, impl=impl)
    counts = [int(x) for x in info[1:]]  # removed, added, duplicate, row, column, range
    assert counts == ([0, 0, 0, 0, 0, 3] if shape[0] == 0 else [0, 0, 1, 2, 0, 0])
    assert_trees_equal(new, conn)
