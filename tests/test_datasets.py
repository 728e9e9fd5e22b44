"""Tests for `jaxplastic.datasets`: encoders, the offline default, and the tfds-backed loaders.

The SHD, N-MNIST and MNIST / Fashion-MNIST tests write tiny files in the genuine formats (HDF5
via h5py, 40-bit N-MNIST events as bytes, big-endian IDX headers, gzipped or not) and run the
real tfds builders on them in temporary directories; downloads are served from file:// URLs,
and the test of a tfds catalogue dataset prepared earlier uses tfds' mock data. No test touches
the network: `no_network` makes any connection attempt fail loudly.
"""

import gzip
import hashlib
import importlib.abc
import math
import socket
import sys
import time
import zipfile

import h5py
import jax.random as jr
import numpy as np
import pytest

from jaxplastic import datasets
from jaxplastic.datasets import (
    LatencyEncoding,
    RateEncoding,
    bin_events,
    latency_encode,
    load,
    rate_encode,
)

# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Fails any attempt to open a network connection."""

    def refuse(*args, **kwargs):
        raise AssertionError("a dataset loader attempted a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def no_tensorflow(monkeypatch):
    """Makes `import tensorflow` fail, as where it is not installed, and checks it stayed out."""
    if "tensorflow" in sys.modules:
        pytest.skip("TensorFlow is already imported")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    monkeypatch.setattr(sys, "meta_path", [Block(), *sys.meta_path])
    yield
    assert "tensorflow" not in sys.modules


def all_examples(ds):
    """Every example of `ds` in dataset order, as `(spikes, labels)`."""
    return next(ds.batches(len(ds), seed=0, shuffle=False))


def spike_set(raster):
    """`{(bin, input)}` of a `[time, input]` raster."""
    return set(zip(*(a.tolist() for a in np.nonzero(raster)), strict=True))


# --- encoders ---------------------------------------------------------------------------------


def test_latency_bins_and_silence():
    # t = tau * ln(x / (x - threshold)); x = 1: 20 ln(1.25) = 4.46 ms; x = 0.5: 20 ln(5/3) = 10.2.
    images = np.array([[255, 0, 51, 52], [128, 255, 255, 0]], np.uint8)
    spikes = latency_encode(images, num_steps=100)
    assert spikes.shape == (2, 100, 4) and spikes.dtype == np.uint8
    assert spike_set(spikes[0]) == {(4, 0), (int(20 * math.log((52 / 255) / (52 / 255 - 0.2))), 3)}
    assert spike_set(spikes[1]) == {(10, 0), (4, 1), (4, 2)}
    assert spikes.sum(axis=1).max() == 1  # at most one spike per pixel
    # dt = 0.5 ms doubles the bin index; a short window crops the late spike of pixel 3.
    assert spike_set(latency_encode(images, num_steps=100, dt=0.5)[1]) == {(20, 0), (8, 1), (8, 2)}
    assert spike_set(latency_encode(images, num_steps=20)[0]) == {(4, 0)}


@pytest.mark.parametrize("shape", [(3, 28, 28), (3, 28, 28, 1), (3, 784)])
def test_latency_flattens_and_orders_by_intensity(shape):
    x = np.linspace(0.25, 1.0, 784, dtype=np.float32)
    images = np.broadcast_to(x, (3, 784)).reshape(shape)
    spikes = latency_encode(images, num_steps=200, tau=10.0, threshold=0.2)
    assert spikes.shape == (3, 200, 784)
    first = spikes[0].argmax(axis=0)
    assert np.all(spikes[0].sum(axis=0) == 1)
    assert np.all(np.diff(first) <= 0)  # brighter pixels never fire later


def test_rate_statistics_and_determinism():
    images = np.array([[1.0, 0.5, 0.0]], np.float32).repeat(4, axis=0)
    spikes = rate_encode(images, num_steps=4000, key=jr.key(0), max_rate_hz=100.0)
    assert spikes.shape == (4, 4000, 3) and spikes.dtype == np.uint8
    assert set(np.unique(spikes).tolist()) <= {0, 1}
    rate = spikes.mean(axis=(0, 1)) * 1000.0  # Hz at dt = 1 ms
    np.testing.assert_allclose(rate, [100.0, 50.0, 0.0], atol=8.0)
    same = rate_encode(images, num_steps=4000, key=jr.key(0), max_rate_hz=100.0)
    np.testing.assert_array_equal(spikes, same)
    other = rate_encode(images, num_steps=4000, key=jr.key(1), max_rate_hz=100.0)
    assert not np.array_equal(spikes, other)
    # p = 1 when max_rate_hz * dt / 1000 >= 1: every bin spikes, still one spike per bin.
    full = rate_encode(images[:1, :1], num_steps=10, key=jr.key(0), max_rate_hz=2000.0)
    assert full.sum() == 10


def test_bin_events_bins_crop_pad_and_merge():
    times = np.array([0.0, 0.999, 1.0, 1.5, 2.9, 5.0, 9.99, 10.0, 12.0])
    units = np.array([0, 0, 0, 0, 2, 1, 1, 1, 2])
    raster = bin_events(times, units, num_inputs=3, num_steps=10)
    assert raster.shape == (10, 3) and raster.dtype == np.uint8
    # 0.0 and 0.999 merge into bin 0; 1.0 and 1.5 into bin 1; >= 10 ms is cropped.
    assert spike_set(raster) == {(0, 0), (1, 0), (2, 2), (5, 1), (9, 1)}
    wide = bin_events(times, units, num_inputs=3, num_steps=20, dt=2.0)
    assert spike_set(wide) == {(0, 0), (1, 2), (2, 1), (4, 1), (5, 1), (6, 2)}
    assert wide[7:].sum() == 0  # padded with silence
    # float32 seconds such as 0.007 (= 6.99999e-3) must land in bin 7, not 6.
    t = np.float32([0.007, 0.003]).astype(np.float64) * 1000.0
    assert spike_set(bin_events(t, np.array([0, 1]), num_inputs=2, num_steps=10)) == {
        (7, 0),
        (3, 1),
    }


def test_encoder_validation():
    with pytest.raises(ValueError, match="num_steps > 0"):
        latency_encode(np.zeros((1, 4)), num_steps=0)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        latency_encode(np.full((1, 4), 2.0), num_steps=5)
    with pytest.raises(ValueError, match="batch"):
        rate_encode(np.zeros(4), num_steps=5, key=jr.key(0))
    with pytest.raises(TypeError, match="num_steps"):
        latency_encode(np.zeros((1, 4)), num_steps=2.5)
    with pytest.raises(ValueError, match="tau"):
        LatencyEncoding(tau=0.0)
    with pytest.raises(ValueError, match="max_rate_hz"):
        RateEncoding(max_rate_hz=-1.0)
    with pytest.raises(ValueError, match="units in"):
        bin_events(np.array([1.0]), np.array([3]), num_inputs=3, num_steps=5)


# --- offline default --------------------------------------------------------------------------


def test_offline_default_loads_fast_with_stated_split(no_network):
    start = time.perf_counter()
    train = load(datasets.DEFAULT_DATASET)
    test = load("mnist_offline", split="test")
    assert time.perf_counter() - start < 10.0
    assert (len(train), len(test)) == (4000, 1000)
    for ds, per_class in ((train, 400), (test, 100)):
        assert (ds.num_inputs, ds.num_classes, ds.num_steps, ds.dt) == (784, 10, 100, 1.0)
        assert ds.labels.dtype == np.int32
        np.testing.assert_array_equal(np.bincount(ds.labels, minlength=10), [per_class] * 10)
    # The split is disjoint: no test digit appears in train.
    from jaxplastic.datasets._offline import load_offline_mnist

    train_images, _ = load_offline_mnist("train")
    test_images, _ = load_offline_mnist("test")
    assert not {im.tobytes() for im in train_images} & {im.tobytes() for im in test_images}


def test_offline_batches_shapes_and_content():
    ds = load("mnist_offline", split="test", num_steps=60)
    batches = list(ds.batches(256, seed=3))
    assert [b[0].shape for b in batches] == [(256, 60, 784)] * 3 + [(232, 60, 784)]
    for spikes, labels in batches:
        assert spikes.dtype == np.uint8 and labels.dtype == np.int32
        assert spikes.max() <= 1 and labels.min() >= 0 and labels.max() < 10
        assert spikes.sum(axis=1).max() <= 1  # latency: one spike per pixel at most
    # Spikes are exactly latency_encode of the raw digits, in dataset order without shuffle.
    from jaxplastic.datasets._offline import load_offline_mnist

    images, labels = load_offline_mnist("test")
    spikes, got = next(ds.batches(50, seed=0, shuffle=False))
    np.testing.assert_array_equal(got, labels[:50])
    np.testing.assert_array_equal(spikes, latency_encode(images[:50], num_steps=60))
    assert len(list(ds.batches(256, seed=0, drop_remainder=True))) == 3
    assert ds.num_batches(256) == 4 and ds.num_batches(256, drop_remainder=True) == 3


def test_shuffling_is_deterministic_and_a_permutation():
    ds = load("mnist_offline", split="test", num_steps=5)

    def order(seed, **kw):
        return np.concatenate([lab for _, lab in ds.batches(100, seed=seed, **kw)])

    def spikes(seed, batch):
        return np.concatenate([s for s, _ in ds.batches(batch, seed=seed)])

    np.testing.assert_array_equal(order(7), order(7))
    np.testing.assert_array_equal(spikes(7, 100), spikes(7, 100))
    assert not np.array_equal(order(7), order(8))
    np.testing.assert_array_equal(order(7, shuffle=False), ds.labels)
    np.testing.assert_array_equal(np.sort(order(7)), np.sort(ds.labels))

    # The permutation visits every example once: same multiset of examples as without shuffle.
    def examples(**kw):
        return sorted(
            x.tobytes() + bytes([int(y)])
            for s, lab in ds.batches(300, **kw)
            for x, y in zip(s, lab, strict=True)
        )

    assert examples(seed=1) == examples(seed=1, shuffle=False)


def test_rate_coded_dataset_is_keyed_per_example():
    full = load(
        "mnist_offline", split="test", encoding=RateEncoding(max_rate_hz=200.0), num_steps=20
    )
    ds = full.subset(np.arange(120))
    a = np.concatenate([s for s, _ in ds.batches(40, seed=5, shuffle=False)])
    b = np.concatenate([s for s, _ in ds.batches(60, seed=5, shuffle=False)])
    np.testing.assert_array_equal(a, b)  # independent of batch size
    c = np.concatenate([s for s, _ in ds.batches(60, seed=6, shuffle=False)])
    assert not np.array_equal(a, c)  # a new seed draws fresh spikes
    sub = ds.subset([10, 3])
    np.testing.assert_array_equal(next(sub.batches(2, seed=5, shuffle=False))[0], a[[10, 3]])
    assert a.sum() > 0 and ds.encoding == RateEncoding(max_rate_hz=200.0)
    assert load("mnist_offline", encoding="rate").encoding == RateEncoding()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="cifar10"), "unknown dataset 'cifar10'.*mnist_offline.*nmnist"),
        (dict(name="mnist_offline", split="validation"), "unknown split.*'train', 'test'"),
        (dict(name="mnist_offline", num_steps=0), "num_steps > 0"),
        (dict(name="mnist_offline", num_steps=-3), "num_steps > 0"),
        (dict(name="mnist_offline", dt=0.0), "dt > 0"),
        (dict(name="mnist_offline", encoding="burst"), "unknown encoding.*latency.*rate"),
        (dict(name="shd", encoding="rate"), "binned, not encoded"),
        (dict(name="mnist_offline", downsample=2), "downsample applies"),
        (dict(name="nmnist", downsample=0), "downsample >= 1"),
    ],
)
def test_load_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load(**kwargs)


