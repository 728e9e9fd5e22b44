"""Readers for the event datasets' genuine file formats, and the missing-download message.

Nothing here imports tensorflow-datasets: the tfds builders in `_builders.py` call these.
"""

import contextlib
import gzip
import io
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# --- Spiking Heidelberg Digits (Cramer et al. 2022) -------------------------------------------

SHD_URL = "https://zenkelab.org/datasets/"
SHD_MIRROR = "https://compneuro.net/datasets/"
SHD_NUM_UNITS = 700
SHD_NUM_CLASSES = 20
_SHD_SUFFIXES = (".h5", ".h5.gz", ".h5.zip")

# --- N-MNIST (Orchard et al. 2015) ------------------------------------------------------------

NMNIST_URL = "https://www.garrickorchard.com/datasets/n-mnist"
NMNIST_SENSOR = (34, 34)  # (width, height); 2 polarities
NMNIST_NUM_CLASSES = 10
_NMNIST_FOLDERS = {"train": "Train", "test": "Test"}
# The sensor never reports y = 240: Orchard's reader uses it to mark a timestamp overflow,
# after which all later timestamps grow by 2**13 us.
_NMNIST_OVERFLOW_Y = 240
_NMNIST_OVERFLOW_US = 2**13
_BIN_ENTRY = re.compile(r"(?:^|/)(Train|Test)/(?:.*/)?([0-9])/([^/]+\.bin)$")


def shd_source(manual_dir: Path, split: str) -> Path | None:
    """The SHD file for `split` in `manual_dir` (`.h5`, `.h5.gz` or `.h5.zip`), or None."""
    for suffix in _SHD_SUFFIXES:
        path = Path(manual_dir) / f"shd_{split}{suffix}"
        if path.is_file():
            return path
    return None


@contextlib.contextmanager
def open_shd(path: Path):
    """Opens an SHD HDF5 file, gzipped, zipped or plain, as an `h5py.File`."""
    import h5py

    path = Path(path)
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            handle = io.BytesIO(f.read())
    elif path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(".h5")]
            if len(names) != 1:
                raise ValueError(f"expected one .h5 file inside {path}, found {names}")
            handle = io.BytesIO(z.read(names[0]))
    else:
        handle = path
    with h5py.File(handle, "r") as f:
        yield f


def read_shd(path: Path) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Yields `(times_s, units, label)` per sample of an SHD file, in file order.

    The file holds `spikes/times` (variable-length float arrays, seconds), `spikes/units`
    (variable-length uint16 arrays, channels 0..699) and `labels` (uint16, 0..19).
    """
    with open_shd(path) as f:
        times, units, labels = f["spikes/times"], f["spikes/units"], f["labels"][()]
        if not (len(times) == len(units) == len(labels)):
            raise ValueError(
                f"{path}: expected equal numbers of spikes/times, spikes/units and labels, "
                f"got {len(times)}, {len(units)} and {len(labels)}"
            )
        for i in range(len(labels)):
            yield (
                np.asarray(times[i], np.float32),
                np.asarray(units[i], np.uint16),
                int(labels[i]),
            )


def decode_nmnist(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decodes one N-MNIST `.bin` file into `(x, y, polarity, timestamp_us)`.

    Each event is 40 bits: byte 0 = x, byte 1 = y, byte 2 bit 7 = polarity and bits 6..0 =
    timestamp bits 22..16, byte 3 = timestamp bits 15..8, byte 4 = bits 7..0 (microseconds).
    Timestamp-overflow markers (y = 240) are applied and removed, as in Orchard's reader;
    events outside the 34 x 34 sensor are dropped.
    """
    raw = np.frombuffer(data, np.uint8)
    if raw.size % 5:
        raise ValueError(f"expected a multiple of 5 bytes (40-bit events), got {raw.size}")
    raw = raw.reshape(-1, 5).astype(np.uint32)
    x, y = raw[:, 0], raw[:, 1]
    p = raw[:, 2] >> 7
    t = ((raw[:, 2] & 0x7F) << 16) | (raw[:, 3] << 8) | raw[:, 4]
    overflow = y == _NMNIST_OVERFLOW_Y
    if overflow.any():
        t = t + _NMNIST_OVERFLOW_US * np.cumsum(overflow).astype(np.uint32)
    keep = ~overflow & (x < NMNIST_SENSOR[0]) & (y < NMNIST_SENSOR[1])
    return (
        x[keep].astype(np.uint8),
        y[keep].astype(np.uint8),
        p[keep].astype(np.uint8),
        t[keep].astype(np.uint32),
    )


