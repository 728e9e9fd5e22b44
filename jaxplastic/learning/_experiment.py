"""Training experiments for the classifiers: configuration, epoch loop, checkpoints, export.

The reusable part of ``jaxplastic train`` / ``evaluate`` / ``export``, for library users who
want the same experiment without the command line:

- :class:`ClassifierConfig`: every setting of a run (dataset, method, neuron, densities,
  padding, L1 strength, learning rate, epochs, batch, seed, ...), validated, JSON-serialisable;
  its defaults are those of ``examples/deep_r_mnist.py --full`` (128 LIF, 50 steps, batch 32,
  Adam 5e-3, L1 0.1, padding 2, fan-in initialisation), so results are comparable;
- :func:`build_classifier`, :func:`build_trainer`, :func:`load_data`: the pieces of a run;
- :class:`RunState` and :func:`train_epochs`: the epoch loop, deterministic given the config
  (a seed fixes the network, the signs, the rewiring keys and the data order), resumable from
  any batch boundary;
- :func:`save_run` / :func:`load_run`: the whole state in one atomic, versioned, checksummed
  checkpoint (model with its connectivity, optimiser state, DEEP R signs, PRNG key, epoch,
  position in the epoch's data order, metrics so far);
- :func:`evaluate`: test accuracy of a model on a dataset;
- :func:`to_numpy` / :func:`export_npz`: a trained network as plain numpy arrays (connectivity
  as COO triplets ``pre, post, weight``), readable without jaxplastic or JAX.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.random as jr
import numpy as np

from .._checkpoint import CheckpointError, _read_header, load_checkpoint, save_checkpoint
from ..datasets import DATASETS, SpikeDataset, load
from ..models._classifier import (
    AbstractClassifier,
    DenseClassifier,
    RecurrentClassifier,
    accuracy,
    dense_classifier,
    recurrent_classifier,
)
from ._deep_r_train import METHODS, Trainer, TrainInfo, TrainState, trainer, with_padding

__all__ = [
    "ClassifierConfig",
    "NonFiniteLossError",
    "RunState",
    "build_classifier",
    "build_trainer",
    "evaluate",
    "export_npz",
    "init_run",
    "load_data",
    "load_run",
    "read_run_metadata",
    "save_run",
    "to_numpy",
    "train_epochs",
]

RUN_FORMAT = "jaxplastic-train-run"
RUN_FORMAT_VERSION = 1
EXPORT_FORMAT = "jaxplastic-classifier"
EXPORT_FORMAT_VERSION = 1
NEURONS = ("lif", "alif")
INITS = ("fan_in", "paper")
ENCODINGS = ("latency", "rate")
# Settings that may change between a checkpoint and its resumption (they do not change the
# state or the data order): more epochs continue training.
_RESUMABLE_CHANGES = ("epochs",)


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Every setting of one training run; the defaults are ``examples/deep_r_mnist.py --full``.

    Attributes:
        dataset: a name of :data:`jaxplastic.datasets.DATASETS` (default the offline digits).
        method: ``"dense"``, ``"static"`` or ``"deep_r"``.
        neuron: hidden neurons, ``"lif"`` or ``"alif"`` (MODELS.md section 1).
        hidden: hidden neurons.
        p_in, p_rec: input and recurrent densities in (0, 1] (ignored by ``"dense"``).
        padding: spare row capacity ``r`` (capacity ``ceil((1 + r) * longest row)``); None:
            2 for DEEP R, 0 for static.
        capacity_in, capacity_rec: explicit row capacities instead of ``padding``; a row
            drawn longer than its capacity is an error.
        l1: DEEP R's L1 strength ``C``.
        lr: Adam's learning rate.
        epochs: passes over the training set.
        batch_size: examples per step (the last, smaller batch of an epoch is dropped).
        num_steps: time steps (of 1 ms) per example.
        train_size, test_size: use only the first examples of a fixed permutation of the
            split (None: all of it).
        seed: fixes the initial network (``key(seed)``), the DEEP R signs and rewiring keys
            (``key(10_000 + seed)``) and the data order (epoch ``e`` uses
            ``batches(seed=1000 * seed + e)``).
        init: ``"fan_in"``: sparse weights Normal(0, gain / sqrt(p n_pre)), the same input
            variance per neuron as the dense model; ``"paper"``: gain / sqrt(n_pre).
        weight_gain: factor on every initial weight's standard deviation.
        encoding: image datasets only, ``"latency"`` or ``"rate"``.
        data_dir: tfds data folder for datasets that need files (None: the default).
    """

    dataset: str = "mnist_offline"
    method: str = "deep_r"
    neuron: str = "lif"
    hidden: int = 128
    p_in: float = 0.01
    p_rec: float = 0.01
    padding: float | None = None
    capacity_in: int | None = None
    capacity_rec: int | None = None
    l1: float = 0.1
    lr: float = 5e-3
    epochs: int = 10
    batch_size: int = 32
    num_steps: int = 50
    train_size: int | None = None
    test_size: int | None = None
    seed: int = 0
    init: str = "fan_in"
    weight_gain: float = 1.0
    encoding: str = "latency"
    data_dir: str | None = None

    def __post_init__(self):
        def choice(name, options):
            if getattr(self, name) not in options:
                raise ValueError(f"{name}: expected one of {options}, got {getattr(self, name)!r}")

        def integer(name, minimum, optional=False):
            value = getattr(self, name)
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")

        def number(name, ok, expected, optional=False):
            value = getattr(self, name)
            if optional and value is None:
                return
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or not ok(value)
            ):
                raise ValueError(f"{name}: expected {expected}, got {value!r}")

        choice("dataset", DATASETS)
        choice("method", METHODS)
        choice("neuron", NEURONS)
        choice("init", INITS)
        choice("encoding", ENCODINGS)
        for name in ("hidden", "epochs", "batch_size", "num_steps"):
            integer(name, 1)
        integer("seed", 0)
        for name in ("train_size", "test_size", "capacity_in", "capacity_rec"):
            integer(name, 1, optional=True)
        for name in ("p_in", "p_rec"):
            number(name, lambda p: 0 < p <= 1, "a density in (0, 1]")
        number("padding", lambda r: r >= 0, "a number >= 0", optional=True)
        number("l1", lambda c: c >= 0, "a number >= 0")
        number("lr", lambda x: x > 0, "a number > 0")
        number("weight_gain", lambda x: x > 0, "a number > 0")

    @property
    def spare_capacity(self) -> float:
        """The padding ``r`` in use: ``padding``, or 2 for DEEP R and 0 for static."""
        if self.padding is not None:
            return float(self.padding)
        return 2.0 if self.method == "deep_r" else 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClassifierConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown settings {unknown}")
        return cls(**values)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite (the step's state is not kept)."""

    def __init__(self, epoch: int, batch: int, loss: float):
        self.epoch, self.batch, self.loss = epoch, batch, loss
        super().__init__(
            f"the training loss became {loss} at epoch {epoch + 1}, batch {batch + 1}: training "
            "diverged (try a smaller learning rate or weight gain)"
        )


# -- building a run --------------------------------------------------------------------------


def _first(dataset: SpikeDataset, size: int | None, what: str) -> SpikeDataset:
    if size is None:
        return dataset
    if size > len(dataset):
        raise ValueError(
            f"{what}: expected at most the {len(dataset)} examples of the split, got {size}"
        )
    order = np.asarray(jr.permutation(jr.key(0), len(dataset)))
    return dataset.subset(np.sort(order[:size]))


def load_data(config: ClassifierConfig) -> tuple[SpikeDataset, SpikeDataset]:
    """The training and test splits of ``config.dataset`` (subsets if sizes are given).

    Raises:
        ValueError: a bad dataset setting, a size larger than the split, or a batch larger
            than the training set (an epoch would hold no batch).
        FileNotFoundError: a dataset whose files are missing (the message says where to put
            them).
    """
    options: dict[str, Any] = dict(num_steps=config.num_steps, data_dir=config.data_dir)
    if config.dataset in ("mnist_offline", "mnist", "fashion_mnist"):
        options["encoding"] = config.encoding
    train = _first(load(config.dataset, split="train", **options), config.train_size, "train_size")
    test = _first(load(config.dataset, split="test", **options), config.test_size, "test_size")
    if config.batch_size > len(train):
        raise ValueError(
            f"batch_size: expected at most the {len(train)} training examples, got "
            f"{config.batch_size}"
        )
    return train, test


def _scale_sparse_weights(model: RecurrentClassifier, p_in: float, p_rec: float):
    """Sparse weights from 1/sqrt(n_pre) to 1/sqrt(p n_pre): the dense model's input variance."""
    return eqx.tree_at(
        lambda m: (m.input.synapses["weight"], m.recurrent.synapses["weight"]),
        model,
        (model.input.weight / math.sqrt(p_in), model.recurrent.weight / math.sqrt(p_rec)),
    )


def build_classifier(config: ClassifierConfig, n_in: int, n_out: int) -> AbstractClassifier:
    """The initial network of a run: dense, or sparse with a tight (static) or padded capacity.

    Args:
        config: the run's settings (``key(config.seed)`` draws the network).
        n_in: inputs (the dataset's ``num_inputs``).
        n_out: classes.

    Raises:
        ValueError: an explicit capacity smaller than a drawn row (the message names the
            projection, its capacity and the density).
    """
    key = jr.key(config.seed)
    if config.method == "dense":
        return dense_classifier(
            n_in,
            n_out,
            n_hidden=config.hidden,
            neuron=config.neuron,
            weight_gain=config.weight_gain,
            key=key,
        )
    try:
        model = recurrent_classifier(
            n_in,
            n_out,
            n_hidden=config.hidden,
            neuron=config.neuron,
            p_in=config.p_in,
            p_rec=config.p_rec,
            capacity_in=config.capacity_in,
            capacity_rec=config.capacity_rec,
            weight_gain=config.weight_gain,
            key=key,
        )
    except ValueError as error:
        if "capacity" not in str(error):
            raise
        raise ValueError(
            f"capacity too small for the density: capacity_in={config.capacity_in} "
            f"(p_in={config.p_in}, {config.p_in * config.hidden:.1f} expected per input row), "
            f"capacity_rec={config.capacity_rec} (p_rec={config.p_rec}, "
            f"{config.p_rec * (config.hidden - 1):.1f} expected per row): {error}"
        ) from None
    if config.init == "fan_in":
        model = _scale_sparse_weights(model, config.p_in, config.p_rec)
    if config.capacity_in is None and config.capacity_rec is None:
        model = with_padding(model, config.spare_capacity)
    elif config.capacity_in is None or config.capacity_rec is None:
        padded = with_padding(model, config.spare_capacity)
        model = eqx.tree_at(
            lambda m: m.recurrent if config.capacity_in is not None else m.input,
            model,
            padded.recurrent if config.capacity_in is not None else padded.input,
        )
    return model


@functools.lru_cache(maxsize=16)
def _trainer(method: str, lr: float, l1: float) -> Trainer:
    return trainer(method, learning_rate=lr, l1_strength=l1)


def build_trainer(config: ClassifierConfig) -> Trainer:
    """The :func:`~jaxplastic.learning.trainer` of the run's method and hyperparameters.

    The same settings give the same (immutable) trainer object, so the jitted step, whose
    optimiser is a static argument, compiles once per model size for all runs of a process.
    """
    return _trainer(config.method, float(config.lr), float(config.l1))


class RunState(NamedTuple):
    """Where a run stands: everything needed to continue it exactly.

    Attributes:
        model: the network (its connectivity included).
        state: the :class:`~jaxplastic.learning.TrainState` (optimiser state, PRNG key, DEEP R
            signs).
        epoch: epochs completed.
        batch: batches of epoch ``epoch`` already trained on (its position in the data order).
        history: one dict of metrics per completed epoch.
        partial: running sums of the unfinished epoch (None at an epoch boundary).
    """

    model: AbstractClassifier
    state: TrainState
    epoch: int = 0
    batch: int = 0
    history: tuple[dict[str, Any], ...] = ()
    partial: dict[str, Any] | None = None


def init_run(config: ClassifierConfig, n_in: int, n_out: int) -> RunState:
    """A fresh run: the initial network and training state of ``config``."""
    model = build_classifier(config, n_in, n_out)
    state = build_trainer(config).init(model, key=jr.key(10_000 + config.seed))
    return RunState(model, state)


# -- the epoch loop --------------------------------------------------------------------------


def evaluate(
    model: AbstractClassifier,
    dataset: SpikeDataset,
    *,
    batch_size: int = 250,
    dt: float | None = None,
) -> float:
    """Accuracy of ``model`` on every example of ``dataset`` (in [0, 1]).

    Raises:
        ValueError: the dataset's input count differs from the model's.
    """
    if dataset.num_inputs != model.n_in:
        raise ValueError(
            f"the model has {model.n_in} inputs, the dataset {dataset.name!r} has "
            f"{dataset.num_inputs} per time step"
        )
    if dataset.num_classes > model.n_out:
        raise ValueError(
            f"the model has {model.n_out} outputs, the dataset {dataset.name!r} has "
            f"{dataset.num_classes} classes"
        )
    dt = dataset.dt if dt is None else dt
    correct = 0.0
    for spikes, labels in dataset.batches(batch_size, seed=0, shuffle=False):
        correct += float(accuracy(model, spikes, labels, dt=dt)) * len(labels)
    return correct / max(len(dataset), 1)


def _zero_sums() -> dict[str, Any]:
    return dict(loss=0.0, accuracy=0.0, rate_hz=0.0, batches=0, seconds=0.0, rewired=[[0] * 3] * 2)


def _synapses(model: AbstractClassifier) -> list[int]:
    if isinstance(model, RecurrentClassifier):
        return [int(model.input.num_synapses), int(model.recurrent.num_synapses)]
    return [int(np.count_nonzero(np.asarray(model.w_in))), int(np.count_nonzero(model.w_rec))]


def epoch_seed(config: ClassifierConfig, epoch: int) -> int:
    """The data-order seed of an epoch: ``1000 * seed + epoch``."""
    return 1000 * config.seed + epoch


def train_epochs(
    config: ClassifierConfig,
    run: RunState,
    train: SpikeDataset,
    test: SpikeDataset,
    *,
    on_batch: Callable[[RunState, TrainInfo], None] | None = None,
    on_epoch: Callable[[RunState, dict[str, Any]], None] | None = None,
    checkpoint_every: int | None = None,
    on_checkpoint: Callable[[RunState], None] | None = None,
) -> RunState:
    """Trains from ``run`` to the end of epoch ``config.epochs``; deterministic and resumable.

    Epoch ``e`` visits ``train.batches(config.batch_size, seed=1000 * seed + e,
    drop_remainder=True)`` in order, skipping the ``run.batch`` batches a resumed run has
    already done, so a run continued from any :class:`RunState` ends with the same weights as
    an uninterrupted one. After each epoch the test accuracy is measured and a metrics dict
    appended to the history: ``epoch`` (1-based), ``loss``, ``train_accuracy``, ``rate_hz``
    (means over the epoch's batches), ``test_accuracy``, ``seconds`` (training only),
    ``first_in_process`` (the first epoch a process runs: its time includes compilation),
    ``resumed_mid_epoch``, ``removed`` / ``added`` / ``shortfall`` (per projection, input and
    recurrent), ``synapses`` (after the epoch).

    Args:
        config: the run's settings.
        run: where to start (:func:`init_run` or :func:`load_run`).
        train, test: from :func:`load_data`.
        on_batch: called after every step with the new state and the step's info.
        on_epoch: called after every epoch with the state at the boundary and its metrics.
        checkpoint_every: also call ``on_checkpoint`` every this many batches inside an epoch.
        on_checkpoint: see ``checkpoint_every``.

    Returns:
        The final :class:`RunState`.

    Raises:
        NonFiniteLossError: a step's loss is NaN or infinite (the state of that step is not
            returned or passed to a callback).
        ValueError: the data do not fit the model.
    """
    if train.num_inputs != run.model.n_in or test.num_inputs != run.model.n_in:
        raise ValueError(
            f"the model has {run.model.n_in} inputs, the data {train.num_inputs} (train) and "
            f"{test.num_inputs} (test)"
        )
    step = build_trainer(config).step
    model, state = run.model, run.state
    history = list(run.history)
    n_batches = train.num_batches(config.batch_size, drop_remainder=True)
    if n_batches == 0:
        raise ValueError(
            f"batch_size: expected at most the {len(train)} training examples, got "
            f"{config.batch_size}"
        )
    for epoch in range(run.epoch, config.epochs):
        skip = run.batch if epoch == run.epoch else 0
        sums = dict(run.partial) if (epoch == run.epoch and run.partial) else _zero_sums()
        rewired = np.asarray(sums["rewired"], np.int64)
        batches: Iterator = train.batches(
            config.batch_size, seed=epoch_seed(config, epoch), drop_remainder=True
        )
        start = time.perf_counter()
        for i, batch in enumerate(batches):
            if i < skip:
                continue
            new_model, new_state, info = step(model, state, batch)
            loss = float(info.loss)
            if not math.isfinite(loss):
                raise NonFiniteLossError(epoch, i, loss)
            model, state = new_model, new_state
            sums["loss"] += loss
            sums["accuracy"] += float(info.accuracy)
            sums["rate_hz"] += float(info.rate_hz)
            sums["batches"] += 1
            rewired += np.asarray([list(map(int, info.input)), list(map(int, info.recurrent))])
            if on_batch is not None:
                on_batch(RunState(model, state, epoch, i + 1, tuple(history), None), info)
            if checkpoint_every and on_checkpoint and (i + 1) % checkpoint_every == 0:
                if i + 1 < n_batches:
                    partial = dict(sums, rewired=rewired.tolist())
                    partial["seconds"] += time.perf_counter() - start
                    on_checkpoint(RunState(model, state, epoch, i + 1, tuple(history), partial))
        seconds = sums["seconds"] + time.perf_counter() - start
        n = max(sums["batches"], 1)
        record = dict(
            epoch=epoch + 1,
            loss=sums["loss"] / n,
            train_accuracy=sums["accuracy"] / n,
            rate_hz=sums["rate_hz"] / n,
            test_accuracy=evaluate(model, test),
            seconds=seconds,
            resumed_mid_epoch=bool(skip),
            first_in_process=epoch == run.epoch,
            removed=rewired[:, 0].tolist(),
            added=rewired[:, 1].tolist(),
            shortfall=rewired[:, 2].tolist(),
            synapses=_synapses(model),
        )
        history.append(record)
        run = RunState(model, state, epoch + 1, 0, tuple(history), None)
        if on_epoch is not None:
            on_epoch(run, record)
    return run


# -- checkpoints -----------------------------------------------------------------------------


def save_run(path: str | Path, config: ClassifierConfig, run: RunState, **extra) -> Path:
    """Writes the whole state of a run to one checkpoint, atomically (see
    :func:`jaxplastic.save_checkpoint`): model (connectivity included), optimiser state,
    DEEP R signs, PRNG key, and in its metadata the configuration, the epoch, the position in
    the epoch's data order and the metrics so far, with a format version."""
    metadata = dict(
        format=RUN_FORMAT,
        version=RUN_FORMAT_VERSION,
        config=config.to_dict(),
        n_in=run.model.n_in,
        n_out=run.model.n_out,
        epoch=run.epoch,
        batch=run.batch,
        history=list(run.history),
        partial=run.partial,
        **extra,
    )
    return save_checkpoint(path, {"model": run.model, "state": run.state}, metadata=metadata)


def read_run_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a run checkpoint, checked for its format and version.

    Raises:
        CheckpointError: missing, unreadable, not a run checkpoint, or another version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with zipfile.ZipFile(path) as zf:
            metadata = _read_header(zf, path).get("metadata", {})
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({exc})") from exc
    if metadata.get("format") != RUN_FORMAT:
        raise CheckpointError(
            f"{path}: not a training-run checkpoint (format {metadata.get('format')!r})"
        )
    if metadata.get("version") != RUN_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: training-run format version {metadata.get('version')}, this jaxplastic "
            f"reads version {RUN_FORMAT_VERSION}"
        )
    return metadata


