"""Training and simulation on several devices, against one device as the reference.

The devices are CPU host devices: tests/conftest.py starts JAX with
``--xla_force_host_platform_device_count=4``. Data-parallel training must give the
single-device result: the same connectivity, signs, keys and rewiring counts exactly, and the
same weights, optimiser moments and diagnostics up to the order of the float sums over the
batch; its outputs must be replicated (identical on every device).
"""

import functools
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from jaxplastic import RaggedConnectivity
from jaxplastic.learning import deep_r, eprop, trainer, with_padding
from jaxplastic.models import TopographicMap, TopographicState, recurrent_classifier
from jaxplastic.parallel import (
    ShardedTopographicMap,
    data_mesh,
    data_parallel,
    data_parallel_rule,
    data_parallel_trainer,
    replicate,
    shard_batch,
)

from .helpers import tree_allclose

N_IN, N_HIDDEN, N_OUT, BATCH, STEPS = 24, 24, 3, 8, 25
# Large steps and a strong L1 term, so that DEEP R rewires many synapses every step.
OPTIMIZER = optax.chain(deep_r.l1(0.05), optax.adam(5e-2))


def _cpu_devices(n: int):
    try:
        devices = jax.devices("cpu")
    except RuntimeError:  # JAX_PLATFORMS leaves the CPU backend out (e.g. "cuda")
        pytest.skip("needs JAX's CPU backend, which JAX_PLATFORMS leaves out")
    if len(devices) < n:
        pytest.fail(
            f"expected at least {n} CPU devices (tests/conftest.py sets XLA_FLAGS="
            f"--xla_force_host_platform_device_count=4 before JAX starts), got {len(devices)}"
        )
    return devices[:n]


def _mesh(n: int):
    return data_mesh(_cpu_devices(n))


def _model(key):
    model = recurrent_classifier(
        N_IN, N_OUT, n_hidden=N_HIDDEN, p_in=0.2, p_rec=0.2, weight_gain=3.0, key=key
    )
    return with_padding(model, 2.0)


def _batches(key, n):
    for k in jr.split(key, n):
        spikes = jr.bernoulli(k, 0.2, (BATCH, STEPS, N_IN)).astype(jnp.uint8)
        yield spikes, jnp.arange(BATCH, dtype=jnp.int32) % N_OUT


def _key_data(tree):
    def data(x):
        if eqx.is_array(x) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jr.key_data(x)
        return x

    return jax.tree.map(data, tree)


def _ints(tree):
    """The integer and key leaves (connectivity, signs, keys, counts): must match exactly."""
    leaves = jax.tree.leaves(eqx.filter(_key_data(tree), eqx.is_array))
    return [np.asarray(x) for x in leaves if not jnp.issubdtype(x.dtype, jnp.inexact)]


def _floats(tree):
    return eqx.filter(_key_data(tree), eqx.is_inexact_array)


def _assert_replicated(tree, mesh):
    """Every array is replicated on ``mesh`` and its copies on all devices are identical."""
    for x in jax.tree.leaves(_key_data(eqx.filter(tree, eqx.is_array))):
        assert set(x.sharding.device_set) == set(mesh.devices.flat)
        assert x.sharding.is_fully_replicated
        copies = [np.asarray(s.data) for s in x.addressable_shards]
        assert len(copies) == mesh.size
        for copy in copies[1:]:
            np.testing.assert_array_equal(copy, copies[0])


def _train(step, model, state, batches):
    infos = []
    for batch in batches:
        model, state, info = step(model, state, batch)
        infos.append(info)
    return model, state, infos


# -- data-parallel training -----------------------------------------------------------------


@pytest.fixture(scope="module")
def deep_r_reference():
    """Six DEEP R steps on one device: the reference of the data-parallel runs."""
    model = _model(jr.key(0))
    batches = list(_batches(jr.key(1), 6))
    single = trainer("deep_r", optimizer=OPTIMIZER)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats and int32 counts
        result = _train(single.step, model, single.init(model, key=jr.key(2)), batches)
    return model, batches, result


