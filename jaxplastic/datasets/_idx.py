"""MNIST and Fashion-MNIST from their genuine IDX files: reader, locator, downloader, messages.

Nothing here imports tensorflow-datasets or TensorFlow: the tfds builders in `_builders.py` call
these, and `load` checks and fetches the files with them.

The IDX format (LeCun et al.): a 4-byte big-endian magic number, two zero bytes then a type code
(0x08 = unsigned byte) then the number of dimensions, so 0x00000803 for the image files
(`[n, 28, 28]`) and 0x00000801 for the label files (`[n]`); then one big-endian uint32 per
dimension, then the data in row-major order. The distributed files are gzipped; gunzipped copies
are read as well (gzip is recognised by its own magic bytes, not by the file name).
"""

import gzip
import hashlib
import http.client
import logging
import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"

# The four files of each dataset, per split: (images, labels), as distributed (gzipped).
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
ALL_FILES = tuple(f for split in ("train", "test") for f in FILES[split])

# Where `download=True` fetches them, tried in order. The first MNIST mirror is the one tfds and
# torchvision use (yann.lecun.com often refuses automated downloads).
MIRRORS = {
    "mnist": (
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
}
HOMEPAGES = {
    "mnist": "http://yann.lecun.com/exdb/mnist/",
    "fashion_mnist": "https://github.com/zalandoresearch/fashion-mnist",
}
# (size in bytes, SHA-256) of the gzipped files as distributed (the values tfds registers).
CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": (
            9912422,
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        ),
        "train-labels-idx1-ubyte.gz": (
            28881,
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        ),
        "t10k-images-idx3-ubyte.gz": (
            1648877,
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        ),
        "t10k-labels-idx1-ubyte.gz": (
            4542,
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ),
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": (
            26421880,
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        ),
        "train-labels-idx1-ubyte.gz": (
            29515,
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        ),
        "t10k-images-idx3-ubyte.gz": (
            4422102,
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        ),
        "t10k-labels-idx1-ubyte.gz": (
            5148,
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        ),
    },
}
FASHION_MNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_TITLES = {
    "mnist": "MNIST (LeCun, Cortes and Burges)",
    "fashion_mnist": "Fashion-MNIST (Xiao, Rasul and Vollgraf 2017)",
}
_DOWNLOAD_TIMEOUT_S = 60.0
_log = logging.getLogger(__name__)


# --- reading ----------------------------------------------------------------------------------