def config_differences(a: ClassifierConfig, b: ClassifierConfig) -> list[str]:
    """``"name: a_value != b_value"`` for every setting that differs and matters for resuming."""
    da, db = a.to_dict(), b.to_dict()
    return [
        f"{name}: {da[name]!r} != {db[name]!r}"
        for name in da
        if name not in _RESUMABLE_CHANGES and da[name] != db[name]
    ]


def load_run(
    path: str | Path, config: ClassifierConfig | None = None
) -> tuple[ClassifierConfig, RunState]:
    """Reads a run checkpoint written by :func:`save_run`.

    Args:
        path: the checkpoint.
        config: the settings of the run to continue: every setting but ``epochs`` must equal
            the checkpoint's. None: the checkpoint's own.

    Returns:
        ``(config, run)``, ``config`` being the one given (or the checkpoint's).

    Raises:
        CheckpointError: missing, truncated or corrupted file (checksums), another format
            version, or a checkpoint of different settings (the message lists them).
    """
    metadata = read_run_metadata(path)
    try:
        stored = ClassifierConfig.from_dict(metadata["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad configuration in the checkpoint ({exc})") from exc
    if config is None:
        config = stored
    differences = config_differences(stored, config)
    if differences:
        raise CheckpointError(
            f"{path}: the checkpoint is of a run with other settings (checkpoint != requested): "
            + "; ".join(differences)
        )
    template = init_run(config, int(metadata["n_in"]), int(metadata["n_out"]))
    tree, _ = load_checkpoint(path, {"model": template.model, "state": template.state})
    run = RunState(
        model=tree["model"],
        state=tree["state"],
        epoch=int(metadata["epoch"]),
        batch=int(metadata["batch"]),
        history=tuple(metadata["history"]),
        partial=metadata["partial"],
    )
    return config, run


# -- export ----------------------------------------------------------------------------------


def _coo(conn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    post = np.asarray(conn.post)
    alive = post != conn.n_post
    pre = np.broadcast_to(np.arange(post.shape[0])[:, None], post.shape)
    weight = np.asarray(conn.weight)
    return (
        pre[alive].astype(np.int32),
        post[alive].astype(np.int32),
        weight[alive],
    )


def to_numpy(model: AbstractClassifier) -> dict[str, np.ndarray]:
    """A classifier as plain numpy arrays (no objects, no pickles), for other tools.

    Connectivity is given as COO triplets per projection, for dense models too (every entry):
    ``input_pre``, ``input_post``, ``input_weight`` (``int32, int32, float [synapses]``, pre in
    ``[0, n_in)``, post in ``[0, n_hidden)``) and ``recurrent_pre``, ``recurrent_post``,
    ``recurrent_weight`` (hidden -> hidden); so the input weight matrix is
    ``W[input_pre, input_post] = input_weight``. Also: ``w_out [hidden, out]``, ``b_out
    [out]``, ``n_in``, ``n_hidden``, ``n_out``, ``kind`` (``"sparse"`` or ``"dense"``),
    ``neuron`` (``"lif"``/``"alif"``) with its parameters ``neuron_<name>`` (ms, threshold),
    ``tau_out`` (ms), ``format`` and ``format_version``. Sparse models add ``input_capacity``
    and ``recurrent_capacity`` (row slots) and the raw slot arrays ``input_slots_post``,
    ``input_slots_weight`` (``[pre, capacity]``, free slots hold ``n_post`` and 0).
    """
    out: dict[str, np.ndarray] = {
        "format": np.asarray(EXPORT_FORMAT),
        "format_version": np.asarray(EXPORT_FORMAT_VERSION, np.int32),
        "n_in": np.asarray(model.n_in, np.int32),
        "n_hidden": np.asarray(model.n_hidden, np.int32),
        "n_out": np.asarray(model.n_out, np.int32),
        "w_out": np.asarray(model.w_out),
        "b_out": np.asarray(model.b_out),
        "tau_out": np.asarray(float(model.tau_out)),
    }
    hidden = model.hidden
    out["neuron"] = np.asarray(type(hidden).__name__.lower())
    for field in dataclasses.fields(hidden):
        value = getattr(hidden, field.name)
        if isinstance(value, int | float | np.ndarray | jax.Array) and not isinstance(value, bool):
            out[f"neuron_{field.name}"] = np.asarray(value, np.float64)
        elif isinstance(value, str | bool):
            out[f"neuron_{field.name}"] = np.asarray(value)
    if isinstance(model, RecurrentClassifier):
        out["kind"] = np.asarray("sparse")
        for name, conn in (("input", model.input), ("recurrent", model.recurrent)):
            pre, post, weight = _coo(conn)
            out[f"{name}_pre"], out[f"{name}_post"], out[f"{name}_weight"] = pre, post, weight
            out[f"{name}_capacity"] = np.asarray(conn.capacity, np.int32)
            out[f"{name}_slots_post"] = np.asarray(conn.post).astype(np.int32)
            out[f"{name}_slots_weight"] = np.asarray(conn.weight)
    elif isinstance(model, DenseClassifier):
        out["kind"] = np.asarray("dense")
        for name, w in (("input", model.w_in), ("recurrent", model.w_rec)):
            w = np.asarray(w)
            pre, post = np.indices(w.shape).reshape(2, -1).astype(np.int32)
            out[f"{name}_pre"], out[f"{name}_post"], out[f"{name}_weight"] = pre, post, w.ravel()
        out["w_in"], out["w_rec"] = np.asarray(model.w_in), np.asarray(model.w_rec)
    else:
        raise TypeError(f"to_numpy: expected a classifier, got {type(model).__name__}")
    return out


def export_npz(model: AbstractClassifier, path: str | Path) -> Path:
    """Writes :func:`to_numpy` of ``model`` to ``path`` (``.npz``; read with
    ``numpy.load(path)``, no pickles). Returns the path written."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = to_numpy(model)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(path)
    return path
