"""The DEEP R training step: e-prop -> L1 -> Adam -> prune -> regrow -> optimiser reset.

The guarantees of tests/test_deep_r.py (for `rewire` alone), checked on the full jitted step,
plus the order of its parts, compile-once, learning, and the dense/static/deep_r selector.
"""

import json
import runpy
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import jaxplastic as jp
from jaxplastic.learning import (
    DeepRCounts,
    TrainState,
    deep_r,
    deep_r_train_step,
    eprop,
    init_deep_r,
    trainer,
    with_padding,
)
from jaxplastic.models import RecurrentClassifier, dense_classifier, recurrent_classifier

from .helpers import tree_allclose

# Input and recurrent projections share one shape ([16, 12]), so that a reset of the
# optimiser state by shape alone would mix them up; the step must reset by position.
N, N_OUT, CAP, BATCH, STEPS = 16, 3, 12, 4, 30

# Module-level, so that every test hits the same compiled step (the optimiser is static).
# Large steps and a strong L1 term make many weights cross zero.
OPTIMIZER = optax.chain(deep_r.l1(0.05), optax.adam(5e-2))

pytestmark = pytest.mark.standard_promotion  # optax mixes Python floats and int32 counts


def _model(key, **kwargs) -> RecurrentClassifier:
    options = dict(p_in=0.25, p_rec=0.25, capacity_in=CAP, capacity_rec=CAP, weight_gain=3.0)
    options.update(kwargs)
    return recurrent_classifier(N, N_OUT, n_hidden=N, key=key, **options)


def _batch(key, n_in=N):
    spikes = jr.bernoulli(key, 0.2, (BATCH, STEPS, n_in)).astype(jnp.uint8)
    return spikes, jnp.arange(BATCH, dtype=jnp.int32) % N_OUT


def _recheck(conn):
    """Rebuilds a projection from its arrays, re-running every construction-time check."""
    return jp.RaggedConnectivity(conn.post, conn.synapses, conn.column, conn.n_post)


def _key_data(tree):
    """The tree with typed PRNG keys as their raw uint32 data (comparable with numpy)."""

    def data(x):
        return jr.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x

    return jax.tree.map(data, tree)


def _projections(model):
    return (("input", model.input), ("recurrent", model.recurrent))


def _signs(state: TrainState):
    return {"input": state.signs_input, "recurrent": state.signs_recurrent}


def _adam(opt_state):
    adam = opt_state[1][0]
    assert isinstance(adam, optax.ScaleByAdamState)
    return adam


def test_count_signs_and_invariants_hold_over_many_steps(getkey):
    model = _model(getkey())
    state = init_deep_r(model, key=getkey(), optimizer=OPTIMIZER)
    counts = {name: int(conn.num_synapses) for name, conn in _projections(model)}
    removed = {"input": 0, "recurrent": 0}
    for _ in range(20):
        model, state, info = deep_r_train_step(model, state, _batch(getkey()), optimizer=OPTIMIZER)
        for name, conn in _projections(model):
            c = getattr(info, name)
            assert int(c.shortfall) == 0 and int(c.added) == int(c.removed)
            assert int(conn.num_synapses) == counts[name], name
            removed[name] += int(c.removed)
            conn = _recheck(conn)  # targets in range, no duplicates, free slots zero, finite
            live = np.asarray(conn.alive)
            s = np.asarray(deep_r.slot_signs(_signs(state)[name], conn))
            w = np.asarray(conn.weight)
            assert (s[live] * w[live] >= 0).all(), f"{name}: a live synapse violates its sign"
            assert (w[~live] == 0).all()
        post = np.asarray(model.recurrent.post)
        assert not (post == np.arange(N)[:, None]).any(), "an autapse was grown"
    assert min(removed.values()) > 5 and sum(removed.values()) > 50, removed


def _changed(before: jp.RaggedConnectivity, after: jp.RaggedConnectivity) -> np.ndarray:
    """Slots rewired in one step: a new target, or a live weight of exactly 0 (a synapse
    removed and regrown in the same slot; a trained weight is never exactly 0)."""
    moved = np.asarray(before.post) != np.asarray(after.post)
    return moved | (np.asarray(after.alive) & (np.asarray(after.weight) == 0))