def read_idx(path: os.PathLike | str, *, magic: int | None = None) -> np.ndarray:
    """Reads an IDX file, gzipped or not, into a numpy array in native byte order.

    Args:
        path: the file.
        magic: if given, the magic number the file must start with (e.g. `IMAGES_MAGIC`).

    Raises:
        ValueError: if the file is not IDX (bad magic number or type code), if it is not the
            expected kind (`magic`), or if its length does not match its header.
    """
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == _GZIP_MAGIC:
        data = gzip.decompress(data)
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    if (magic is not None and found != magic) or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        expected = {
            IMAGES_MAGIC: "0x00000803 (uint8 images [n, rows, cols])",
            LABELS_MAGIC: "0x00000801 (uint8 labels [n])",
        }.get(magic, "0x0000TTNN (type code TT, NN dimensions)")
        raise ValueError(
            f"{path}: bad IDX magic number 0x{found:08X}, expected {expected}. Is it a genuine "
            "MNIST / Fashion-MNIST IDX file, and the right one of the four?"
        )
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: IDX header truncated ({len(data)} bytes, expected {header}+)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_size = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected_size:
        raise ValueError(
            f"{path}: the IDX header declares shape {shape} ({expected_size} bytes in all), but "
            f"the file holds {len(data)} bytes; it is truncated or corrupt"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def locate(manual_dir: os.PathLike | str, file: str) -> Path | None:
    """`file` (e.g. `train-images-idx3-ubyte.gz`) in `manual_dir`, gzipped or gunzipped."""
    for candidate in (file, file.removesuffix(".gz")):
        path = Path(manual_dir) / candidate
        if path.is_file():
            return path
    return None


def missing_files(manual_dir: os.PathLike | str) -> list[str]:
    """The IDX files (as distributed, `.gz`) that are in neither form in `manual_dir`."""
    return [f for f in ALL_FILES if locate(manual_dir, f) is None]


def read_split(manual_dir: os.PathLike | str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """`(images [n, 28, 28] uint8, labels [n] uint8)` of `split` from the files in `manual_dir`.

    Raises:
        FileNotFoundError: if a file is missing.
        ValueError: on a file that is not IDX, of the wrong kind or shape, or mismatched counts.
    """
    image_file, label_file = FILES[split]
    paths = [locate(manual_dir, f) for f in (image_file, label_file)]
    if None in paths:
        raise FileNotFoundError(f"missing {image_file} or {label_file} in {manual_dir}")
    images = read_idx(paths[0], magic=IMAGES_MAGIC)
    labels = read_idx(paths[1], magic=LABELS_MAGIC)
    if images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{paths[0]}: expected images of shape [n, 28, 28], got {images.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{paths[0]} holds {images.shape[0]} images but {paths[1]} holds "
            f"{labels.shape[0]} labels"
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise ValueError(f"{paths[1]}: expected labels in [0, 10), got max {labels.max()}")
    return images, labels


# --- downloading ------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(name: str, manual_dir: os.PathLike | str, *, timeout: float = _DOWNLOAD_TIMEOUT_S):
    """Downloads the missing IDX files of `name` into `manual_dir` with urllib.

    Each file is tried at every mirror in `MIRRORS[name]` in turn, checked against its size and
    SHA-256 (`CHECKSUMS`), and written atomically (a `.part` file renamed when complete).

    Raises:
        ConnectionError: if a file could not be fetched intact from any mirror; the message
            says how to download it by hand.
    """
    manual_dir = Path(manual_dir)
    manual_dir.mkdir(parents=True, exist_ok=True)
    for file in missing_files(manual_dir):
        size, sha256 = CHECKSUMS[name][file]
        target = manual_dir / file
        partial = target.with_name(target.name + ".part")
        errors = []
        for mirror in MIRRORS[name]:
            url = mirror + file
            try:
                _log.info("downloading %s to %s", url, target)
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    with open(partial, "wb") as out:
                        shutil.copyfileobj(response, out, 1 << 20)
                got_size, got_sha = partial.stat().st_size, _sha256(partial)
                if (got_size, got_sha) != (size, sha256):
                    raise ValueError(
                        f"got {got_size} bytes with SHA-256 {got_sha}, expected {size} bytes "
                        f"with SHA-256 {sha256}"
                    )
            except (OSError, ValueError, http.client.HTTPException) as e:
                errors.append(f"{url}: {e}")
                partial.unlink(missing_ok=True)
                continue
            partial.replace(target)
            break
        else:
            raise ConnectionError(
                f"could not download {file} of {name!r}:\n    "
                + "\n    ".join(errors)
                + "\n"
                + download_instructions(name, manual_dir)
            )


# --- the message for missing files ------------------------------------------------------------


def download_instructions(name: str, manual_dir: os.PathLike | str) -> str:
    """What to download for `name` ("mnist" or "fashion_mnist") and where to put it."""
    mirrors = MIRRORS[name]
    if name == "mnist":
        where = f"{mirrors[0]} (the canonical mirror; originally {HOMEPAGES[name]})"
    else:
        where = f"{mirrors[0]} (or {HOMEPAGES[name]}, folder data/fashion/)"
    return (
        f"{_TITLES[name]}: download the four IDX files {', '.join(ALL_FILES)} from {where} and "
        f"put them in\n    {os.fspath(manual_dir)}\n"
        "They may stay gzipped or be gunzipped (train-images-idx3-ubyte, ...)."
    )


def missing_files_error(name: str, manual_dir: os.PathLike | str) -> FileNotFoundError:
    """A `FileNotFoundError` naming the missing files, where to get them and the folder."""
    return FileNotFoundError(
        f"Dataset {name!r} is not prepared and its IDX files are missing from "
        f"{os.fspath(manual_dir)} (missing: {', '.join(missing_files(manual_dir))}); "
        "download=False, so nothing is fetched.\n"
        + download_instructions(name, manual_dir)
        + f"\nOr call jaxplastic.datasets.load({name!r}, download=True) to fetch them there. "
        "Either way the files are then prepared once, without TensorFlow. To use another folder "
        "pass manual_dir=...; for an offline dataset that needs no download use "
        "load('mnist_offline')."
    )