@pytest.mark.standard_promotion  # optax mixes Python floats and int32 counts
@pytest.mark.parametrize("num_devices", [2, 4])
def test_deep_r_data_parallel_equals_one_device(num_devices, deep_r_reference):
    model, batches, (ref_model, ref_state, ref_infos) = deep_r_reference
    mesh = _mesh(num_devices)
    if num_devices == 4:
        train = data_parallel_trainer("deep_r", mesh=mesh, optimizer=OPTIMIZER)
        init, step = train.init, train.step
    else:  # the same, from its parts; the step must compile once across steps that rewire
        base = trainer("deep_r", optimizer=OPTIMIZER, rule=data_parallel_rule())
        step = data_parallel(eqx.debug.assert_max_traces(base.step, max_traces=1), mesh=mesh)

        def init(model, *, key):
            return replicate(base.init(model, key=key), mesh)

    state = init(model, key=jr.key(2))
    _assert_replicated(state, mesh)
    sharded = [shard_batch(batch, mesh) for batch in batches]
    assert sharded[0][0].sharding.spec == PartitionSpec("data")
    got_model, got_state, got_infos = _train(step, model, state, sharded)

    # The rewiring happened, every step, in both projections.
    assert all(int(i.input.removed) > 0 and int(i.recurrent.removed) > 0 for i in ref_infos)
    # Connectivity, signs, keys and rewiring counts: exactly equal.
    for a, b in zip(_ints((got_model, got_state)), _ints((ref_model, ref_state)), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_ints(got_infos), _ints(ref_infos), strict=True):
        np.testing.assert_array_equal(a, b)
    # Weights, Adam moments, losses: equal up to the order of the float sums over the batch
    # (a relative 1e-7 per step, grown over six steps of Adam with a large learning rate).
    tree_allclose(
        _floats((got_model, got_state)), _floats((ref_model, ref_state)), rtol=1e-4, atol=1e-5
    )
    tree_allclose(_floats(got_infos), _floats(ref_infos), rtol=1e-5, atol=1e-6)
    # The result lives on every device, identically.
    _assert_replicated((got_model, got_state, got_infos[-1]), mesh)


@pytest.mark.standard_promotion
def test_static_data_parallel_equals_one_device_and_needs_the_reduction():
    model = _model(jr.key(3))
    batches = list(_batches(jr.key(4), 3))
    single = trainer("static", learning_rate=1e-2)
    ref_model, _, ref_infos = _train(single.step, model, single.init(model, key=jr.key(5)), batches)
    mesh = _mesh(4)
    train = data_parallel_trainer("static", mesh=mesh, learning_rate=1e-2)
    got_model, _, got_infos = _train(train.step, model, train.init(model, key=jr.key(5)), batches)
    np.testing.assert_array_equal(got_model.input.post, ref_model.input.post)
    tree_allclose(_floats(got_model), _floats(ref_model), rtol=1e-4, atol=1e-5)
    tree_allclose(_floats(got_infos), _floats(ref_infos), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got_model.input.weight, model.input.weight)  # it trained

    # The same step with the plain rule: each device sees only its slice, so the copies
    # differ from each other and from one device. The checks above can therefore fail.
    apart, _, _ = data_parallel(single.step, mesh=mesh)(
        model, single.init(model, key=jr.key(5)), batches[0]
    )
    ref_one, _, _ = single.step(model, single.init(model, key=jr.key(5)), batches[0])
    copies = [np.asarray(s.data) for s in apart.input.weight.addressable_shards]
    assert not np.allclose(copies[0], copies[1])
    assert not np.allclose(copies[0], ref_one.input.weight, atol=1e-4)


def test_data_parallel_rule_gives_the_whole_batch_gradients():
    # Factorized e-prop here; the online mode is what the trainer tests above run.
    model = _model(jr.key(6))
    spikes, labels = next(_batches(jr.key(7), 1))
    rule = eprop(mode="factorized")
    ref_grads, ref_info = rule.gradients(model, spikes, labels=labels)

    mesh = _mesh(4)
    reduced = data_parallel_rule(rule)
    spec = PartitionSpec("data")
    dynamic, static = eqx.partition(model, eqx.is_array)

    def local(dynamic, spikes, labels):
        return reduced.gradients(eqx.combine(dynamic, static), spikes, labels=labels)

    grads, info = jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(PartitionSpec(), spec, spec),
            out_specs=PartitionSpec(),
            check_vma=False,
        )
    )(dynamic, spikes, labels)
    tree_allclose(grads, ref_grads, rtol=1e-5, atol=1e-5)
    tree_allclose(info, ref_info, rtol=1e-5, atol=1e-6)  # prediction gathered in batch order
    assert float(jnp.abs(ref_grads.input.synapses["weight"]).max()) > 0