def test_regrown_synapses_start_at_zero_with_zeroed_moments_in_their_projection(getkey):
    model = _model(getkey())
    state = init_deep_r(model, key=getkey(), optimizer=OPTIMIZER)
    # A few steps first, so that Adam's moments are nonzero on every live slot; then the
    # first step that rewires both projections.
    for i in range(20):
        before = model
        model, state, info = deep_r_train_step(model, state, _batch(getkey()), optimizer=OPTIMIZER)
        if i >= 2 and int(info.input.removed) > 0 and int(info.recurrent.removed) > 0:
            break
    adam = _adam(state.opt_state)
    masks = {}
    for name, conn in _projections(model):
        changed = _changed(getattr(before, name), conn)
        masks[name] = changed
        regrown = changed & np.asarray(conn.alive)
        assert regrown.sum() == int(getattr(info, name).added) > 0, name
        assert (np.asarray(conn.weight)[regrown] == 0).all()
        for moment in (adam.mu, adam.nu):
            m = np.asarray(getattr(moment, name).synapses["weight"])
            assert (m[changed] == 0).all(), f"{name}: moments not reset at a rewired slot"
            kept = np.asarray(conn.alive) & ~changed
            assert (m[kept] != 0).all(), f"{name}: moments lost at a slot that was not rewired"
            assert (m[~np.asarray(conn.alive)] == 0).all()
    # Same shapes, different slots: each projection was reset at its own slots only.
    assert (masks["input"] != masks["recurrent"]).any()


def test_step_is_its_parts_in_order(getkey):
    # The documented order, step by step, with the documented key split.
    model = _model(getkey())
    state = init_deep_r(model, key=getkey(), optimizer=OPTIMIZER)
    batch = _batch(getkey())
    got_model, got_state, got_info = deep_r_train_step(model, state, batch, optimizer=OPTIMIZER)

    grads, eprop_info = eprop().gradients(model, batch[0], labels=batch[1])
    params = eqx.filter(model, eqx.is_inexact_array)
    signs = {
        "in": deep_r.slot_signs(state.signs_input, model.input),
        "rec": deep_r.slot_signs(state.signs_recurrent, model.recurrent),
    }
    signs_tree = eqx.tree_at(
        lambda p: (p.input.synapses["weight"], p.recurrent.synapses["weight"]),
        jax.tree.map(lambda _: None, params),
        (signs["in"], signs["rec"]),
        is_leaf=lambda x: x is None,
    )
    updates, opt_state = OPTIMIZER.update(grads, state.opt_state, params, signs=signs_tree)
    expected = eqx.apply_updates(model, updates)
    _, k_in, k_rec = jr.split(state.key, 3)
    conn_in, info_in = deep_r.rewire(k_in, expected.input, state.signs_input)
    conn_rec, info_rec = deep_r.rewire(k_rec, expected.recurrent, state.signs_recurrent)
    expected = eqx.tree_at(lambda m: (m.input, m.recurrent), expected, (conn_in, conn_rec))
    adam = _adam(opt_state)
    mu = jp.reset_slots(adam.mu.input.synapses["weight"], info_in.changed)
    nu = jp.reset_slots(adam.nu.recurrent.synapses["weight"], info_rec.changed)

    tree_allclose(got_model, expected, rtol=1e-5, atol=1e-6)
    got_adam = _adam(got_state.opt_state)
    np.testing.assert_allclose(got_adam.mu.input.synapses["weight"], mu, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got_adam.nu.recurrent.synapses["weight"], nu, rtol=1e-5, atol=1e-9)
    assert got_info.input == DeepRCounts.of(info_in)
    assert got_info.recurrent == DeepRCounts.of(info_rec)
    assert float(got_info.loss) == pytest.approx(float(eprop_info.loss), rel=1e-6)
    assert int(info_in.removed) > 0


def test_same_key_same_result_and_different_key_differs(getkey):
    model = _model(getkey())
    state = init_deep_r(model, key=jr.key(3), optimizer=OPTIMIZER)
    batch = _batch(getkey())
    a, state_a, _ = deep_r_train_step(model, state, batch, optimizer=OPTIMIZER)
    b, state_b, _ = deep_r_train_step(model, state, batch, optimizer=OPTIMIZER)
    tree_allclose(a, b, rtol=0, atol=0)
    tree_allclose(_key_data(state_a), _key_data(state_b), rtol=0, atol=0)
    c, _, info = deep_r_train_step(model, state._replace(key=jr.key(4)), batch, optimizer=OPTIMIZER)
    assert int(info.input.added) > 0
    assert not np.array_equal(np.asarray(a.input.post), np.asarray(c.input.post))


def test_shortfall_with_full_rows(getkey):
    # All-to-all input rows with no spare slot: the only free positions are those just
    # pruned, which a few proposals rarely find; the step reports the shortfall.
    model = _model(getkey(), p_in=1.0, capacity_in=N)
    assert bool(jnp.all(model.input.row_lengths == N))
    optimizer = optax.chain(deep_r.l1(0.5), optax.adam(1.0))  # huge steps: many crossings
    state = init_deep_r(model, key=getkey(), optimizer=optimizer)
    new, state, info = deep_r_train_step(
        model,
        state,
        _batch(getkey()),
        optimizer=optimizer,
        proposals_per_round=4,
        max_rounds=2,
    )
    c = info.input
    assert int(c.removed) > 8 and int(c.shortfall) > 0
    assert int(c.added) + int(c.shortfall) == int(c.removed)
    assert int(new.input.num_synapses) == N * N - int(c.shortfall)
    conn = _recheck(new.input)
    s = np.asarray(deep_r.slot_signs(state.signs_input, conn))
    live = np.asarray(conn.alive)
    assert (s[live] * np.asarray(conn.weight)[live] >= 0).all()


