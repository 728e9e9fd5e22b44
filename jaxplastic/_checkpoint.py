"""Checkpoints of whole training or simulation states, written atomically.

A checkpoint is one ``.npz`` file: every array leaf of a pytree (connectivity, weights,
optimiser state, PRNG keys, counters) plus a JSON header with the format version, each leaf's
path, shape, dtype and SHA-256, and free-form metadata (epoch, step, configuration). It is
written to a temporary file in the same folder, flushed to disk, then renamed over the
target, so a crash mid-write leaves the previous checkpoint intact. Loading needs a template
pytree of the same structure (its static fields, such as ``n_post``, come from there) and
refuses, with a message naming the leaf, anything that does not match or does not verify.

One leaf may be missing: a :class:`~jaxplastic.ColumnView`'s ``free_bits``, which checkpoints
written before the column view kept its free entries as bits do not hold. It is derived from
the view's ``pre_slot`` (the free entries hold the sentinel), exactly as the view builds it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxplastic._connectivity import ColumnView, _free_bits_of

__all__ = ["CheckpointError", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]

FORMAT = "jaxplastic-checkpoint"
FORMAT_VERSION = 1
_HEADER = "header.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupted, of another format version, or does not match."""


def _leaf_name(path) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def _to_numpy(leaf) -> tuple[np.ndarray, str | None]:
    """Array leaf -> (numpy array, PRNG implementation name for typed keys, else None)."""
    if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        impl = str(jax.random.key_impl(leaf))
        return np.asarray(jax.random.key_data(leaf)), impl
    return np.asarray(leaf), None


def _is_array(leaf) -> bool:
    return isinstance(leaf, jax.Array | np.ndarray | np.generic)


def save_checkpoint(path: str | os.PathLike, tree: Any, *, metadata: dict | None = None) -> Path:
    """Writes every array leaf of ``tree`` to ``path`` atomically.

    Args:
        path: the file to write (``.npz`` is appended if missing); its folder is created.
        tree: any pytree (Modules, NamedTuples, dicts, optax states, typed PRNG keys).
            Non-array leaves (Python scalars, None) are not stored; they come from the
            template when loading.
        metadata: JSON-serialisable information stored beside the arrays.

    Returns:
        The path written.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    entries, arrays = [], {}
    for i, (leaf_path, leaf) in enumerate(leaves):
        if not _is_array(leaf):
            continue
        data, key_impl = _to_numpy(leaf)
        name = f"leaf_{i:05d}"
        arrays[name] = data
        entries.append(
            {
                "name": name,
                "path": _leaf_name(leaf_path),
                "shape": list(data.shape),
                "dtype": str(data.dtype),
                "key_impl": key_impl,
                "sha256": hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest(),
            }
        )
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "num_leaves": len(leaves),
        "leaves": entries,
        "metadata": metadata or {},
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
                zf.writestr(_HEADER, json.dumps(header, indent=1))
                for name, data in arrays.items():
                    buffer = io.BytesIO()
                    np.save(buffer, data, allow_pickle=False)
                    zf.writestr(f"{name}.npy", buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def _read_header(zf: zipfile.ZipFile, path: Path) -> dict:
    try:
        header = json.loads(zf.read(_HEADER))
    except KeyError as exc:
        raise CheckpointError(f"{path}: not a jaxplastic checkpoint (no {_HEADER})") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupted header ({exc})") from exc
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a jaxplastic checkpoint (format {header.get('format')!r})"
        )
    if header.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {header.get('version')}, this jaxplastic "
            f"reads version {FORMAT_VERSION}"
        )
    return header


def load_checkpoint(path: str | os.PathLike, like: Any) -> tuple[Any, dict]:
    """Reads a checkpoint into the structure of ``like``.

    Args:
        path: the checkpoint file.
        like: a template pytree with the same structure, shapes and dtypes (e.g. the freshly
            initialised state); its non-array leaves and static fields are kept.

    Returns:
        ``(tree, metadata)``.

    Raises:
        CheckpointError: the file is missing, unreadable, corrupted (checksum), of another
            format version, or its leaves do not match the template (the message names the
            first leaf that differs and how).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({exc})") from exc
    with zf:
        header = _read_header(zf, path)
        leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
        stored = {e["path"] for e in header["leaves"]}
        derived = {name for name in _free_bits_leaves(like) if name not in stored}
        if header["num_leaves"] != len(leaves) - len(derived):
            raise CheckpointError(
                f"{path}: the checkpoint has {header['num_leaves']} leaves, the template "
                f"{len(leaves)}: it was written for a different model or configuration"
            )
        entries = {int(e["name"].split("_")[1]): e for e in header["leaves"]}
        out = []
        loaded: dict[str, Any] = {}
        skipped = 0  # derived leaves so far: the checkpoint's leaf numbers lag by as many
        for i, (leaf_path, leaf) in enumerate(leaves):
            name = _leaf_name(leaf_path)
            if not _is_array(leaf):
                if i - skipped in entries:
                    raise CheckpointError(f"{path}: leaf {name} is an array in the checkpoint")
                out.append(leaf)
                continue
            if name in derived:
                out.append(_derive_free_bits(path, name, leaf, loaded))
                skipped += 1
                continue
            entry = entries.get(i - skipped)
            if entry is None or entry["path"] != name:
                raise CheckpointError(
                    f"{path}: leaf {i} is {entry and entry['path']!r} in the checkpoint but "
                    f"{name!r} in the template"
                )
            expected, key_impl = _to_numpy(leaf)
            if list(expected.shape) != entry["shape"] or str(expected.dtype) != entry["dtype"]:
                raise CheckpointError(
                    f"{path}: leaf {name} is {entry['dtype']}{tuple(entry['shape'])} in the "
                    f"checkpoint, the template expects {expected.dtype}{expected.shape}"
                )
            try:
                data = np.load(io.BytesIO(zf.read(entry["name"] + ".npy")), allow_pickle=False)
            except (KeyError, ValueError, zipfile.BadZipFile, OSError) as exc:
                raise CheckpointError(f"{path}: leaf {name} is unreadable ({exc})") from exc
            digest = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
            if digest != entry["sha256"]:
                raise CheckpointError(f"{path}: leaf {name} is corrupted (checksum mismatch)")
            if key_impl is not None:
                out.append(jax.random.wrap_key_data(jnp.asarray(data), impl=key_impl))
            else:
                out.append(jnp.asarray(data) if isinstance(leaf, jax.Array) else data)
            if name.rpartition(".")[0] + ".free_bits" in derived:
                loaded[name] = data  # a column view's pre_slot or position, to derive from
    return jax.tree_util.tree_unflatten(treedef, out), header["metadata"]


