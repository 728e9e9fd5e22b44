import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

import jaxplastic as jp
from native_kernels import structural as native

from .examples.rules import grow_random, prune_below

N_PRE, N_POST, CAP, COL_CAP = 9, 7, 4, 5


# -- an independent model: a dict of edges -> weight, edited one proposal at a time ----------


class EdgeModel:
    def __init__(self, conn):
        post = np.asarray(conn.post)
        w = np.asarray(conn.weight)
        self.edges = {
            (i, int(post[i, s])): float(w[i, s])
            for i in range(conn.n_pre)
            for s in range(conn.capacity)
            if post[i, s] != conn.n_post
        }
        self.cap = conn.capacity
        self.col_cap = conn.column_capacity
        self.n_pre, self.n_post = conn.n_pre, conn.n_post

    def remove(self, pairs):
        for pair in pairs:
            del self.edges[pair]

    def add(self, rows, targets, weights):
        counts = dict(dup=0, row=0, col=0, oor=0, added=0)
        seen = set()
        original = set(self.edges)
        for r, t, w in zip(rows, targets, weights, strict=True):
            r, t = int(r), int(t)
            if t == self.n_post:
                continue
            if not (0 <= r < self.n_pre and 0 <= t < self.n_post):
                counts["oor"] += 1
                continue
            if (r, t) in original or (r, t) in seen:
                seen.add((r, t))
                counts["dup"] += 1
                continue
            seen.add((r, t))
            if sum(1 for (i, _) in self.edges if i == r) >= self.cap:
                counts["row"] += 1
            elif (
                self.col_cap is not None
                and sum(1 for (_, j) in self.edges if j == t) >= self.col_cap
            ):
                counts["col"] += 1
            else:
                self.edges[(r, t)] = float(w)
                counts["added"] += 1
        return counts

    def dense(self):
        d = np.zeros((self.n_pre, self.n_post), np.float32)
        for (i, j), w in self.edges.items():
            d[i, j] = w
        return d


def _recheck(conn):
    """Rebuilds the module from its arrays, which re-runs every invariant check."""
    return jp.RaggedConnectivity(conn.post, conn.synapses, conn.column, conn.n_post)


def _column_sets(conn):
    pre_slot = np.asarray(conn.column.pre_slot)
    sentinel = conn.n_pre * conn.capacity
    return [sorted(row[row != sentinel].tolist()) for row in pre_slot]


def _assert_column_equals_rebuild(conn):
    assert _column_sets(conn) == _column_sets(conn.rebuild_column_view())


def _initial(seed, with_column=True):
    rng = np.random.default_rng(seed)
    dense = np.zeros((N_PRE, N_POST), np.float32)
    for i in range(N_PRE):
        k = rng.integers(0, CAP + 1)
        cols = rng.choice(N_POST, size=k, replace=False)
        dense[i, cols] = rng.uniform(0.1, 1.0, size=k)
    # Trim columns over capacity so the start state is valid.
    for j in range(N_POST):
        nz = np.nonzero(dense[:, j])[0]
        dense[nz[COL_CAP:], j] = 0
    return jp.from_dense(dense, capacity=CAP, column_capacity=COL_CAP if with_column else None)


_remove_jit = jax.jit(jp.remove_synapses, static_argnames="impl")
_add_jit = jax.jit(jp.add_synapses, static_argnames="impl")
_prune_jit = jax.jit(
    lambda conn, threshold, key, impl: jp.update_rows(conn, prune_below(threshold), key, impl=impl),
    static_argnames="impl",
)