def test_compiles_once_and_loss_falls(getkey):
    counted = eqx.filter_jit(
        eqx.debug.assert_max_traces(deep_r_train_step.__wrapped__, max_traces=1)
    )
    model = _model(getkey())
    state = init_deep_r(model, key=getkey(), optimizer=OPTIMIZER)
    batch = _batch(getkey())
    losses, rewired = [], 0
    for _ in range(12):
        model, state, info = counted(model, state, batch, optimizer=OPTIMIZER)
        losses.append(float(info.loss))
        rewired += int(info.input.removed) + int(info.recurrent.removed)
    assert eqx.debug.get_num_traces(counted.__wrapped__) == 1
    assert rewired > 0  # rewiring happened between the calls, without a retrace
    assert losses[-1] < 0.8 * losses[0], losses


def test_trainer_selects_the_method(getkey):
    sparse = _model(getkey())
    dense = dense_classifier(N, N_OUT, n_hidden=N, weight_gain=3.0, key=getkey())
    batch = _batch(getkey())
    for method, model in (("dense", dense), ("static", sparse), ("deep_r", sparse)):
        train = trainer(method, learning_rate=5e-2, l1_strength=0.05)
        state = train.init(model, key=getkey())
        new, state, info = train.step(model, state, batch)
        assert type(new) is type(model)
        assert np.isfinite(float(info.loss))
        if method == "static":
            np.testing.assert_array_equal(new.input.post, model.input.post)
            assert info.input == DeepRCounts.zero() and info.recurrent == DeepRCounts.zero()
        if method == "deep_r":
            assert state.signs_input is not None
            assert int(info.input.removed) == int(info.input.added)
    with pytest.raises(ValueError, match="method"):
        trainer("sparse")
    with pytest.raises(TypeError, match="DenseClassifier"):
        trainer("dense").init(sparse, key=getkey())
    with pytest.raises(TypeError, match="RecurrentClassifier"):
        trainer("deep_r").init(dense, key=getkey())
    with pytest.raises(TypeError, match="RecurrentClassifier"):
        trainer("static").init(dense, key=getkey())
    with pytest.raises(ValueError, match="signs"):
        deep_r_train_step(sparse, TrainState(None, getkey()), batch, optimizer=OPTIMIZER)


def test_with_padding_sets_capacity_from_the_longest_row(getkey):
    model = _model(getkey())
    for r in (0.0, 1.0, 2.5):
        padded = with_padding(model, r)
        for name, conn in _projections(padded):
            old = getattr(model, name)
            longest = int(old.row_lengths.max())
            assert conn.capacity == max(1, int(np.ceil((1 + r) * longest)))
            _recheck(conn)
            np.testing.assert_array_equal(conn.to_dense(), old.to_dense())
    conn = jp.fixed_probability(getkey(), 30, 30, 0.2, column_capacity=20)
    padded = with_padding(conn, 1.0)
    assert padded.column.column_capacity == 20
    rebuilt = padded.rebuild_column_view()
    np.testing.assert_array_equal(
        np.sort(np.asarray(padded.column.pre_slot), axis=1),
        np.sort(np.asarray(rebuilt.column.pre_slot), axis=1),
    )
    with pytest.raises(ValueError, match="r"):
        with_padding(model, -1.0)
    with pytest.raises(TypeError, match="RecurrentClassifier"):
        with_padding(model.to_dense(), 1.0)


def test_example_script_runs(tmp_path, capsys):
    # In-process (not a subprocess), so that it reuses this session's compiled kernels.
    root = Path(__file__).resolve().parents[1]
    example = runpy.run_path(str(root / "examples" / "deep_r_mnist.py"), run_name="example")
    out = tmp_path / "results.json"
    tiny = ["--hidden", "16", "--num-steps", "5", "--train-size", "64", "--out", str(out)]
    rows = example["main"]([*tiny, "--configs", "DEEP R 1/1"])
    assert [r["name"] for r in rows] == ["DEEP R 1/1"] and rows[0]["shortfall"] == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["synapses_final"] == run["synapses_initial"]  # conserved through training
    assert "| DEEP R 1/1 |" in capsys.readouterr().out