def nmnist_source(manual_dir: Path, split: str) -> Path | None:
    """`Train/` or `Test/` (extracted) or `Train.zip` / `Test.zip` in `manual_dir`, or None."""
    folder = Path(manual_dir) / _NMNIST_FOLDERS[split]
    if folder.is_dir():
        return folder
    archive = folder.with_suffix(".zip")
    if archive.is_file():
        return archive
    return None


def read_nmnist(source: Path) -> Iterator[tuple[str, int, bytes]]:
    """Yields `(key, label, file bytes)` for every `<digit>/<name>.bin` of a split, sorted."""
    source = Path(source)
    if source.is_dir():
        top = source.name
        paths = sorted(source.glob("**/*.bin"))
        for path in paths:
            if path.parent.name.isdigit() and len(path.parent.name) == 1:
                key = f"{top}/{path.parent.name}/{path.name}"
                yield key, int(path.parent.name), path.read_bytes()
        return
    with zipfile.ZipFile(source) as z:
        entries = []
        for name in z.namelist():
            m = _BIN_ENTRY.search(name)
            if m:
                entries.append((f"{m[1]}/{m[2]}/{m[3]}", int(m[2]), name))
        for key, label, name in sorted(entries):
            yield key, label, z.read(name)


# --- The message for a missing download -------------------------------------------------------


def missing_files(name: str, manual_dir: Path) -> list[str]:
    """The source files of `name` ("shd" or "nmnist") that are absent from `manual_dir`."""
    if name == "shd":
        return [f"shd_{s}.h5.gz" for s in ("train", "test") if shd_source(manual_dir, s) is None]
    return [
        f"{_NMNIST_FOLDERS[s]}.zip"
        for s in ("train", "test")
        if nmnist_source(manual_dir, s) is None
    ]


def download_instructions(name: str, manual_dir: Path | str) -> str:
    """What to download for `name` and where to put it (also tfds' manual-download text)."""
    where = os.fspath(manual_dir)
    if name == "shd":
        return (
            "Spiking Heidelberg Digits (Cramer et al. 2022): download shd_train.h5.gz and "
            f"shd_test.h5.gz from {SHD_URL} (mirror: {SHD_MIRROR}) and put both in\n"
            f"    {where}\n"
            "They may stay gzipped; shd_train.h5 / shd_test.h5 (gunzipped) or the .h5.zip "
            "variants of the same names are read as well."
        )
    return (
        "N-MNIST (Orchard et al. 2015): download Train.zip and Test.zip from the dataset's "
        f"official page {NMNIST_URL} and put both in\n"
        f"    {where}\n"
        "They may stay zipped, or be extracted there as the folders Train/ and Test/ "
        "(each holding subfolders 0/ .. 9/ of .bin event files)."
    )


def missing_download_error(name: str, manual_dir: Path, prepared_at: str) -> FileNotFoundError:
    """A `FileNotFoundError` naming the files to fetch and the exact folder to put them in."""
    missing = ", ".join(missing_files(name, manual_dir))
    return FileNotFoundError(
        f"Dataset {name!r} is not prepared (no array_record files in {prepared_at}) and its "
        f"source files are missing from {os.fspath(manual_dir)} (missing: {missing}).\n"
        + download_instructions(name, manual_dir)
        + f"\nThen call jaxplastic.datasets.load({name!r}, ...) again: it prepares the files "
        "once, without network or TensorFlow. To use another folder pass manual_dir=...; "
        "for an offline dataset that needs no download use load('mnist_offline')."
    )
