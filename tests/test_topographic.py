import functools
import json
import math
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy.stats import chi2

import jaxplastic as jp
from jaxplastic._cli import main
from jaxplastic.models import (
    RewiringSource,
    TopographicMap,
    _topographic as topographic,
    bamford_rewire,
    displacement_maps,
    distance_dependent_connectivity,
    expected_degree,
    map_quality,
    run_topographic,
)
from jaxplastic.models._topographic import _kernel_offsets

SIDE = 16
N = SIDE * SIDE


def _d2_levels(side):
    """Every torus displacement's squared distance, and the distinct levels."""
    axis = np.arange(-(side // 2), side - side // 2)
    ox, oy = np.meshgrid(axis, axis)
    d2 = (ox**2 + oy**2).ravel()
    return d2, np.unique(d2)


def _pair_d2(pre, post, side):
    dx = (post % side - pre % side + side // 2) % side - side // 2
    dy = (post // side - pre // side + side // 2) % side - side // 2
    return dx**2 + dy**2


def _chi_square(observed, expected, *, min_expected=5.0):
    """Chi-square statistic over bins merged (from the tail) until each expects >= 5."""
    obs, exp = [], []
    o_acc = e_acc = 0.0
    for o, e in zip(observed, expected, strict=True):
        o_acc += o
        e_acc += e
        if e_acc >= min_expected:
            obs.append(o_acc)
            exp.append(e_acc)
            o_acc = e_acc = 0.0
    if e_acc > 0:
        obs[-1] += o_acc
        exp[-1] += e_acc
    obs, exp = np.asarray(obs), np.asarray(exp)
    return float(np.sum((obs - exp) ** 2 / exp)), len(obs) - 1


def _edges(conn):
    post = np.asarray(conn.post)
    pre, slot = np.nonzero(post != conn.n_post)
    return pre, post[pre, slot]


# -- initial connectivity ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p_peak", "sigma", "autapses"), [(0.16, 2.5, True), (1.0, 1.0, False), (0.5, 1.5, True)]
)
def test_initial_connectivity_matches_kernel_in_distribution(p_peak, sigma, autapses):
    seeds = 4
    build = jax.jit(
        jax.vmap(
            lambda k: distance_dependent_connectivity(
                k, SIDE, p_peak=p_peak, sigma=sigma, autapses=autapses
            )
        )
    )
    conns = build(jr.split(jr.key(7), seeds))
    d2_all, levels = _d2_levels(SIDE)
    p_level = p_peak * np.exp(-levels / (2 * sigma**2))
    if not autapses:
        p_level[levels == 0] = 0.0
    expected = np.array([np.sum(d2_all == lv) for lv in levels]) * N * seeds * p_level
    observed = np.zeros(levels.size)
    for b in range(seeds):
        conn = jax.tree.map(lambda x, b=b: x[b], conns)
        jp.RaggedConnectivity(conn.post, conn.synapses, conn.column, conn.n_post)  # invariants
        pre, post = _edges(conn)
        if not autapses:
            assert not np.any(pre == post)
        observed += np.bincount(
            np.searchsorted(levels, _pair_d2(pre, post, SIDE)), minlength=levels.size
        )
        assert np.all(np.asarray(conn.weight)[np.asarray(conn.alive)] == np.float32(0.2))
    stat, dof = _chi_square(observed, expected)
    assert stat < chi2.isf(1e-4, dof), (stat, dof)
    # The expected degree is the lattice sum of the kernel.
    degree = expected_degree(SIDE, p_peak, sigma, autapses=autapses)
    assert abs(observed.sum() / (N * seeds) - degree) < 4 * math.sqrt(degree / (N * seeds))


def test_kernel_window_is_local_at_large_scale():
    dx, dy, p = _kernel_offsets(112, 0.16, 2.5, True, 1e-7)
    assert p.min() >= 1e-7 and np.abs(dx).max() == 13 and dx.size < 27**2
    dx, dy, p = _kernel_offsets(112, 1.0, 1.0, False, 1e-7)
    assert np.abs(dx).max() == 5 and not np.any((dx == 0) & (dy == 0))
    # Every displacement exactly once when the window covers the torus.
    dx, dy, _ = _kernel_offsets(16, 0.16, 2.5, True, 1e-7)
    assert len(set(zip(dx.tolist(), dy.tolist(), strict=True))) == dx.size == 256
    assert abs(expected_degree(16, 0.16, 2.5) - 2 * math.pi * 0.16 * 2.5**2) < 0.05
    assert abs(expected_degree(16, 1.0, 1.0, autapses=False) - (2 * math.pi - 1)) < 0.01


# -- rewiring -------------------------------------------------------------------------------


def _empty_projection(n_pre, n_post, capacity=64, column_capacity=64):
    post = jnp.full((n_pre, capacity), n_post, jnp.int32)
    conn = jp.RaggedConnectivity(post, {"weight": jnp.zeros((n_pre, capacity))}, None, n_post)
    return conn.with_column_view(column_capacity)


@pytest.mark.parametrize("pairwise", [True, False])
def test_rewiring_formation_matches_distance_kernel_in_distribution(pairwise, monkeypatch):
    # Both bookkeeping paths: every pair of attempts compared, or attempts sorted by row.
    monkeypatch.setattr(topographic, "_PAIRWISE_MAX_ATTEMPTS", 256 if pairwise else 1)
    sources = (
        RewiringSource(0, 40, 0.16, 2.5, True),
        RewiringSource(N, 40, 1.0, 1.0, False),
    )
    updates = 150

    @jax.jit
    def run(conn, key):
        def body(conn, k):
            # New synapses are potentiated (0.2 >= 0.1): with p_elim_potentiated = 0 none is
            # eliminated, so the formations are exactly the synapses that exist at the end.
            conn, counts = bamford_rewire(
                conn, k, side=SIDE, sources=sources, p_elim_potentiated=0.0
            )
            return conn, counts.formed

        return jax.lax.scan(body, conn, jr.split(key, updates))

    conn, formed = run(_empty_projection(2 * N, N), jr.key(3))
    formed = np.asarray(formed).sum(axis=0)  # [sources, bins]
    d2_all, _ = _d2_levels(SIDE)
    bins = formed.shape[1]
    b_all = np.minimum(np.sqrt(d2_all).astype(int), bins - 1)
    for s, source in enumerate(sources):
        p = source.p_peak * np.exp(-d2_all / (2 * source.sigma**2))
        if not source.autapses:
            p[d2_all == 0] = 0.0
        # Each attempt picks a uniform target: P(form at bin b) = sum_{offsets in b} p / n.
        expected = np.bincount(b_all, weights=p, minlength=bins) / N * updates * source.attempts
        stat, dof = _chi_square(formed[s], expected)
        assert stat < chi2.isf(1e-4, dof), (s, formed[s], expected)
    # The histogram agrees with the synapses that now exist (nothing was there to remove).
    pre, post = _edges(conn)
    assert formed.sum() == pre.size
    ff = pre < N
    lat_pre = pre[~ff] - N
    assert not np.any(lat_pre == post[~ff])  # no autapses
    d = np.sqrt(_pair_d2(pre[ff], post[ff], SIDE))
    np.testing.assert_array_equal(
        np.bincount(np.minimum(d.astype(int), bins - 1), minlength=bins), formed[0]
    )


def test_rewiring_elimination_probability():
    # Rows 0..n-1 hold 64 targets each (a quarter of the layer): an attempt finds a synapse
    # with probability 1/4 and eliminates it with probability 1 below the weight threshold,
    # 0.5 (here) above it.
    rng = np.random.default_rng(0)
    post = np.stack([np.sort(rng.choice(N, 64, replace=False)) for _ in range(N)])
    post = jnp.asarray(np.concatenate([post, np.full((N, 64), N)]), jnp.int32)
    conn = jp.RaggedConnectivity(post, {"weight": jnp.zeros(post.shape)}, None, N)
    conn = conn.with_column_view(160)
    sources = (RewiringSource(0, 20, 1e-9, 1.0, True),)  # formation practically never

    @jax.jit
    def eliminated(weight, keys):
        live = eqx.tree_at(lambda c: c.synapses["weight"], conn, jnp.where(conn.alive, weight, 0))

        def one(key):
            _, counts = bamford_rewire(
                live, key, side=SIDE, sources=sources, p_elim_potentiated=0.5
            )
            return counts.eliminated.sum()

        return jax.vmap(one)(keys)

    keys = jr.split(jr.key(5), 100)
    for weight, p_elim in ((0.05, 1.0), (0.2, 0.5)):
        counts = np.asarray(eliminated(jnp.float32(weight), keys))
        expected = 20 * 0.25 * p_elim
        assert abs(counts.mean() - expected) < 5 * math.sqrt(expected / keys.shape[0])


def test_in_degree_cap_holds_exactly():
    sources = (RewiringSource(0, 100, 1.0, 3.0, True),)
    conn = _empty_projection(N, N, capacity=64, column_capacity=3)

    @jax.jit
    def run(conn, key):
        def body(conn, k):
            conn, counts = bamford_rewire(conn, k, side=SIDE, sources=sources)
            return conn, counts.refused

        return jax.lax.scan(body, conn, jr.split(key, 40))

    conn, refused = run(conn, jr.key(0))
    assert int(np.asarray(refused).sum()) > 0  # the cap was reached and refused additions
    assert np.bincount(_edges(conn)[1], minlength=N).max() <= 3
    jp.RaggedConnectivity(conn.post, conn.synapses, conn.column, conn.n_post)


def test_invariants_hold_after_many_rewiring_steps(monkeypatch):
    monkeypatch.setattr(topographic, "_PAIRWISE_MAX_ATTEMPTS", 1)  # the sorted bookkeeping
    model = TopographicMap(scale=1)
    state = jax.jit(model.init)(jr.key(1))
    initial = int(state.afferent.num_synapses)

    @jax.jit
    def run(state, key):
        def body(state, k):
            k_w, k_r = jr.split(k)
            # Random weights, as STDP would leave them, so both elimination branches occur.
            aff = state.afferent
            w = jr.uniform(k_w, aff.weight.shape, maxval=0.2)
            aff = eqx.tree_at(lambda c: c.synapses["weight"], aff, jnp.where(aff.alive, w, 0.0))
            state, counts = model.rewire(state._replace(afferent=aff), k_r)
            return state, (counts.formed.sum(), counts.eliminated.sum())

        return jax.lax.scan(body, state, jr.split(key, 100))

    state, (formed, eliminated) = run(state, jr.key(2))
    aff = state.afferent
    assert int(np.sum(formed)) > 20 and int(np.sum(eliminated)) > 10
    assert int(aff.num_synapses) == initial + int(np.sum(formed)) - int(np.sum(eliminated))
    # Rebuilding the module re-runs every invariant check; the column view equals a rebuild.
    rebuilt = jp.RaggedConnectivity(aff.post, aff.synapses, aff.column, aff.n_post)
    fresh = rebuilt.rebuild_column_view()
    for view in (aff.column, fresh.column):
        assert view is not None
    a = np.sort(np.asarray(aff.column.pre_slot), axis=1)
    b = np.sort(np.asarray(fresh.column.pre_slot), axis=1)
    np.testing.assert_array_equal(a, b)
    pre, post = _edges(aff)
    assert not np.any((pre >= N) & (pre - N == post))  # still no autapses


# -- input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1, 2])
def test_input_rates_match_the_formula(scale):
    model = TopographicMap(scale=scale)
    side = model.side
    centre = jnp.array([3, 14], jnp.int32)
    rates = np.asarray(model.input_rates(centre))
    x, y = np.arange(side * side) % side, np.arange(side * side) // side
    dx = np.minimum(np.abs(x % 16 - 3), 16 - np.abs(x % 16 - 3))
    dy = np.minimum(np.abs(y % 16 - 14), 16 - np.abs(y % 16 - 14))
    np.testing.assert_allclose(rates, 5.0 + 152.8 * np.exp(-(dx**2 + dy**2) / 8.0), rtol=1e-5)
    assert rates.max() == pytest.approx(157.8) and rates.argmax() == 14 * side + 3


def test_input_spikes_are_bernoulli_at_the_rates():
    model = TopographicMap(scale=1)
    draw = jax.jit(jax.vmap(model.input_spikes))
    spikes, centres = draw(jr.split(jr.key(0), 300))
    spikes, centres = np.asarray(spikes), np.asarray(centres)
    assert set(np.unique(centres)) == set(range(16))  # the stimulus jumps over the whole block
    # Per neuron, spikes in the frame of its stimulus: compare with 1 - exp(-r dt) at each
    # distance from the stimulus.
    p = np.asarray(jax.vmap(lambda c: -jnp.expm1(-model.input_rates(c) * 1e-4))(centres))
    expected = p.sum(axis=0) * spikes.shape[1]  # [n]
    observed = spikes.sum(axis=(0, 1))
    z = (observed - expected) / np.sqrt(expected)
    assert np.abs(z).max() < 5 and abs(z.mean()) < 0.5
    # Rate at the peak and at the baseline, pooled (Hz).
    steps = spikes.shape[0] * spikes.shape[1]
    assert spikes.sum() / steps / N / 1e-4 == pytest.approx(p.mean() / 1e-4, rel=0.02)


# -- map quality ----------------------------------------------------------------------------


def _ff_from_edges(pre, post, weight, side=SIDE, capacity=64):
    n = side * side
    return jp.from_edges(
        np.asarray(pre),
        np.asarray(post),
        np.asarray(weight, np.float32),
        n_pre=n,
        n_post=n,
        capacity=capacity,
    )


def test_map_quality_on_known_maps():
    target = np.arange(N)
    x, y = target % SIDE, target // SIDE
    # Perfect map: every target receives its own position only.
    perfect = _ff_from_edges(target, target, np.full(N, 0.2))
    q = map_quality(np.asarray(perfect.post), np.asarray(perfect.weight), SIDE)
    assert q.mean_distance == pytest.approx(0.0, abs=1e-9)
    assert q.mean_spread == pytest.approx(0.0, abs=1e-9)
    # Shifted by (-2, +1) on the torus (across the seam for some): distance sqrt(5).
    source = ((y + 1) % SIDE) * SIDE + (x - 2) % SIDE
    shifted = _ff_from_edges(source, target, np.full(N, 0.2))
    q = map_quality(np.asarray(shifted.post), np.asarray(shifted.weight), SIDE)
    np.testing.assert_allclose(q.distance, math.sqrt(5.0), atol=1e-9)
    # Two inputs at x - 1 and x + 1 (weights 1:3): centre x + 0.5, spread sd on x, 0 on y.
    left = y * SIDE + (x - 1) % SIDE
    right = y * SIDE + (x + 1) % SIDE
    two = _ff_from_edges(
        np.concatenate([left, right]),
        np.concatenate([target, target]),
        np.concatenate([np.full(N, 0.05), np.full(N, 0.15)]),
    )
    q = map_quality(np.asarray(two.post), np.asarray(two.weight), SIDE)
    np.testing.assert_allclose((q.centre[:, 0] - x + 8) % 16 - 8, 0.5, atol=1e-9)
    np.testing.assert_allclose(q.spread, 0.5 * math.sqrt(0.75), atol=1e-9)  # (sx + 0) / 2
    assert q.empty == 0


def test_displacement_maps_of_the_initial_rule():
    conn = distance_dependent_connectivity(jr.key(0), SIDE, p_peak=1.0, sigma=1.0, autapses=False)
    maps = displacement_maps(np.asarray(conn.post), np.asarray(conn.weight), SIDE)
    r = maps["offsets"]
    assert maps["probability"].shape == (r.size, r.size)
    assert maps["probability"][8, 8] == 0.0  # no autapses
    assert maps["radial_distance"][1] == 1.0
    assert maps["radial_probability"][1] == pytest.approx(math.exp(-0.5), abs=0.06)
    assert maps["probability"].sum() * N == int(conn.num_synapses)


# -- the whole model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_runs():
    """Two seeds together (vmap) and each seed alone, 2 stimulus intervals, records every 1."""
    model = TopographicMap(scale=1)
    together = run_topographic(model, duration_s=0.04, seeds=[0, 1], record_every_s=0.02)
    alone = [
        run_topographic(model, duration_s=0.04, seeds=[s], record_every_s=0.02) for s in (0, 1)
    ]
    return together, alone


def test_vmap_over_seeds_equals_separate_runs(short_runs):
    together, alone = short_runs
    for b, single in enumerate(alone):
        np.testing.assert_array_equal(together["final"]["post"][b], single["final"]["post"][0])
        np.testing.assert_allclose(
            together["final"]["weight"][b], single["final"]["weight"][0], atol=1e-6
        )
        assert (
            together["records"][b][-1]["ff"]["synapses"]
            == single["records"][0][-1]["ff"]["synapses"]
        )
        for chunk_t, chunk_s in zip(together["chunks"], single["chunks"], strict=True):
            np.testing.assert_array_equal(chunk_t.target_spikes[b], chunk_s.target_spikes[0])
    assert not np.array_equal(together["final"]["post"][0], together["final"]["post"][1])


def test_short_run_is_plausible(short_runs):
    together, _ = short_runs
    assert together["times_s"] == pytest.approx([0.0, 0.02, 0.04])
    chunk = together["chunks"][0]
    input_rate = chunk.input_spikes.sum(axis=1) / N / 0.02
    assert np.all((input_rate > 12) & (input_rate < 30))  # 20 Hz on average
    assert np.all(chunk.rewiring.attempts == 20 * 10)  # 10 per block and ms, 20 ms
    assert np.all(chunk.target_spikes.sum(axis=1) > 0)
    timing = together["timing"]
    assert timing["seeds"] == 2 and timing["model_s"] == pytest.approx(0.04)


@functools.cache
def _default_init():
    """The default model's init, jitted once for every test that starts from it (a fresh
    TopographicMap().init is a new function to jit, compiled again)."""
    return jax.jit(TopographicMap().init)


def test_spike_block_size_does_not_change_the_simulation():
    # One spiking neuron per block forces the exact fallback loop on most steps: the result
    # must equal the run with the default blocks (no spike dropped or handled twice).
    state = _default_init()(jr.key(4))
    results = []
    for max_spikes in (1, None):
        model = TopographicMap(max_spikes=max_spikes)
        run = jax.jit(lambda s, model=model: model.run(s, num_intervals=1, rewiring=False))
        results.append(run(state))
    (a, rec_a), (b, rec_b) = results
    np.testing.assert_array_equal(np.asarray(rec_a.target_spikes), np.asarray(rec_b.target_spikes))
    assert int(rec_a.overflow_steps) > 0 and int(rec_a.target_spikes.sum()) > 0
    np.testing.assert_allclose(
        np.asarray(a.afferent.weight), np.asarray(b.afferent.weight), atol=1e-7
    )
    np.testing.assert_allclose(np.asarray(a.neurons.v), np.asarray(b.neurons.v), atol=1e-5)


@pytest.fixture(scope="module")
def whole_block_run():
    """The initial state of key 5 and the run from it that delivers and learns from whole
    blocks (spike_head=None, the default at scale 1): the reference of every spike_head
    case, compiled and run once."""
    with jax.numpy_dtype_promotion("strict"):
        state = _default_init()(jr.key(5))
        model = TopographicMap(spike_head=None)
        assert model.spike_heads[1] == model.spike_block
        return state, jax.jit(lambda s: model.run(s, num_intervals=2))(state)


@pytest.mark.parametrize("spike_head", [1, 2])
def test_spike_head_does_not_change_the_simulation(spike_head, whole_block_run):
    # Small heads make most spiking steps take the second part of the blocks: the result must
    # equal the run that delivers and learns from whole blocks (the default at scale 1).
    state, (b, rec_b) = whole_block_run
    model = TopographicMap(spike_head=spike_head)
    assert model.spike_heads[1] == spike_head
    a, rec_a = jax.jit(lambda s: model.run(s, num_intervals=2))(state)
    np.testing.assert_array_equal(np.asarray(rec_a.target_spikes), np.asarray(rec_b.target_spikes))
    assert int(rec_a.target_spikes.sum()) > 0
    np.testing.assert_array_equal(np.asarray(a.afferent.post), np.asarray(b.afferent.post))
    np.testing.assert_allclose(
        np.asarray(a.afferent.weight), np.asarray(b.afferent.weight), atol=1e-7
    )
    np.testing.assert_allclose(np.asarray(a.neurons.v), np.asarray(b.neurons.v), atol=1e-5)


def test_model_parameter_validation():
    with pytest.raises(ValueError, match="scale"):
        TopographicMap(scale=0)
    with pytest.raises(ValueError, match="multiple of dt"):
        TopographicMap(rewiring_interval=0.25)
    with pytest.raises(ValueError, match="spike_head"):
        TopographicMap(spike_head=0)
    with pytest.raises(ValueError, match="max_spikes"):
        TopographicMap(max_spikes=2.5)
    with pytest.raises(ValueError, match="duration_s"):
        run_topographic(TopographicMap(), duration_s=0.0)
    bamford = TopographicMap.bamford()
    assert bamford.in_degree_cap == 32 and bamford.in_degree_limit == 32
    assert bamford.p_elim_depressed == 0.0245


# -- the command line ------------------------------------------------------------------------


def test_cli_writes_figures_and_metrics(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["topomap", "--duration", "0.04", "--record-every", "0.02", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "RF centre distance from ideal" in text and "real-time factor" in text
    for name in ("displacement", "degrees", "rewiring", "receptive_fields", "map_quality"):
        path = out / f"{name}.png"
        assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["times_s"] == pytest.approx([0.0, 0.02, 0.04])
    series = metrics["per_seed"][0]
    assert len(series["synapses_ff"]) == 3 and len(series["formed_ff"]) == 2
    assert metrics["summary"]["rf_distance"]["initial"]["mean"] > 0
    assert metrics["expected_degree"]["lat"] == pytest.approx(2 * math.pi - 1, abs=0.01)


@pytest.mark.parametrize(
    "argv",
    [
        ["topomap", "--scale", "0"],
        ["topomap", "--duration", "0"],
        ["topomap", "--duration", "-1"],
        ["topomap", "--seeds", "0"],
        ["topomap", "--scale", "x"],
    ],
)
def test_cli_bad_arguments_exit_nonzero(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code != 0
    assert "error" in capsys.readouterr().err


def test_cli_unwritable_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["topomap", "--out", str(blocker / "sub"), "--duration", "0.02"]) != 0
    assert "cannot write to output folder" in capsys.readouterr().err


@pytest.mark.slow
def test_example_runs():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(root / "examples" / "topographic_map.py"), "--duration", "0.04"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "RF distance from ideal" in result.stdout