def test_batches_rejects_bad_arguments():
    ds = load("mnist_offline", split="test")
    with pytest.raises(ValueError, match="batch_size > 0"):
        ds.batches(0, seed=0)
    with pytest.raises(TypeError, match="seed"):
        ds.batches(8, seed=None)
    with pytest.raises(TypeError, match="batch_size"):
        ds.batches(8.0, seed=0)
    with pytest.raises(ValueError, match="indices in"):
        ds.subset([len(ds)])


# --- Spiking Heidelberg Digits ----------------------------------------------------------------

# (times in s, units, label) per sample; labels are unique so samples can be found again.
SHD_TRAIN = [
    (np.float32([0.0, 0.0005, 0.007, 0.3]), np.uint16([5, 5, 699, 0]), 3),
    (np.float32([0.0021, 1.2]), np.uint16([10, 11]), 19),  # 1.2 s: beyond 1000 bins, cropped
    (np.float32([]), np.uint16([]), 0),  # silent sample
]
SHD_TEST = [(np.float32([0.0104]), np.uint16([42]), 7)]


def write_shd(path, samples):
    with h5py.File(path, "w") as f:
        times = f.create_dataset("spikes/times", (len(samples),), dtype=h5py.vlen_dtype("f4"))
        units = f.create_dataset("spikes/units", (len(samples),), dtype=h5py.vlen_dtype("u2"))
        for i, (t, u, _) in enumerate(samples):
            times[i], units[i] = t, u
        f.create_dataset("labels", data=np.uint16([lab for *_, lab in samples]))


