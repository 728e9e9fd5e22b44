"""tensorflow-datasets builders for the event datasets, read from manually downloaded files.

Both builders store the raw events (not binned spikes), so `dt`, `num_steps` and spatial
downsampling are chosen at load time without preparing again. Their features are
`tfds.features.Tensor`s with `Encoding.BYTES` and a `ClassLabel`, whose encoding is pure
numpy: preparing (`download_and_prepare(file_format="array_record")`) and reading
(`as_data_source`) both work without TensorFlow installed.

The builders register with tfds as ``shd`` and ``nmnist`` when this module is imported.
(The ``tfds build`` command line imports TensorFlow, so prepare through `load` or
``Nmnist(data_dir=...).download_and_prepare(download_config=tfds.download.DownloadConfig(
manual_dir=...), file_format="array_record")`` instead.)
"""

import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from . import _events

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


BUILDERS = {"shd": Shd, "nmnist": Nmnist}
