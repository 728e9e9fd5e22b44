"""Spike datasets: encoded images and genuine event recordings, as `[batch, time, input]` arrays.

`load(name, ...)` returns a `SpikeDataset`; `SpikeDataset.batches(batch_size, seed=...)` yields
numpy `(spikes uint8 [batch, time, input], labels int32 [batch])`. The offline default,
`"mnist_offline"`, needs no network. tensorflow-datasets is imported only when a tfds-backed
dataset is loaded (or a builder class, `MnistIdx`, `FashionMnistIdx`, `Shd` or `Nmnist`, is
accessed), and TensorFlow is never needed, neither to prepare nor to read.
"""

from typing import TYPE_CHECKING

from ._dataset import SpikeDataset as SpikeDataset
from ._encoding import (
    LatencyEncoding as LatencyEncoding,
    RateEncoding as RateEncoding,
    bin_events as bin_events,
    latency_encode as latency_encode,
    rate_encode as rate_encode,
)
from ._loader import DATASETS as DATASETS, DEFAULT_DATASET as DEFAULT_DATASET, load as load

if TYPE_CHECKING:
    from ._builders import (
        FashionMnistIdx as FashionMnistIdx,
        MnistIdx as MnistIdx,
        Nmnist as Nmnist,
        Shd as Shd,
    )


def __getattr__(name: str):
    # The tfds builder classes import tensorflow-datasets (and register with it), so they are
    # loaded on first access rather than with the package.
    if name in ("Shd", "Nmnist", "MnistIdx", "FashionMnistIdx"):
        from . import _builders

        return getattr(_builders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "FashionMnistIdx",
    "LatencyEncoding",
    "MnistIdx",
    "Nmnist",
    "RateEncoding",
    "Shd",
    "SpikeDataset",
    "bin_events",
    "latency_encode",
    "load",
    "rate_encode",
]
