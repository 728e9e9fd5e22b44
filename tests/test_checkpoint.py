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