@pytest.fixture(scope="module")
def shd_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("shd")
    manual = root / "downloads"
    manual.mkdir()
    write_shd(root / "plain.h5", SHD_TRAIN)
    with open(root / "plain.h5", "rb") as src, gzip.open(manual / "shd_train.h5.gz", "wb") as dst:
        dst.write(src.read())  # the train file gzipped, as distributed
    write_shd(manual / "shd_test.h5", SHD_TEST)
    return root / "data", manual


def test_shd_builder_bins_events(shd_dirs, no_network):
    data_dir, manual = shd_dirs
    ds = load("shd", data_dir=data_dir, manual_dir=manual)
    assert (len(ds), ds.num_inputs, ds.num_classes, ds.num_steps) == (3, 700, 20, 1000)
    spikes, labels = all_examples(ds)
    assert spikes.shape == (3, 1000, 700) and spikes.dtype == np.uint8
    assert labels.dtype == np.int32 and sorted(labels.tolist()) == [0, 3, 19]
    by_label = dict(zip(labels.tolist(), spikes, strict=True))
    # 0 and 0.5 ms of unit 5 share bin 0; 7 ms -> bin 7 despite float32; 300 ms -> bin 300.
    assert spike_set(by_label[3]) == {(0, 5), (7, 699), (300, 0)}
    assert spike_set(by_label[19]) == {(2, 10)}  # 1.2 s is cropped at 1000 bins
    assert by_label[0].sum() == 0
    test = load("shd", split="test", data_dir=data_dir, manual_dir=manual, num_steps=20, dt=2.0)
    spikes, labels = all_examples(test)
    assert labels.tolist() == [7] and spike_set(spikes[0]) == {(5, 42)}