# Both implementations of the primitives: XLA everywhere, the native kernels on a CPU.
IMPLS = [
    "xla",
    pytest.param(
        "native",
        marks=pytest.mark.skipif(
            not native.available() or jax.default_backend() != "cpu",
            reason="native kernels not built, or the default device is not a CPU",
        ),
    ),
]
_propagate_jit = jax.jit(jp.propagate)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("remove"), st.integers(0, 2**31)),
        st.tuples(st.just("add"), st.integers(0, 2**31)),
        st.tuples(st.just("rule"), st.integers(0, 2**31)),
    ),
    min_size=1,
    max_size=6,
)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=15)
@given(st.integers(0, 1000), ops, st.booleans())
def test_random_edit_sequences_match_edge_model(impl, seed, operations, with_column):
    conn = _initial(seed, with_column)
    model = EdgeModel(conn)
    for op, op_seed in operations:
        rng = np.random.default_rng(op_seed)
        if op == "remove":
            mask = rng.random((N_PRE, CAP)) < 0.3
            post = np.asarray(conn.post)
            pairs = [
                (i, int(post[i, s]))
                for i, s in zip(*np.nonzero(mask & (post != N_POST)), strict=True)
            ]
            conn, info = _remove_jit(conn, jnp.asarray(mask), impl=impl)
            model.remove(pairs)
            assert int(info.removed) == len(pairs)
            assert int(info.changed.sum()) == len(pairs)
        elif op == "add":
            k = 12
            # Targets include the sentinel (no proposal) and out-of-range values.
            rows = rng.integers(-1, N_PRE + 1, size=k).astype(np.int32)
            targets = rng.integers(0, N_POST + 2, size=k).astype(np.int32)
            weights = rng.uniform(0.1, 1.0, size=k).astype(np.float32)
            before = np.asarray(conn.post).copy()
            conn, info = _add_jit(conn, rows, targets, {"weight": jnp.asarray(weights)}, impl=impl)
            counts = model.add(rows, targets, weights)
            assert int(info.added) == counts["added"]
            assert int(info.refused_duplicate) == counts["dup"]
            assert int(info.refused_row_full) == counts["row"]
            assert int(info.refused_column_full) == counts["col"]
            assert int(info.refused_out_of_range) == counts["oor"]
            # Slots are stable: every slot that was live still holds its synapse.
            live = before != N_POST
            np.testing.assert_array_equal(np.asarray(conn.post)[live], before[live])
            assert int(info.changed.sum()) == counts["added"]
        else:
            threshold = float(rng.uniform(0.1, 0.6))
            pruned = [pair for pair, w in model.edges.items() if abs(w) < threshold]
            conn, info = _prune_jit(conn, threshold, jr.key(op_seed), impl)
            model.remove(pruned)
            assert int(info.removed) == len(pruned)
        conn = _recheck(conn)
        np.testing.assert_array_equal(np.asarray(conn.to_dense()), model.dense())
        if with_column:
            _assert_column_equals_rebuild(conn)
        spikes = jnp.asarray(np.random.default_rng(op_seed).random(N_PRE) < 0.5)
        np.testing.assert_allclose(
            np.asarray(_propagate_jit(conn, spikes)),
            np.asarray(spikes, np.float32) @ model.dense(),
            rtol=1e-6,
            atol=1e-6,
        )


_remove_slots_jit = jax.jit(jp.remove_slots)


@settings(max_examples=20)
@given(st.integers(0, 1000), st.integers(0, 2**31), st.booleans(), st.integers(0, 40))
def test_remove_slots_matches_edge_model(seed, op_seed, with_column, k):
    conn = _initial(seed, with_column)
    model = EdgeModel(conn)
    rng = np.random.default_rng(op_seed)
    # Rows and slots include out-of-range (and negative) entries, free slots and repeats.
    rows = rng.integers(-1, N_PRE + 1, size=k).astype(np.int32)
    slots = rng.integers(-1, CAP + 1, size=k).astype(np.int32)
    valid = rng.random(k) < 0.8
    post = np.asarray(conn.post)
    pairs = {
        (int(r), int(post[r, c]))
        for r, c, v in zip(rows, slots, valid, strict=True)
        if v and 0 <= r < N_PRE and 0 <= c < CAP and post[r, c] != N_POST
    }
    new, info = _remove_slots_jit(conn, rows, slots, valid)
    model.remove(pairs)
    assert int(info.removed) == len(pairs)
    assert int(info.changed.sum()) == len(pairs)
    assert int(info.added) == 0 and int(info.refused) == 0
    new = _recheck(new)
    np.testing.assert_array_equal(np.asarray(new.to_dense()), model.dense())
    changed = np.asarray(info.changed)
    assert np.all(np.asarray(new.post)[changed] == N_POST)
    np.testing.assert_array_equal(changed, (post != N_POST) & (np.asarray(new.post) == N_POST))
    if with_column:
        _assert_column_equals_rebuild(new)
    # The same projection as remove_synapses with the mask of the listed slots.
    mask = np.zeros((N_PRE, CAP), bool)
    for r, c, v in zip(rows, slots, valid, strict=True):
        if v and 0 <= r < N_PRE and 0 <= c < CAP:
            mask[r, c] = True
    ref, ref_info = _remove_jit(conn, jnp.asarray(mask))
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(changed, np.asarray(ref_info.changed))


