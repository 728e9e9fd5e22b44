"""tensorflow-datasets builders that read downloaded files with numpy, never with TensorFlow.

`Shd` and `Nmnist` store the raw events (not binned spikes), so `dt`, `num_steps` and spatial
downsampling are chosen at load time without preparing again. `MnistIdx` and
`FashionMnistIdx` store the 28 x 28 uint8 images of the genuine IDX files as they are (no PNG
encoding, unlike tfds' catalogue `mnist` / `fashion_mnist`, whose preparation needs
TensorFlow). All features are `tfds.features.Tensor`s with `Encoding.BYTES` and a
`ClassLabel`, whose encoding is pure numpy: preparing
(`download_and_prepare(file_format="array_record")`) and reading (`as_data_source`) both work
without TensorFlow installed.

The builders register with tfds as ``shd``, ``nmnist``, ``mnist_idx`` and ``fashion_mnist_idx``
when this module is imported. (The ``tfds build`` command line imports TensorFlow, so prepare
through `load` or ``Nmnist(data_dir=...).download_and_prepare(download_config=
tfds.download.DownloadConfig(manual_dir=...), file_format="array_record")`` instead.)
"""

import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from . import _events, _idx

_BYTES = tfds.features.Encoding.BYTES


def _check_manual_dir(builder_name: str, manual_dir: os.PathLike, locate) -> dict[str, Path]:
    manual_dir = Path(os.fspath(manual_dir))  # tfds hands over an etils epath.Path
    sources = {split: locate(manual_dir, split) for split in ("train", "test")}
    if any(source is None for source in sources.values()):
        raise _events.missing_download_error(builder_name, manual_dir, "this data_dir")
    return sources


class Shd(tfds.core.GeneratorBasedBuilder):
    """Spiking Heidelberg Digits: 700-channel cochlea-model spikes of spoken digits, 20 classes.

    Features: `times` (float32 seconds), `units` (uint16 channel 0..699), `label` (0..19: the
    ten digits spoken in English and in German; names in the file's `extra/keys`). Splits:
    `train` (8,156) and `test` (2,264), from `shd_train.h5(.gz)` and `shd_test.h5(.gz)` in the
    manual directory.

    References:
        Cramer, Stradmann, Schemmel and Zenke (2022). The Heidelberg spiking data sets for the
        systematic evaluation of spiking neural networks. IEEE TNNLS 33, 2744-2757.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Raw spike events from the HDF5 release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _events.download_instructions("shd", "the manual directory")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Spiking Heidelberg Digits as raw spike events (times in seconds).",
            features=tfds.features.FeaturesDict(
                {
                    "times": tfds.features.Tensor(shape=(None,), dtype=np.float32, encoding=_BYTES),
                    "units": tfds.features.Tensor(shape=(None,), dtype=np.uint16, encoding=_BYTES),
                    "label": tfds.features.ClassLabel(num_classes=_events.SHD_NUM_CLASSES),
                }
            ),
            homepage="https://zenkelab.org/resources/spiking-heidelberg-datasets-shd/",
            citation="Cramer et al. (2022), IEEE TNNLS 33, 2744-2757, "
            "doi:10.1109/TNNLS.2020.3044364",
        )

    def _split_generators(self, dl_manager):
        sources = _check_manual_dir("shd", dl_manager.manual_dir, _events.shd_source)
        return {split: self._generate_examples(path) for split, path in sources.items()}

    def _generate_examples(self, path):
        for i, (times, units, label) in enumerate(_events.read_shd(path)):
            yield i, {"times": times, "units": units, "label": label}


class Nmnist(tfds.core.GeneratorBasedBuilder):
    """N-MNIST: MNIST digits recorded by a moving ATIS event camera, 34 x 34 pixels, 2 polarities.

    Features: `x`, `y` (uint8, 0..33), `polarity` (uint8, 0 = off, 1 = on), `timestamp` (uint32
    microseconds, overflow markers applied) and `label` (0..9). Splits: `train` (60,000) and
    `test` (10,000), from `Train.zip` / `Test.zip` (or their extracted folders).

    References:
        Orchard, Jayawant, Cohen and Thakor (2015). Converting static image datasets to spiking
        neuromorphic datasets using saccades. Frontiers in Neuroscience 9, 437.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Raw events from the .bin files of Train.zip and Test.zip."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _events.download_instructions("nmnist", "the manual directory")

    def _info(self) -> tfds.core.DatasetInfo:
        event = {"shape": (None,), "encoding": _BYTES}
        return tfds.core.DatasetInfo(
            builder=self,
            description="N-MNIST as raw address events (x, y, polarity, timestamp in us).",
            features=tfds.features.FeaturesDict(
                {
                    "x": tfds.features.Tensor(dtype=np.uint8, **event),
                    "y": tfds.features.Tensor(dtype=np.uint8, **event),
                    "polarity": tfds.features.Tensor(dtype=np.uint8, **event),
                    "timestamp": tfds.features.Tensor(dtype=np.uint32, **event),
                    "label": tfds.features.ClassLabel(num_classes=_events.NMNIST_NUM_CLASSES),
                }
            ),
            homepage=_events.NMNIST_URL,
            citation="Orchard et al. (2015), Front. Neurosci. 9:437, doi:10.3389/fnins.2015.00437",
        )

    def _split_generators(self, dl_manager):
        sources = _check_manual_dir("nmnist", dl_manager.manual_dir, _events.nmnist_source)
        return {split: self._generate_examples(path) for split, path in sources.items()}

    def _generate_examples(self, source):
        for key, label, data in _events.read_nmnist(source):
            x, y, p, t = _events.decode_nmnist(data)
            yield key, {"x": x, "y": y, "polarity": p, "timestamp": t, "label": label}