def test_shd_prepared_once_then_needs_no_source_files(shd_dirs, tmp_path):
    data_dir, manual = shd_dirs
    load("shd", data_dir=data_dir, manual_dir=manual)
    ds = load("shd", data_dir=data_dir, manual_dir=tmp_path / "gone", num_steps=10)
    assert len(ds) == 3 and next(ds.batches(2, seed=0))[0].shape == (2, 10, 700)


# --- N-MNIST ----------------------------------------------------------------------------------


def nmnist_bytes(events):
    """Encodes `(x, y, polarity, t_us)` rows as 40-bit N-MNIST events."""
    out = bytearray()
    for x, y, p, t in events:
        out += bytes([x, y, (p << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF])
    return bytes(out)


NMNIST_TRAIN = {
    # label: events (x, y, polarity, timestamp us)
    1: [(0, 0, 0, 0), (33, 33, 1, 299_999), (5, 7, 1, 1_500), (5, 7, 1, 1_999)],
    4: [(2, 3, 0, 0x7F_FFFF), (10, 0, 1, 150_000)],  # the max 23-bit stamp is cropped
    # An overflow marker (y = 240) adds 2**13 us to itself and every later event.
    8: [(1, 1, 0, 100), (0, 240, 0, 0), (3, 4, 1, 100)],
}
NMNIST_TEST = {6: [(33, 0, 1, 42_000), (32, 1, 0, 42_500)]}


def nmnist_unit(x, y, p, width=34):
    return (y * width + x) * 2 + p


@pytest.fixture(scope="module")
def nmnist_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("nmnist")
    manual = root / "downloads"
    for label, events in NMNIST_TRAIN.items():  # Train/ extracted as folders
        folder = manual / "Train" / str(label)
        folder.mkdir(parents=True)
        (folder / "00001.bin").write_bytes(nmnist_bytes(events))
    with zipfile.ZipFile(manual / "Test.zip", "w") as z:  # Test.zip left zipped
        for label, events in NMNIST_TEST.items():
            z.writestr(f"Test/{label}/00002.bin", nmnist_bytes(events))
    return root / "data", manual


def test_nmnist_builder_bins_events(nmnist_dirs, no_network):
    data_dir, manual = nmnist_dirs
    ds = load("nmnist", data_dir=data_dir, manual_dir=manual)
    assert (len(ds), ds.num_inputs, ds.num_classes, ds.num_steps) == (3, 2312, 10, 300)
    spikes, labels = all_examples(ds)
    assert spikes.shape == (3, 300, 2312) and spikes.dtype == np.uint8
    by_label = dict(zip(labels.tolist(), spikes, strict=True))
    assert spike_set(by_label[1]) == {
        (0, nmnist_unit(0, 0, 0)),
        (299, nmnist_unit(33, 33, 1)),
        (1, nmnist_unit(5, 7, 1)),  # 1.5 and 1.999 ms share bin 1
    }
    assert spike_set(by_label[4]) == {(150, nmnist_unit(10, 0, 1))}
    overflow_us = 2**13 + 100
    assert spike_set(by_label[8]) == {
        (0, nmnist_unit(1, 1, 0)),
        (overflow_us // 1000, nmnist_unit(3, 4, 1)),
    }
    test = load("nmnist", split="test", data_dir=data_dir, manual_dir=manual, num_steps=50)
    spikes, labels = all_examples(test)
    assert labels.tolist() == [6]
    assert spike_set(spikes[0]) == {(42, nmnist_unit(33, 0, 1)), (42, nmnist_unit(32, 1, 0))}


def test_nmnist_downsampling(nmnist_dirs):
    data_dir, manual = nmnist_dirs
    ds = load("nmnist", split="test", data_dir=data_dir, manual_dir=manual, downsample=2)
    assert ds.num_inputs == 2 * 17 * 17
    spikes, _ = all_examples(ds)
    # (33, 0) and (32, 1) both fall into block (16, 0); polarities stay apart.
    assert spike_set(spikes[0]) == {
        (42, nmnist_unit(16, 0, 1, 17)),
        (42, nmnist_unit(16, 0, 0, 17)),
    }
    coarse = load("nmnist", split="test", data_dir=data_dir, manual_dir=manual, downsample=4)
    assert coarse.num_inputs == 2 * 9 * 9


# --- missing downloads ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, files",
    [("shd", ["shd_train.h5.gz", "shd_test.h5.gz"]), ("nmnist", ["Train.zip", "Test.zip"])],
)
def test_missing_event_files_fail_fast_with_instructions(name, files, tmp_path, no_network):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as info:
        load(name, data_dir=tmp_path)
    assert time.perf_counter() - start < 10.0
    message = str(info.value)
    folder = tmp_path / "downloads" / "manual" / name
    assert str(folder) in message  # the exact default folder
    for file in files:
        assert file in message
    assert ("zenkelab.org" if name == "shd" else "garrickorchard.com") in message


def test_partially_downloaded_event_files_name_what_is_missing(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    write_shd(manual / "shd_train.h5", SHD_TEST)
    with pytest.raises(FileNotFoundError, match=r"missing: shd_test\.h5\.gz\)"):
        load("shd", data_dir=tmp_path / "data", manual_dir=manual)


# --- MNIST and Fashion-MNIST from IDX files ---------------------------------------------------


def idx_bytes(array, magic):
    """`array` (uint8) as an IDX file: big-endian magic number, dimensions, then the data."""
    array = np.asarray(array, np.uint8)
    assert magic & 0xFF == array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def mnist_images(n, seed):
    """`n` 28 x 28 uint8 images: image 0 has chosen pixels, the rest are random."""
    images = np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[0] = 0
    # Latency bins at the default tau = 20 ms, threshold 0.2: 255 -> 20 ln(1.25) = 4.46 ms,
    # 128 -> 10.2 ms, 52 -> 20 ln(52) = 79.0 ms; 51 = 0.2 * 255 is at the threshold and stays
    # silent within 100 steps.
    images[0, 0, 0], images[0, 27, 27], images[0, 3, 4], images[0, 5, 5] = 255, 128, 52, 51
    return images


# Per split: (images, labels). The labels cover all ten classes.
IDX_SPLITS = {
    "train": (mnist_images(12, seed=0), np.uint8([7, 0, 9, 1, 2, 3, 4, 5, 6, 8, 1, 7])),
    "test": (mnist_images(3, seed=1), np.uint8([3, 9, 0])),
}
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IDX_FILES = [f for split in ("train", "test") for f in IDX_NAMES[split]]


def write_idx_files(folder, gzipped):
    """Writes the four IDX files of `IDX_SPLITS` into `folder`; `gzipped[i]` per file."""
    folder.mkdir(parents=True, exist_ok=True)
    contents = []
    for split in ("train", "test"):
        images, labels = IDX_SPLITS[split]
        contents += [idx_bytes(images, 0x00000803), idx_bytes(labels, 0x00000801)]
    for file, data, gz in zip(IDX_FILES, contents, gzipped, strict=True):
        if gz:
            (folder / file).write_bytes(gzip.compress(data, mtime=0))
        else:
            (folder / file.removesuffix(".gz")).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def idx_dirs(tmp_path_factory):
    """Per dataset name: (data_dir, manual_dir); mnist's files are gzipped, Fashion's a mix."""
    root = tmp_path_factory.mktemp("idx")
    return {
        "mnist": (root / "data", write_idx_files(root / "mnist", [True] * 4)),
        "fashion_mnist": (
            root / "data",
            write_idx_files(root / "fashion", [False, True, True, False]),
        ),
    }


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_builder_round_trips_images_without_tensorflow(
    name, idx_dirs, no_network, no_tensorflow
):
    data_dir, manual = idx_dirs[name]
    start = time.perf_counter()
    ds = load(name, data_dir=data_dir, manual_dir=manual)
    assert time.perf_counter() - start < 20.0
    assert (len(ds), ds.num_inputs, ds.num_classes, ds.num_steps) == (12, 784, 10, 100)
    assert (data_dir / f"{name}_idx" / "1.0.0").is_dir()  # prepared under the builder's name
    for split, (images, labels) in IDX_SPLITS.items():
        builder = {"mnist": datasets.MnistIdx, "fashion_mnist": datasets.FashionMnistIdx}[name](
            data_dir=data_dir
        )
        source = builder.as_data_source(split=split)
        stored = [source[i] for i in range(len(source))]
        # Dataset order is file order, and every pixel survives exactly.
        got = np.stack([r["image"] for r in stored])
        assert got.dtype == np.uint8 and got.shape == images.shape
        np.testing.assert_array_equal(got, images)
        assert [int(r["label"]) for r in stored] == labels.tolist()
        ds = load(name, split=split, data_dir=data_dir, manual_dir=manual)
        np.testing.assert_array_equal(ds.labels, labels.astype(np.int32))
        spikes, got_labels = all_examples(ds)
        assert spikes.shape == (len(labels), 100, 784) and spikes.dtype == np.uint8
        assert got_labels.dtype == np.int32
        np.testing.assert_array_equal(got_labels, labels)
        np.testing.assert_array_equal(spikes, latency_encode(images, num_steps=100))
    if name == "fashion_mnist":
        assert builder.info.features["label"].names[9] == "Ankle boot"


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_dataset_spikes_in_the_right_bins(name, idx_dirs):
    data_dir, manual = idx_dirs[name]
    ds = load(name, split="test", data_dir=data_dir, manual_dir=manual).subset([0])
    spikes, labels = all_examples(ds)
    assert labels.tolist() == [3]
    assert spike_set(spikes[0]) == {(4, 0), (10, 27 * 28 + 27), (79, 3 * 28 + 4)}
    # Rate coding at 2 kHz, dt = 1 ms: p = min(1, x * 2) = 1 for x >= 0.5, so pixels 255 and
    # 128 spike in every bin, 52 sometimes, and the black ones (and no others) never.
    rate = load(
        name,
        split="test",
        data_dir=data_dir,
        manual_dir=manual,
        encoding=RateEncoding(max_rate_hz=2000.0),
        num_steps=200,
    ).subset([0])
    spikes, _ = all_examples(rate)
    counts = spikes[0].sum(axis=0)
    assert counts[0] == counts[27 * 28 + 27] == 200
    assert 0 < counts[3 * 28 + 4] < 200
    assert counts[5 * 28 + 5] > 0  # 51/255 = 0.2 fires in rate coding (p = 0.4)
    assert np.count_nonzero(counts) == 4


def test_idx_prepared_once_then_needs_no_source_files(idx_dirs, tmp_path):
    data_dir, manual = idx_dirs["mnist"]
    load("mnist", data_dir=data_dir, manual_dir=manual)
    ds = load("mnist", split="test", data_dir=data_dir, manual_dir=tmp_path / "gone", num_steps=10)
    assert len(ds) == 3 and next(ds.batches(2, seed=0))[0].shape == (2, 10, 784)


def test_idx_default_manual_folder(tmp_path, no_network):
    write_idx_files(tmp_path / "downloads" / "manual" / "fashion_mnist", [False] * 4)
    ds = load("fashion_mnist", split="test", data_dir=tmp_path, num_steps=10)
    np.testing.assert_array_equal(ds.labels, IDX_SPLITS["test"][1])


def test_read_idx_checks_magic_number_and_size(tmp_path):
    from jaxplastic.datasets._idx import read_idx

    images, labels = IDX_SPLITS["test"]
    good = tmp_path / "images.gz"
    good.write_bytes(gzip.compress(idx_bytes(images, 0x00000803)))
    np.testing.assert_array_equal(read_idx(good, magic=0x00000803), images)
    # A labels file where images belong: magic 0x00000801, not 0x00000803.
    swapped = tmp_path / "labels"
    swapped.write_bytes(idx_bytes(labels, 0x00000801))
    with pytest.raises(ValueError, match="bad IDX magic number 0x00000801, expected 0x00000803"):
        read_idx(swapped, magic=0x00000803)
    # Not an IDX file at all (an HTML error page, say), with or without an expected magic.
    html = tmp_path / "page.gz"
    html.write_bytes(b"<html>404 Not Found</html>")
    for magic in (0x00000801, None):
        with pytest.raises(ValueError, match="bad IDX magic number 0x3C68746D"):
            read_idx(html, magic=magic)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(idx_bytes(images, 0x00000803)[:-5])
    with pytest.raises(ValueError, match=r"declares shape \(3, 28, 28\).*truncated"):
        read_idx(truncated, magic=0x00000803)


def test_swapped_idx_files_fail_preparation_clearly(tmp_path, no_network):
    manual = write_idx_files(tmp_path / "manual", [True] * 4)
    (manual / "t10k-images-idx3-ubyte.gz").rename(manual / "tmp.gz")
    (manual / "t10k-labels-idx1-ubyte.gz").rename(manual / "t10k-images-idx3-ubyte.gz")
    (manual / "tmp.gz").rename(manual / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz: bad IDX magic number"):
        load("mnist", data_dir=tmp_path / "data", manual_dir=manual)
    # The failed preparation leaves nothing behind: with the files fixed it succeeds.
    write_idx_files(manual, [True] * 4)
    assert len(load("mnist", split="test", data_dir=tmp_path / "data", manual_dir=manual)) == 3


# --- downloading MNIST (file:// mirrors: no network) ------------------------------------------


@pytest.fixture
def local_mirror(tmp_path, monkeypatch):
    """Serves the test IDX files from file:// URLs behind a dead first mirror."""
    from jaxplastic.datasets import _idx

    served = write_idx_files(tmp_path / "mirror", [True] * 4)
    checksums = {
        f: ((served / f).stat().st_size, hashlib.sha256((served / f).read_bytes()).hexdigest())
        for f in IDX_FILES
    }
    mirrors = ((tmp_path / "dead").as_uri() + "/", served.as_uri() + "/")
    monkeypatch.setitem(_idx.MIRRORS, "mnist", mirrors)
    monkeypatch.setitem(_idx.CHECKSUMS, "mnist", checksums)
    return checksums


def test_download_fetches_into_manual_dir_and_prepares(local_mirror, tmp_path, no_network):
    ds = load("mnist", split="test", data_dir=tmp_path / "data", download=True, num_steps=10)
    np.testing.assert_array_equal(ds.labels, IDX_SPLITS["test"][1])
    manual = tmp_path / "data" / "downloads" / "manual" / "mnist"
    assert sorted(p.name for p in manual.iterdir()) == sorted(IDX_FILES)


def test_download_rejects_corrupt_files(local_mirror, tmp_path, no_network):
    checksum = local_mirror["t10k-labels-idx1-ubyte.gz"]
    size = checksum[0]
    local_mirror["t10k-labels-idx1-ubyte.gz"] = (size, "0" * 64)
    manual = tmp_path / "manual"
    with pytest.raises(ConnectionError) as info:
        load("mnist", data_dir=tmp_path / "data", manual_dir=manual, download=True)
    message = str(info.value)
    assert "could not download t10k-labels-idx1-ubyte.gz" in message
    assert f"expected {size} bytes with SHA-256 0000" in message
    assert str(manual) in message
    # The three intact files stay, the corrupt one (and its .part) does not.
    assert sorted(p.name for p in manual.iterdir()) == sorted(IDX_FILES[:3])
    # A second try fetches only the missing file.
    local_mirror["t10k-labels-idx1-ubyte.gz"] = checksum
    for file in IDX_FILES[:3]:
        (manual / file).write_bytes(b"kept, not fetched again")
    with pytest.raises(ValueError, match="bad IDX magic number"):  # the kept files are read
        load("mnist", data_dir=tmp_path / "data", manual_dir=manual, download=True)
    assert (manual / "t10k-labels-idx1-ubyte.gz").read_bytes() == (
        tmp_path / "mirror" / "t10k-labels-idx1-ubyte.gz"
    ).read_bytes()


def test_download_manager_is_not_used_when_files_exist(idx_dirs, tmp_path, monkeypatch):
    from jaxplastic.datasets import _idx

    def refuse(*args, **kwargs):
        raise AssertionError("downloaded although the files are in manual_dir")

    monkeypatch.setattr(_idx, "download", refuse)
    _, manual = idx_dirs["mnist"]
    assert len(load("mnist", data_dir=tmp_path, manual_dir=manual, download=True)) == 12


# --- missing MNIST files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, urls",
    [
        ("mnist", ["https://storage.googleapis.com/cvdf-datasets/mnist/", "yann.lecun.com"]),
        (
            "fashion_mnist",
            ["fashion-mnist.s3-website.eu-central-1.amazonaws.com", "zalandoresearch"],
        ),
    ],
)
def test_missing_idx_files_fail_fast_with_instructions(name, urls, tmp_path, no_network):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=f"{name}.*not prepared.*download=False") as info:
        load(name, data_dir=tmp_path)
    assert time.perf_counter() - start < 10.0
    message = str(info.value)
    assert str(tmp_path / "downloads" / "manual" / name) in message  # the exact default folder
    for file in IDX_FILES:
        assert file in message
    for url in urls:
        assert url in message


def test_partially_downloaded_idx_files_name_what_is_missing(tmp_path):
    manual = write_idx_files(tmp_path / "manual", [True] * 4)
    (manual / "t10k-images-idx3-ubyte.gz").unlink()
    (manual / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"missing: t10k-images-idx3-ubyte\.gz, t10k-labels-idx1-ubyte\.gz\)",
    ):
        load("mnist", data_dir=tmp_path / "data", manual_dir=manual)


# --- the tfds catalogue, prepared earlier with TensorFlow -------------------------------------


def test_prepared_catalogue_is_still_read(tmp_path, monkeypatch, no_network):
    import tensorflow_datasets as tfds

    # Only the catalogue's fashion_mnist counts as prepared (as array_record, which mock_data
    # simulates), not the TF-free fashion_mnist_idx; its files need not exist.
    (tmp_path / "fashion_mnist").mkdir()
    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "is_prepared", lambda self: self.name == "fashion_mnist"
    )
    # mock_data's batched __getitems__ is broken (tfds 4.9.10); read record by record instead.
    from tensorflow_datasets.core.data_sources import base

    monkeypatch.delattr(base.BaseDataSource, "__getitems__")
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = load("fashion_mnist", split="test", encoding="rate", num_steps=30, data_dir=tmp_path)
        assert (len(ds), ds.num_inputs, ds.num_classes) == (12, 784, 10)
        spikes, labels = next(ds.batches(5, seed=0))
        assert spikes.shape == (5, 30, 784) and spikes.dtype == np.uint8
        assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() < 10
        np.testing.assert_array_equal(spikes, next(ds.batches(5, seed=0))[0])
    assert not (tmp_path / "fashion_mnist_idx").exists()


def test_builders_exposed_lazily():
    import tensorflow_datasets as tfds

    for cls in (datasets.Shd, datasets.Nmnist, datasets.MnistIdx, datasets.FashionMnistIdx):
        assert issubclass(cls, tfds.core.GeneratorBasedBuilder)
    assert (datasets.Shd.name, datasets.Nmnist.name) == ("shd", "nmnist")
    assert (datasets.MnistIdx.name, datasets.FashionMnistIdx.name) == (
        "mnist_idx",
        "fashion_mnist_idx",
    )
    with pytest.raises(AttributeError):
        datasets.Cifar  # noqa: B018