# One process of a two-process run: 2 CPU devices each, 4 in all, the batch split by process.
_WORKER = """
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
jax.distributed.initialize(
    coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2])
)
import numpy as np
from jaxplastic.parallel import data_mesh, data_parallel_trainer, shard_batch
from tests.test_parallel import OPTIMIZER, _batches, _model
import jax.random as jr

mesh = data_mesh()  # every device of both processes
train = data_parallel_trainer("deep_r", mesh=mesh, optimizer=OPTIMIZER)
model = _model(jr.key(0))  # the same key on every process: the same model
state = train.init(model, key=jr.key(2))
mine = slice(jax.process_index() * 4, jax.process_index() * 4 + 4)  # this process's examples
with jax.numpy_dtype_promotion("standard"):
    for spikes, labels in _batches(jr.key(1), 3):
        batch = shard_batch((np.asarray(spikes)[mine], np.asarray(labels)[mine]), mesh)
        model, state, info = train.step(model, state, batch)
local = lambda x: np.asarray(x.addressable_shards[0].data)
print(json.dumps({
    "devices": [jax.device_count(), jax.local_device_count()],
    "post": local(model.input.post).tolist(),
    "weight": local(model.input.weight).tolist(),
    "loss": float(local(info.loss)),
}))
"""


@pytest.mark.slow
@pytest.mark.standard_promotion
def test_two_processes_with_jax_distributed_equal_one_device(tmp_path):
    # The multi-host recipe of docs/parallel.md, on one machine: two processes joined by
    # jax.distributed.initialize, each feeding its half of every batch.
    import json
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        address = f"localhost:{sock.getsockname()[1]}"
    worker = tmp_path / "worker.py"
    worker.write_text(_WORKER)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), address, str(i)],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]

    model = _model(jr.key(0))
    single = trainer("deep_r", optimizer=OPTIMIZER)
    ref, _, info = _train(
        single.step, model, single.init(model, key=jr.key(2)), _batches(jr.key(1), 3)
    )
    for result in results:
        assert result["devices"] == [4, 2]
        np.testing.assert_array_equal(np.array(result["post"]), np.asarray(ref.input.post))
        np.testing.assert_allclose(
            np.array(result["weight"]), np.asarray(ref.input.weight), rtol=1e-4, atol=1e-5
        )
        assert result["loss"] == pytest.approx(float(info[-1].loss), rel=1e-5)


def test_bad_batch_and_mesh_errors():
    mesh = _mesh(4)
    spikes = jnp.zeros((6, STEPS, N_IN), jnp.uint8)
    labels = jnp.zeros((6,), jnp.int32)
    with pytest.raises(ValueError, match=r"batch of 6 examples is not divisible by the 4 devices"):
        shard_batch((spikes, labels), mesh)
    train = data_parallel_trainer("static", mesh=mesh)
    model = _model(jr.key(14))
    with pytest.raises(ValueError, match=r"batch of 6 examples is not divisible by the 4 devices"):
        train.step(model, train.init(model, key=jr.key(15)), (spikes, labels))
    with pytest.raises(ValueError, match=r"leading \(example\) axis"):
        shard_batch((spikes, labels[:4]), mesh)
    with pytest.raises(ValueError, match=r"expected one of the mesh axes \('data',\), got 'batch'"):
        data_parallel_trainer("static", mesh=mesh, axis="batch")
    with pytest.raises(TypeError, match="expected a jax.sharding.Mesh"):
        data_parallel(functools.partial(lambda m, s, b: (m, s, b)), mesh="data")


# -- model-parallel topographic map ---------------------------------------------------------


def _canonical(conn):
    """A projection's synapses as ``(post, weight)`` with each row's targets ascending."""
    post = np.asarray(conn.post)
    weight = np.asarray(conn.weight)
    order = np.argsort(post, axis=1, kind="stable")
    return np.take_along_axis(post, order, axis=1), np.take_along_axis(weight, order, axis=1)