class _IdxImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """28 x 28 grey images and labels 0..9 from the four IDX files in the manual directory."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "uint8 images and labels from the IDX files, without PNG encoding."}
    DATASET = ""  # "mnist" or "fashion_mnist": the key into `_idx`'s tables
    CITATION = ""

    def _info(self) -> tfds.core.DatasetInfo:
        if self.DATASET == "fashion_mnist":
            label = tfds.features.ClassLabel(names=_idx.FASHION_MNIST_LABELS)
        else:
            label = tfds.features.ClassLabel(num_classes=_idx.NUM_CLASSES)
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__.splitlines()[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=_idx.IMAGE_SHAPE, dtype=np.uint8, encoding=_BYTES
                    ),
                    "label": label,
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # example i of a split is record i of its IDX files
            homepage=_idx.HOMEPAGES[self.DATASET],
            citation=self.CITATION,
        )

    def _split_generators(self, dl_manager):
        manual_dir = Path(os.fspath(dl_manager.manual_dir))
        if _idx.missing_files(manual_dir):
            raise _idx.missing_files_error(self.DATASET, manual_dir)
        return {split: self._generate_examples(manual_dir, split) for split in ("train", "test")}

    def _generate_examples(self, manual_dir, split):
        images, labels = _idx.read_split(manual_dir, split)
        for i in range(images.shape[0]):
            yield i, {"image": images[i], "label": int(labels[i])}


class MnistIdx(_IdxImages):
    """MNIST handwritten digits, 28 x 28 uint8, from the genuine IDX files; labels 0..9.

    Splits: `train` (60,000) and `test` (10,000), from `train-images-idx3-ubyte.gz`,
    `train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz` and `t10k-labels-idx1-ubyte.gz`
    (gzipped or not) in the manual directory, in file order. Feature `image` is `[28, 28]`
    uint8 (0 = background, 255 = full ink), row-major as in the files; `label` is the digit.

    References:
        LeCun, Bottou, Bengio and Haffner (1998). Gradient-based learning applied to document
        recognition. Proceedings of the IEEE 86, 2278-2324.
    """

    DATASET = "mnist"
    CITATION = "LeCun et al. (1998), Proc. IEEE 86, 2278-2324, doi:10.1109/5.726791"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _idx.download_instructions("mnist", "the manual directory")


class FashionMnistIdx(_IdxImages):
    """Fashion-MNIST clothing images, 28 x 28 uint8, from the genuine IDX files; 10 classes.

    Splits: `train` (60,000) and `test` (10,000), from the four IDX files of the same names as
    MNIST's (gzipped or not) in the manual directory, in file order. Labels 0..9 are
    T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot.

    References:
        Xiao, Rasul and Vollgraf (2017). Fashion-MNIST: a novel image dataset for benchmarking
        machine learning algorithms. arXiv:1708.07747.
    """

    DATASET = "fashion_mnist"
    CITATION = "Xiao, Rasul and Vollgraf (2017), arXiv:1708.07747"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _idx.download_instructions(
        "fashion_mnist", "the manual directory"
    )


BUILDERS = {"shd": Shd, "nmnist": Nmnist, "mnist": MnistIdx, "fashion_mnist": FashionMnistIdx}