def test_remove_slots_checks_inputs():
    conn = _initial(0)
    with pytest.raises(ValueError, match="rows and slots"):
        jp.remove_slots(conn, jnp.zeros(3, jnp.int32), jnp.zeros(2, jnp.int32))
    with pytest.raises(TypeError, match="slots"):
        jp.remove_slots(conn, jnp.zeros(2, jnp.int32), jnp.zeros(2, jnp.float32))
    with pytest.raises(ValueError, match="valid"):
        jp.remove_slots(conn, jnp.zeros(2, jnp.int32), jnp.zeros(2, jnp.int32), jnp.ones(3, bool))


def test_add_refusals_by_cause():
    conn = jp.from_edges([0, 0, 1], [0, 1, 1], n_pre=3, n_post=3, capacity=2, column_capacity=2)
    rows = jnp.array([0, 1, 1, 2, 2, 5, 2, 1], jnp.int32)
    targets = jnp.array([2, 1, 0, 1, 2, 0, 2, 3], jnp.int32)
    new, info = jp.add_synapses(conn, rows, targets, {"weight": jnp.ones(8)})
    # 0->2: row 0 full. 1->1: exists. 1->0: added. 2->1: column 1 full (0->1, 1->1).
    # 2->2: added. 5->0: out of range. 2->2 again: duplicate. 1->3: sentinel, no proposal.
    assert int(info.refused_row_full) == 1
    assert int(info.refused_duplicate) == 2
    assert int(info.added) == 2
    assert int(info.refused_column_full) == 1
    assert int(info.refused_out_of_range) == 1
    assert int(info.refused) == 5
    expected = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], np.float32)
    np.testing.assert_array_equal(np.asarray(new.to_dense() != 0), expected != 0)
    _recheck(new)


@pytest.mark.parametrize("impl", IMPLS)
def test_repeat_of_a_refused_proposal_behind_out_of_range_ones(impl):
    # Row 0 is full, and more than the pairwise window of proposals name it, so repeats are
    # found by sorting. Out-of-range proposals (kept at row 0, target 0 internally) lie
    # between the two 0 -> 0: the second is still a repeat of the first (both are refused,
    # the first because the row is full). The XLA version once counted it as "row full".
    conn = jp.from_edges([0, 0], [1, 2], n_pre=2, n_post=4, capacity=2)
    rows = jnp.array([0] + [-1] * 10 + [0] + [0] * 3, jnp.int32)
    targets = jnp.array([0] + [0] * 10 + [0] + [3] * 3, jnp.int32)
    _, info = jp.add_synapses(conn, rows, targets, impl=impl)
    model = EdgeModel(conn)
    counts = model.add(np.asarray(rows), np.asarray(targets), np.zeros(15, np.float32))
    assert counts == dict(dup=3, row=2, col=0, oor=10, added=0)
    assert int(info.refused_duplicate) == counts["dup"]
    assert int(info.refused_row_full) == counts["row"]
    assert int(info.refused_out_of_range) == counts["oor"]


