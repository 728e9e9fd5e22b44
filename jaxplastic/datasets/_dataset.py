"""`SpikeDataset`: fixed-length spike arrays in batches, shuffled deterministically by seed."""

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax.random as jr
import numpy as np
from jaxtyping import Int32, UInt8

# `read(indices) -> (payload, labels)` fetches raw examples; `encode(payload, indices, seed)`
# turns them into `[batch, time, input]` uint8 spikes. Indices are into the underlying source.
ReadFn = Callable[[np.ndarray], tuple[Any, np.ndarray]]
EncodeFn = Callable[[Any, np.ndarray, int], np.ndarray]

# Salts for `jax.random.fold_in(key(seed), salt)`: one stream shuffles, one encodes.
SHUFFLE_SALT = 0
ENCODE_SALT = 1


class SpikeDataset:
    """A split of a dataset as spike arrays of a fixed number of time steps, and integer labels.

    Create one with `jaxplastic.datasets.load`. Every example is `num_steps` bins of `dt` ms,
    cropped or padded with silence (see `load`), with at most one spike per input per bin.
    Iterate with `batches`; batches are numpy arrays, ready for `jnp.asarray`.

    Attributes:
        name: the dataset name given to `load`.
        split: `"train"` or `"test"`.
        num_inputs: input neurons per time step.
        num_classes: number of labels; labels lie in `[0, num_classes)`.
        num_steps: time bins per example.
        dt: bin width in ms.
        encoding: how examples become spikes (`LatencyEncoding`, `RateEncoding`, or a string
            describing the event binning).
    """

    def __init__(
        self,
        *,
        name: str,
        split: str,
        num_inputs: int,
        num_classes: int,
        num_steps: int,
        dt: float,
        encoding: Any,
        size: int,
        read: ReadFn,
        encode: EncodeFn,
        labels: np.ndarray | None = None,
        indices: np.ndarray | None = None,
    ):
        self.name = name
        self.split = split
        self.num_inputs = num_inputs
        self.num_classes = num_classes
        self.num_steps = num_steps
        self.dt = dt
        self.encoding = encoding
        self._size = size
        self._read = read
        self._encode = encode
        self._all_labels = labels
        self._indices = np.arange(size) if indices is None else indices

    def __len__(self) -> int:
        return int(self._indices.size)

    def __repr__(self) -> str:
        return (
            f"SpikeDataset(name={self.name!r}, split={self.split!r}, size={len(self)}, "
            f"num_inputs={self.num_inputs}, num_classes={self.num_classes}, "
            f"num_steps={self.num_steps}, dt={self.dt}, encoding={self.encoding!r})"
        )

    @property
    def labels(self) -> Int32[np.ndarray, " example"]:
        """All labels in dataset order (for tfds-backed data, read once on first access)."""
        if self._all_labels is None:
            chunks = [
                self._read(np.arange(i, min(i + 1024, self._size)))[1]
                for i in range(0, self._size, 1024)
            ]
            self._all_labels = (
                np.concatenate(chunks).astype(np.int32) if chunks else np.zeros(0, np.int32)
            )
        return self._all_labels[self._indices]

    def subset(self, indices: Sequence[int] | np.ndarray) -> "SpikeDataset":
        """The examples at `indices` (positions in this dataset), e.g. for a validation split.

        Example spikes, including rate-coded ones, are the same as in the full dataset.

        Raises:
            ValueError: if an index is out of range.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise ValueError(
                f"expected indices in [0, {len(self)}), got [{indices.min()}, {indices.max()}]"
            )
        return SpikeDataset(
            name=self.name,
            split=self.split,
            num_inputs=self.num_inputs,
            num_classes=self.num_classes,
            num_steps=self.num_steps,
            dt=self.dt,
            encoding=self.encoding,
            size=self._size,
            read=self._read,
            encode=self._encode,
            labels=self._all_labels,
            indices=self._indices[indices],
        )

    def num_batches(self, batch_size: int, *, drop_remainder: bool = False) -> int:
        """How many batches `batches(batch_size, drop_remainder=...)` yields."""
        _check_batch_size(batch_size)
        full, rest = divmod(len(self), batch_size)
        return full + (0 if drop_remainder or rest == 0 else 1)

    def batches(
        self,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        drop_remainder: bool = False,
    ) -> Iterator[tuple[UInt8[np.ndarray, "batch time input"], Int32[np.ndarray, " batch"]]]:
        """One pass over the dataset in batches of `(spikes, labels)`.

        The order is `jax.random.permutation(fold_in(key(seed), 0), len(self))` (or dataset
        order when `shuffle=False`). Rate-coded examples draw their spikes from
        `fold_in(fold_in(key(seed), 1), example_index)`, so a seed fixes both the order and the
        spikes, independently of batch size; pass a new seed each epoch (e.g. `seed=epoch`) for
        a new order and fresh Poisson spikes.

        Args:
            batch_size: examples per batch (> 0).
            seed: integer seed of the shuffle and of rate coding.
            shuffle: whether to permute the examples.
            drop_remainder: drop the last, smaller batch (so every batch has the same shape and
                a jitted step compiles once). When False the last batch may be smaller.

        Yields:
            `spikes`, a `uint8` array `[batch, num_steps, num_inputs]` of 0/1, and `labels`, an
            `int32` array `[batch]` in `[0, num_classes)`.

        Raises:
            TypeError: if `batch_size` or `seed` is not an int.
            ValueError: if `batch_size` is not positive.
        """
        _check_batch_size(batch_size)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise TypeError(f"expected seed to be an int, got {seed!r}")
        order = np.arange(len(self))
        if shuffle and len(self) > 1:
            key = jr.fold_in(jr.key(int(seed)), SHUFFLE_SALT)
            order = np.asarray(jr.permutation(key, len(self)))
        stop = self.num_batches(batch_size, drop_remainder=drop_remainder) * batch_size
        return self._iterate(order[:stop], batch_size, int(seed))

    def _iterate(self, order, batch_size, seed):
        for start in range(0, order.size, batch_size):
            idx = self._indices[order[start : start + batch_size]]
            payload, labels = self._read(idx)
            spikes = self._encode(payload, idx, seed)
            yield spikes, np.asarray(labels, np.int32)


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise TypeError(f"expected batch_size to be an int, got {batch_size!r}")
    if batch_size <= 0:
        raise ValueError(f"expected batch_size > 0, got {batch_size}")