def _free_bits_leaves(tree: Any) -> list[str]:
    """The leaf names of the ``free_bits`` of every column view in ``tree``."""

    def is_view(x):
        return isinstance(x, ColumnView)

    views = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_view)[0]
    return [jax.tree_util.keystr(p) + ".free_bits" for p, x in views if is_view(x)]


def _derive_free_bits(path: Path, name: str, like, loaded: dict[str, Any]):
    """A column view's ``free_bits`` from its loaded ``pre_slot`` and ``position`` (which
    precede it in the view's fields), for checkpoints written before the view held them."""
    stem = name.removesuffix(".free_bits")
    pre_slot, position = loaded.get(stem + ".pre_slot"), loaded.get(stem + ".position")
    if pre_slot is None or position is None:
        raise CheckpointError(
            f"{path}: leaf {name} is missing and cannot be derived: the checkpoint holds no "
            f"{stem}.pre_slot and {stem}.position"
        )
    if pre_slot.ndim < 2 or position.ndim != pre_slot.ndim:
        raise CheckpointError(
            f"{path}: leaf {name} cannot be derived from {stem}.pre_slot of shape "
            f"{pre_slot.shape} and {stem}.position of shape {position.shape}"
        )
    bits = np.asarray(_free_bits_of(pre_slot, position))
    if bits.shape != like.shape or bits.dtype != like.dtype:
        raise CheckpointError(
            f"{path}: leaf {name} derived from {stem}.pre_slot is {bits.dtype}{bits.shape}, "
            f"the template expects {like.dtype}{tuple(like.shape)}"
        )
    return jnp.asarray(bits) if isinstance(like, jax.Array) else bits


def latest_checkpoint(folder: str | os.PathLike, pattern: str = "*.npz") -> Path | None:
    """The most recently modified complete checkpoint in ``folder`` (None if there is none).

    Temporary files of an interrupted write are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    files = [p for p in folder.glob(pattern) if not p.name.startswith(".")]
    return max(files, key=lambda p: (p.stat().st_mtime_ns, p.name), default=None)