def test_greedy_acceptance_in_order_under_contention():
    # Five proposals compete for one row with two free slots and columns of capacity 1.
    conn = jp.from_edges([1], [0], n_pre=2, n_post=6, capacity=2, column_capacity=1)
    new, info = jp.add_synapses(
        conn, jnp.zeros(5, jnp.int32), jnp.array([0, 1, 2, 3, 4], jnp.int32)
    )
    # 0: column 0 full (held by 1->0); 1 and 2 take the two slots; 3 and 4 find the row full.
    assert int(info.refused_column_full) == 1
    assert int(info.added) == 2
    assert int(info.refused_row_full) == 2
    np.testing.assert_array_equal(np.sort(np.asarray(new.post[0])), [1, 2])


@pytest.mark.parametrize("with_column", [True, False])
def test_many_proposals_per_row_match_edge_model(with_column):
    # Rows with more proposals than the pairwise window (repeats found by a sort), and rows
    # with few (found pairwise), in one call; repeated, existing and out-of-range targets.
    conn = _initial(3, with_column)
    model = EdgeModel(conn)
    rng = np.random.default_rng(7)
    rows = np.concatenate([np.zeros(30), np.full(12, 4), rng.integers(0, N_PRE, 20)])
    rows = rng.permutation(rows).astype(np.int32)
    targets = rng.integers(0, N_POST + 2, size=rows.size).astype(np.int32)
    weights = rng.uniform(0.1, 1.0, size=rows.size).astype(np.float32)
    new, info = _add_jit(conn, rows, targets, {"weight": jnp.asarray(weights)})
    counts = model.add(rows, targets, weights)
    assert (int(info.added), int(info.refused_duplicate)) == (counts["added"], counts["dup"])
    assert int(info.refused_row_full) == counts["row"]
    assert int(info.refused_column_full) == counts["col"]
    assert int(info.refused_out_of_range) == counts["oor"]
    new = _recheck(new)
    np.testing.assert_array_equal(np.asarray(new.to_dense()), model.dense())
    if with_column:
        _assert_column_equals_rebuild(new)
    # Under vmap (where both ways of finding repeats run), one member with many proposals
    # per row and one with few: each the same as alone.
    few = rng.permutation(rows.size).astype(np.int32) % N_PRE
    stacked = jax.tree.map(lambda x: jnp.stack([x, x]), conn)
    batched, _ = jax.vmap(jp.add_synapses)(
        stacked,
        jnp.stack([rows, few]),
        jnp.stack([targets, targets]),
        {"weight": jnp.stack([weights, weights])},
    )
    alone, _ = _add_jit(conn, few, targets, {"weight": jnp.asarray(weights)})
    for member, ref in ((0, new), (1, alone)):
        for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(ref), strict=True):
            np.testing.assert_array_equal(np.asarray(a[member]), np.asarray(b))


def test_add_nothing():
    conn = _initial(0)
    new, info = jp.add_synapses(conn, jnp.zeros(0, jnp.int32), jnp.zeros(0, jnp.int32))
    assert int(info.added) == 0 and int(info.refused) == 0
    np.testing.assert_array_equal(np.asarray(new.post), np.asarray(conn.post))


