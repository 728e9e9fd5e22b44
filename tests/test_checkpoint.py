import json
import zipfile

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import jaxplastic as jp
from jaxplastic._checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

from .helpers import assert_trees_equal


def _state(seed=0, n=20):
    conn = jp.fixed_probability(
        jr.key(seed),
        n,
        n,
        0.2,
        capacity=10,
        column_capacity=12,
        weight=jax.nn.initializers.normal(1.0),
    )
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optax.adam(1e-3).init(conn.weight)
    return {
        "conn": conn,
        "opt": opt_state,
        "key": jr.key(seed + 7),
        "step": jnp.int32(3),
        "label": "static",
    }


def test_round_trip_keeps_every_leaf_and_the_metadata(tmp_path):
    state = _state()
    path = save_checkpoint(tmp_path / "epoch_0001", state, metadata={"epoch": 1, "acc": 0.5})
    assert path.name == "epoch_0001.npz"
    loaded, meta = load_checkpoint(path, _state(seed=1))
    assert_trees_equal(loaded, state)
    assert meta == {"epoch": 1, "acc": 0.5}
    assert loaded["label"] == "static"  # non-array leaves come from the template
    # The PRNG key still works as a key.
    assert jr.uniform(loaded["key"]).shape == ()
    # The connectivity passes its invariant checks again.
    c = loaded["conn"]
    jp.RaggedConnectivity(c.post, c.synapses, c.column, c.n_post)


def test_mismatched_template_is_refused_with_the_leaf_named(tmp_path):
    path = save_checkpoint(tmp_path / "a.npz", _state(n=20))
    with pytest.raises(CheckpointError, match=r"leaf .*post.* in the checkpoint"):
        load_checkpoint(path, _state(n=21))
    other = {"w": jnp.zeros(3)}
    with pytest.raises(CheckpointError, match="different model or configuration"):
        load_checkpoint(path, other)


def test_corruption_truncation_and_version_are_detected(tmp_path):
    state = _state()
    path = save_checkpoint(tmp_path / "a.npz", state)
    raw = bytearray(path.read_bytes())
    # Flip a byte inside the last stored array (the zip directory sits after it).
    with zipfile.ZipFile(path) as zf:
        info = zf.infolist()[-1]
    offset = info.header_offset + 30 + len(info.filename) + info.file_size - 1
    raw[offset] ^= 0xFF
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupted|unreadable"):
        load_checkpoint(bad, state)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        load_checkpoint(truncated, state)
    with zipfile.ZipFile(path) as zf:
        header = json.loads(zf.read("header.json"))
        members = {n: zf.read(n) for n in zf.namelist() if n != "header.json"}
    header["version"] = 99
    future = tmp_path / "future.npz"
    with zipfile.ZipFile(future, "w") as zf:
        zf.writestr("header.json", json.dumps(header))
        for n, b in members.items():
            zf.writestr(n, b)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(future, state)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.npz", state)


def test_a_crash_mid_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    state = _state()
    path = save_checkpoint(tmp_path / "latest.npz", state, metadata={"epoch": 1})
    before = path.read_bytes()

    real_save = np.save
    calls = {"n": 0}

    def failing_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state(seed=5), metadata={"epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["latest.npz"]  # no temporary left
    _, meta = load_checkpoint(path, state)
    assert meta == {"epoch": 1}


def test_latest_checkpoint_ignores_temporary_files(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path / "epoch_0001.npz", {"a": jnp.zeros(2)})
    save_checkpoint(tmp_path / "epoch_0002.npz", {"a": jnp.ones(2)})
    (tmp_path / ".epoch_0003.npz.abc.tmp").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "epoch_0002.npz"


def _written_before_free_bits(src, dst):
    """``src`` rewritten as the loader's format was written before column views held their
    free entries as bits: no ``free_bits`` leaves, and the leaf numbers (which count every
    leaf of the flattened tree) of the leaves after each one lower by one."""
    with zipfile.ZipFile(src) as zf:
        header = json.loads(zf.read("header.json"))
        data = {e["name"]: zf.read(e["name"] + ".npy") for e in header["leaves"]}
    number = {e["name"]: int(e["name"].split("_")[1]) for e in header["leaves"]}
    gone = [number[e["name"]] for e in header["leaves"] if e["path"].endswith(".free_bits")]
    assert gone, "the tree has no column view"
    kept = []
    with zipfile.ZipFile(dst, "w") as zf:
        for e in header["leaves"]:
            i = number[e["name"]]
            if i in gone:
                continue
            name = f"leaf_{i - sum(g < i for g in gone):05d}"
            kept.append({**e, "name": name})
            zf.writestr(name + ".npy", data[e["name"]])
        header["leaves"], header["num_leaves"] = kept, header["num_leaves"] - len(gone)
        zf.writestr("header.json", json.dumps(header))
    return dst


def test_checkpoints_without_free_bits_load_with_the_bits_derived(tmp_path):
    state = _state()
    # An ensemble too: column views with a leading network axis.
    state["ensemble"] = jax.tree.map(
        lambda a, b: jnp.stack([a, b]), _state(seed=2)["conn"], _state(seed=3)["conn"]
    )
    # Column views with free entries in the middle of their columns, not only at the end.
    conn = state["conn"]
    state["conn"], _ = jp.remove_synapses(conn, jr.bernoulli(jr.key(5), 0.3, conn.post.shape))
    old = _written_before_free_bits(save_checkpoint(tmp_path / "new", state), tmp_path / "o.npz")
    template = _state(seed=1)
    template["ensemble"] = jax.tree.map(lambda x: jnp.stack([x, x]), template["conn"])
    loaded, _ = load_checkpoint(old, template)
    assert_trees_equal(loaded, state)
    # The derived bits are those the view builds from its pre_slot.
    c = loaded["conn"]
    assert_trees_equal(c.column, jp.ColumnView(c.column.pre_slot, c.column.position))
    jp.RaggedConnectivity(c.post, c.synapses, c.column, c.n_post)


def test_a_missing_leaf_that_cannot_be_derived_is_refused(tmp_path):
    state = _state()
    old = _written_before_free_bits(save_checkpoint(tmp_path / "new", state), tmp_path / "o.npz")
    # A template without a column view: the old checkpoint's column leaves are extra.
    bare = _state(seed=1)
    bare["conn"] = bare["conn"].without_column_view()
    with pytest.raises(CheckpointError, match="different model or configuration"):
        load_checkpoint(old, bare)
    # A checkpoint that lacks another leaf than free_bits is refused as before.
    with zipfile.ZipFile(old) as zf:
        header = json.loads(zf.read("header.json"))
        data = {e["name"]: zf.read(e["name"] + ".npy") for e in header["leaves"]}
    header["leaves"] = [e for e in header["leaves"] if not e["path"].endswith("pre_slot")]
    header["num_leaves"] -= 1
    with zipfile.ZipFile(tmp_path / "worse.npz", "w") as zf:
        for e in header["leaves"]:
            zf.writestr(e["name"] + ".npy", data[e["name"]])
        zf.writestr("header.json", json.dumps(header))
    with pytest.raises(CheckpointError, match="different model or configuration"):
        load_checkpoint(tmp_path / "worse.npz", _state(seed=1))