def _assert_same_network(single, sharded_state, sharded):
    """The unsharded state equals the single-device one: synapses, weights, columns, neurons,
    traces; all bit for bit."""
    got = sharded.unshard(sharded_state)
    for a, b in zip(_canonical(got.afferent), _canonical(single.afferent), strict=True):
        np.testing.assert_array_equal(a, b)
    # The column view holds the same synapses (its order inside a column is not meaningful).
    in_degree = np.bincount(
        np.asarray(got.afferent.post).ravel(), minlength=single.afferent.n_post + 1
    )[:-1]
    column_sizes = (
        np.asarray(got.afferent.column.pre_slot) != got.afferent.n_pre * got.afferent.capacity
    ).sum(axis=1)
    np.testing.assert_array_equal(column_sizes, in_degree)
    for a, b in zip(
        jax.tree.leaves((got.neurons, got.pre_trace, got.post_trace, got.step)),
        jax.tree.leaves((single.neurons, single.pre_trace, single.post_trace, single.step)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(jr.key_data(got.key), jr.key_data(single.key))


@eqx.filter_jit
def _run_single(model, state):
    return model.run(state, num_intervals=2)


@pytest.mark.parametrize("num_devices", [2, 4])
def test_sharded_topographic_map_equals_one_device(num_devices):
    # A threshold above every weight: every connected candidate is eliminated, so the run
    # forms and eliminates synapses every millisecond. (20 attempts per update, compared
    # pairwise; the test below takes bamford_rewire's other path, attempts sorted by row.)
    model = TopographicMap(scale=1, weight_threshold=0.25)
    mesh = data_mesh(_cpu_devices(num_devices), axis="model")
    sharded = ShardedTopographicMap(model, mesh, axis="model")
    single = model.init(jr.key(0))
    state = sharded.init(jr.key(0))
    _assert_same_network(single, state, sharded)
    assert state.afferent.post.sharding.spec == PartitionSpec("model")
    assert state.afferent.post.addressable_shards[0].data.shape[1:] == (2 * model.n, 64)
    formed = eliminated = spikes = 0
    for _ in range(3):  # 120 ms: 1,200 steps, 120 rewiring updates
        single, ref = _run_single(model, single)
        state, record = sharded.run(state, num_intervals=2)
        _assert_same_network(single, state, sharded)
        for a, b in zip(jax.tree.leaves(record), jax.tree.leaves(ref), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        formed += int(ref.rewiring.formed.sum())
        eliminated += int(ref.rewiring.eliminated.sum())
        spikes += int(ref.target_spikes.sum())
    assert formed > 10 and eliminated > 10 and spikes > 50, (formed, eliminated, spikes)


def _crowded_state(model, key):
    """Nearly full rows (5 to 8 of 8 slots) and columns (the fullest at the in-degree cap),
    random weights around the elimination threshold: many refusals of both kinds."""
    rng = np.random.default_rng(0)
    n = model.n
    post = np.full((2 * n, model.capacity), n, np.int32)
    weight = np.zeros((2 * n, model.capacity), np.float32)
    in_degree = np.zeros(n, int)
    for row in range(2 * n):
        choices = np.flatnonzero(in_degree < model.in_degree_limit)
        choices = choices[choices != row - n]  # no autapse in the lateral rows
        length = min(rng.integers(5, model.capacity + 1), choices.size)
        post[row, :length] = rng.choice(choices, length, replace=False)
        weight[row, :length] = rng.uniform(0.0, 0.2, length)
        in_degree[post[row, :length]] += 1
    conn = RaggedConnectivity(jnp.asarray(post), {"weight": jnp.asarray(weight)}, None, n)
    conn = conn.with_column_view(model.in_degree_limit)
    return TopographicState(
        afferent=conn,
        neurons=model.neuron.init(n, key=key),
        pre_trace=jnp.zeros(2 * n),
        post_trace=jnp.zeros(n),
        key=key,
        step=jnp.zeros((), jnp.int32),
    )


def test_sharded_rewiring_refuses_as_one_device():
    # Wide formation kernels and 256 attempts per projection: dozens of formations per
    # update into full rows and columns, so the greedy acceptance in attempt order decides.
    model = TopographicMap(
        scale=1, attempts_per_block=128, capacity=8, in_degree_cap=16,
        ff_peak=1.0, ff_sigma=6.0, lat_peak=1.0, lat_sigma=6.0,
    )  # fmt: skip
    state = _crowded_state(model, jr.key(1))
    in_degree = np.bincount(np.asarray(state.afferent.post).ravel())[:-1]
    assert (in_degree == 16).sum() > 50 and (state.afferent.row_lengths == 8).sum() > 50
    sharded = ShardedTopographicMap(model, data_mesh(_cpu_devices(4), axis="model"), "model")
    sharded_state = sharded.shard(state)
    rewire = eqx.filter_jit(model.rewire)
    totals = np.zeros(3, int)
    for key in jr.split(jr.key(2), 4):
        state, ref = rewire(state, key)
        sharded_state, counts = sharded.rewire(sharded_state, key)
        for a, b in zip(jax.tree.leaves(counts), jax.tree.leaves(ref), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        _assert_same_network(state, sharded_state, sharded)
        totals += [int(ref.formed.sum()), int(ref.eliminated.sum()), int(ref.refused)]
    assert (totals > 5).all(), totals  # formations, eliminations and refusals all happened


def test_sharded_topographic_map_errors():
    mesh = data_mesh(_cpu_devices(4), axis="model")
    with pytest.raises(ValueError, match="expected one of the mesh axes"):
        ShardedTopographicMap(TopographicMap(scale=1), mesh, axis="data")
    three = data_mesh(_cpu_devices(3), axis="model")
    with pytest.raises(ValueError, match="256 target neurons are not divisible by the 3"):
        ShardedTopographicMap(TopographicMap(scale=1), three, axis="model")
    sharded = ShardedTopographicMap(TopographicMap(scale=1), mesh, axis="model")
    with pytest.raises(ValueError, match="num_intervals"):
        sharded.run(sharded.init(jr.key(0)), num_intervals=0)