def test_update_rows_in_several_chunks_equals_one_add():
    # 300 rows x 8 real proposals: more than one chunk of compacted proposals. Columns are
    # tight, so later chunks meet columns filled by earlier ones. The result must be that of
    # removing the flagged synapses and adding all proposals at once, bit for bit.
    n_pre, n_post, width = 300, 40, 8
    conn = jp.fixed_probability(
        jr.key(0), n_pre, n_post, 0.1, capacity=12, weight=0.3, column_capacity=80
    )
    base = grow_random(width, 0.9, 0.25)

    def rule(row, pre, post, key):
        update = base(row, pre, post, key)
        remove = row.alive & (jr.uniform(jr.fold_in(key, 1), row.alive.shape) < 0.2)
        bad = jnp.where(jnp.arange(width) == 0, -3, update.add_post)  # one out of range
        add_post = jnp.where(row.index % 7 == 0, bad, update.add_post)
        return jp.RowUpdate(remove, add_post, update.add_values)

    key = jr.key(5)
    new, info = jax.jit(lambda c: jp.update_rows(c, rule, key))(conn)
    updates = jax.vmap(
        lambda i, p: rule(
            jp.RowView(i, p, p != n_post, {"weight": conn.weight[i]}, n_post),
            None,
            None,
            jr.fold_in(key, i),
        )
    )(jnp.arange(n_pre, dtype=conn.post.dtype), conn.post)
    ref, removed = jp.remove_synapses(conn, updates.remove)
    ref, added = jp.add_synapses(
        ref,
        jnp.repeat(jnp.arange(n_pre, dtype=jnp.int32), width),
        updates.add_post.reshape(-1),
        {"weight": updates.add_values["weight"].reshape(-1)},
    )
    assert int(added.added) > 1024  # several chunks were needed
    assert int(added.refused_column_full) > 0 and int(added.refused_out_of_range) > 0
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    expected = added._replace(changed=added.changed | removed.changed, removed=removed.removed)
    for a, b in zip(info, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("size", [0, 1, 31, 32, 33, 1000, 32639, 32640, 32641, 130561, 1_000_003])
def test_counts_and_prefix_sums_of_masks(size):
    from jaxplastic._structural import _any, _count, _cumsum

    x = np.random.default_rng(size).random(size) < 0.4
    assert int(jax.jit(_count)(jnp.asarray(x))) == int(x.sum())
    assert int(_count(jnp.ones((size,), bool))) == size
    if size <= 200_000:
        np.testing.assert_array_equal(np.asarray(jax.jit(_cumsum)(jnp.asarray(x))), np.cumsum(x))
    batch = np.random.default_rng(1).random((3, size)) < 0.5
    np.testing.assert_array_equal(np.asarray(jax.vmap(_count)(jnp.asarray(batch))), batch.sum(1))
    # _any: every position of a single True is seen, including the padded last word.
    assert not bool(jax.jit(_any)(jnp.zeros((size,), bool)))
    for i in {0, size // 2, size - 1} if size else ():
        assert bool(jax.jit(_any)(jnp.zeros((size,), bool).at[i].set(True)))


def test_add_values_and_unknown_names():
    conn = jp.from_edges(
        [0], [1], n_pre=2, n_post=3, variables={"trace": np.array([0.5], np.float32)}
    )
    new, _ = jp.add_synapses(
        conn, jnp.array([1], jnp.int32), jnp.array([2], jnp.int32), {"weight": jnp.array([0.7])}
    )
    assert float(new.to_dense()[1, 2]) == pytest.approx(0.7)
    assert float(new.to_dense("trace")[1, 2]) == 0.0
    with pytest.raises(ValueError, match="unknown per-synapse variables"):
        jp.add_synapses(conn, jnp.array([1]), jnp.array([2]), {"nope": jnp.array([1.0])})
    with pytest.raises(ValueError, match="equal length"):
        jp.add_synapses(conn, jnp.array([1, 0]), jnp.array([2]))
    with pytest.raises(ValueError, match="mask: expected a bool array"):
        jp.remove_synapses(conn, jnp.zeros((2, 2), jnp.int32))


def test_update_rows_on_a_subset_of_rows_touches_only_those():
    conn = jp.fixed_probability(
        jr.key(0), 30, 25, 0.2, capacity=12, weight=0.05, column_capacity=16
    )
    rows = jnp.array([2, 11, 17], jnp.int32)
    new, info = jp.update_rows(conn, prune_below(0.1), jr.key(1), rows=rows)
    untouched = np.setdiff1d(np.arange(30), np.asarray(rows))
    np.testing.assert_array_equal(np.asarray(new.post)[untouched], np.asarray(conn.post)[untouched])
    assert (np.asarray(new.post)[np.asarray(rows)] == 25).all()
    assert int(info.removed) == int(conn.row_lengths[rows].sum())
    _assert_column_equals_rebuild(_recheck(new))


def test_update_rows_grow_rule_and_pre_post_arguments():
    conn = jp.fixed_probability(jr.key(0), 40, 30, 0.1, capacity=10, column_capacity=20)

    def grow_toward_active(row, pre, post, key):
        # Rows whose neuron is "eligible" propose the most active postsynaptic neuron.
        target = jnp.where(pre["eligible"], jnp.argmax(post["rate"]), row.n_post)
        return jp.RowUpdate(
            remove=jnp.zeros_like(row.alive),
            add_post=target.astype(row.post.dtype)[None],
            add_values={"weight": jnp.full((1,), 0.5)},
        )

    eligible = jnp.arange(40) % 4 == 0
    rate = jnp.zeros(30).at[7].set(10.0)
    new, info = jp.update_rows(
        conn, grow_toward_active, jr.key(1), pre={"eligible": eligible}, post={"rate": rate}
    )
    dense_before = np.asarray(conn.to_dense()) != 0
    dense_after = np.asarray(new.to_dense())
    expected_new = np.asarray(eligible) & ~dense_before[:, 7]
    assert int(info.added) == int(expected_new.sum())
    assert (dense_after[expected_new, 7] == 0.5).all()
    assert int(info.refused_duplicate) == int((np.asarray(eligible) & dense_before[:, 7]).sum())


def test_update_rows_rule_that_proposes_nothing():
    conn = jp.fixed_probability(jr.key(0), 30, 25, 0.2, capacity=12, weight=0.05)

    def prune_only(row, pre, post, key):
        weak = row.alive & (row.synapses["weight"] < 0.1)
        return jp.RowUpdate(weak, jnp.zeros((0,), row.post.dtype))

    new, info = jax.jit(lambda c: jp.update_rows(c, prune_only, jr.key(1)))(conn)
    assert int(info.removed) == int(conn.num_synapses) > 0
    assert int(info.added) == 0 and int(info.refused) == 0 and int(new.num_synapses) == 0


def test_update_rows_bad_rule_output_and_pre_shape():
    conn = jp.fixed_probability(jr.key(0), 10, 10, 0.3, capacity=8)

    def bad(row, pre, post, key):
        return jp.RowUpdate(jnp.zeros(3, bool), jnp.zeros(1, row.post.dtype))

    with pytest.raises(ValueError, match="expected `remove` to be bool"):
        jp.update_rows(conn, bad, jr.key(0))
    with pytest.raises(ValueError, match="leading axis n_pre=10"):
        jp.update_rows(conn, prune_below(0.1), jr.key(0), pre=jnp.zeros(3))


def test_update_rows_rejects_repeated_rows():
    conn = jp.fixed_probability(jr.key(0), 10, 10, 0.3, capacity=8)
    with pytest.raises(Exception, match="distinct and in range"):
        jp.update_rows(conn, prune_below(0.1), jr.key(0), rows=jnp.array([1, 1]))


def test_reset_slots_zeroes_only_changed_slot_aligned_leaves():
    changed = jnp.zeros((4, 3), bool).at[1, 2].set(True)
    tree = {
        "mu": jnp.ones((4, 3)),
        "traces": jnp.ones((5, 4, 3)),
        "count": jnp.array(7),
        "dense": jnp.ones((3, 4)),
        "other": None,
    }
    out = jp.reset_slots(tree, changed)
    assert float(out["mu"][1, 2]) == 0 and float(out["mu"].sum()) == 11
    assert float(out["traces"][:, 1, 2].sum()) == 0 and float(out["traces"].sum()) == 55
    assert int(out["count"]) == 7
    np.testing.assert_array_equal(np.asarray(out["dense"]), np.ones((3, 4)))


@pytest.mark.standard_promotion
def test_reset_slots_on_an_optax_state():
    conn = jp.fixed_probability(jr.key(0), 6, 6, 0.5, capacity=6)
    opt = optax.adam(1e-2)
    state = opt.init(conn.weight)
    _, state = opt.update(jnp.ones_like(conn.weight), state, conn.weight)
    changed = jnp.zeros(conn.post.shape, bool).at[0, 0].set(True)
    state = jp.reset_slots(state, changed)
    assert float(state[0].mu[0, 0]) == 0 and float(state[0].nu[0, 0]) == 0
    assert float(state[0].mu[0, 1]) != 0
    assert int(state[0].count) == 1


def test_vmap_over_an_ensemble_of_networks():
    keys = jr.split(jr.key(0), 4)
    conns = jax.vmap(
        lambda k: jp.fixed_probability(k, 20, 20, 0.2, capacity=10, weight=0.5, column_capacity=12)
    )(keys)

    def rewire(conn, key):
        conn, _ = jp.update_rows(conn, prune_below(0.6), key)
        return jp.update_rows(conn, grow_random(3, 0.5, 0.3), key)

    out, info = jax.jit(jax.vmap(rewire))(conns, jr.split(jr.key(1), 4))
    rewire_one = jax.jit(rewire)
    for n in range(4):
        single, single_info = rewire_one(
            jax.tree.map(lambda x, n=n: x[n], conns), jr.split(jr.key(1), 4)[n]
        )
        got = jax.tree.map(lambda x, n=n: x[n], out)
        np.testing.assert_array_equal(np.asarray(got.post), np.asarray(single.post))
        np.testing.assert_array_equal(np.asarray(got.weight), np.asarray(single.weight))
        assert int(info.added[n]) == int(single_info.added)
        _assert_column_equals_rebuild(_recheck(got))
    assert len({int(a) for a in info.added}) > 1


def test_step_rewire_step_compiles_once():
    conn = jp.fixed_probability(jr.key(0), 50, 50, 0.1, capacity=16, weight=0.3, column_capacity=20)

    @eqx.debug.assert_max_traces(max_traces=1)
    def step(conn, key):
        k1, k2 = jr.split(key)
        spikes = jr.bernoulli(k1, 0.2, (50,))
        current = jp.propagate(conn, spikes)
        conn, info = jp.update_rows(conn, prune_below(0.35), k2)
        conn, info2 = jp.update_rows(conn, grow_random(2, 0.5, 0.3), k2)
        return conn, current, info.merge(info2)

    step = jax.jit(step)
    key = jr.key(1)
    for _ in range(5):
        key, sub = jr.split(key)
        conn, current, info = step(conn, sub)
    assert current.shape == (50,)
    _assert_column_equals_rebuild(_recheck(conn))


@pytest.mark.parametrize("width", [1, 3, 4, 5, 31, 32, 33, 100, 160, 512, 513, 1000])
def test_packed_bits_and_nth_bit_match_numpy(width):
    from jaxplastic._structural import _count_bits, _nth_bit, _pack_bits

    mask = np.random.default_rng(width).random((37, width)) < 0.3
    words = np.asarray(jax.jit(_pack_bits)(jnp.asarray(mask))).astype(np.uint64)
    expected = np.zeros((37, -(-width // 32)), np.uint64)
    for j in range(width):
        expected[:, j // 32] |= mask[:, j].astype(np.uint64) << np.uint64(j % 32)
    np.testing.assert_array_equal(words, expected)
    np.testing.assert_array_equal(
        np.asarray(_count_bits(jnp.asarray(words, jnp.uint32))), mask.sum(1)
    )
    # The (n+1)-th set bit of each row, and `width` past the last one.
    n = np.random.default_rng(1).integers(0, mask.sum(1) + 2)
    got = np.asarray(_nth_bit(jnp.asarray(words, jnp.uint32), jnp.asarray(n), width))
    for row, (m, i) in enumerate(zip(mask, n, strict=True)):
        on = np.flatnonzero(m)
        assert got[row] == (on[i] if i < on.size else width)
