"""`jaxplastic train`, `evaluate` and `export`: outputs, exact resumption, bad input.

Tiny settings throughout (16 hidden neurons, 15 steps, a few hundred digits), so the file
runs in about a minute or two on one core. Runs in this process share one compilation per
method (the trainer is cached by its settings). Only the test of the outputs draws
curves.png (0.3 s an epoch, a second more for matplotlib's import in a fresh process): the
other runs pass --no-plots, which changes nothing else (not the checkpoints, not the settings
a resumed run must match).
"""

import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxplastic import CheckpointError, save_checkpoint
from jaxplastic._cli import main
from jaxplastic.datasets import SpikeDataset, load
from jaxplastic.learning._experiment import (
    ClassifierConfig,
    NonFiniteLossError,
    evaluate,
    init_run,
    load_run,
    train_epochs,
)
from jaxplastic.models import DenseClassifier

pytestmark = pytest.mark.standard_promotion  # optax mixes Python floats and int32 counts

TINY = [
    "--hidden", "16", "--num-steps", "15", "--train-size", "96", "--test-size", "48",
    "--batch-size", "16", "--no-progress", "--no-plots",
]  # fmt: skip
# Explicit capacities: every sparse run has the same shapes whatever its seed, so all runs of
# one method share one compilation (the default, capacity from padding, is used by the
# README results and by test_default_capacity_comes_from_padding).
SPARSE = ["--p-in", "0.05", "--p-rec", "0.2", "--capacity-in", "12", "--capacity-rec", "12"]
METHOD_ARGS = {
    "dense": ["--method", "dense"],
    "static": ["--method", "static", *SPARSE],
    "deep_r": ["--method", "deep_r", *SPARSE, "--l1", "0.5", "--lr", "0.02"],
}


def _train(
    out: Path, *extra: str, method: str = "deep_r", epochs: int = 2, plots: bool = False
) -> int:
    tiny = [a for a in TINY if a != "--no-plots"] if plots else TINY
    return main(
        ["train", *tiny, *METHOD_ARGS[method], "--epochs", str(epochs), "--out", str(out), *extra]
    )


def _checkpoints(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("epoch_*.npz"))


def _leaves(tree) -> list[np.ndarray]:
    def data(x):
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return np.asarray(jax.random.key_data(x))
        return np.asarray(x)

    return [data(x) for x in jax.tree.leaves(tree)]


def _assert_same_run(a: Path, b: Path) -> None:
    """Two checkpoints hold bit-identical states and the same metrics (but wall times)."""
    _, ra = load_run(a)
    _, rb = load_run(b)
    assert (ra.epoch, ra.batch) == (rb.epoch, rb.batch)
    la, lb = _leaves((ra.model, ra.state)), _leaves((rb.model, rb.state))
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(x, y)

    def strip(history):
        return [
            {
                k: v
                for k, v in r.items()
                if k not in ("seconds", "resumed_mid_epoch", "first_in_process")
            }
            for r in history
        ]

    assert strip(ra.history) == strip(rb.history)


# -- outputs -----------------------------------------------------------------------------------


def test_train_writes_metrics_plots_and_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--epochs", "3", "--keep", "2", plots=True) == 0
    printed = capsys.readouterr().out
    for epoch in (1, 2, 3):
        assert f"epoch {epoch}/3: loss" in printed
    assert "rewired in" in printed and "test" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "done" and len(metrics["epochs"]) == 3
    assert metrics["config"]["method"] == "deep_r" and metrics["config"]["hidden"] == 16
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,loss,train_accuracy,test_accuracy") and len(rows) == 4
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Only the newest two checkpoints are kept; no temporary file is left behind.
    assert [p.name for p in _checkpoints(out)] == ["epoch_0002.npz", "epoch_0003.npz"]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]

    # DEEP R conserved the synapse count of both projections, and rewired.
    initial = metrics["model"]["synapses_initial"]
    assert all(r["synapses"] == initial for r in metrics["epochs"])
    assert sum(r["removed"][0] for r in metrics["epochs"]) > 0
    for r in metrics["epochs"]:
        assert r["removed"] == r["added"] and r["shortfall"] == [0, 0]

    # The reported test accuracy is that of the checkpointed model, recomputed here by hand.
    config, run = load_run(_checkpoints(out)[-1])
    test = load("mnist_offline", split="test", num_steps=15)
    order = np.sort(np.asarray(jax.random.permutation(jax.random.key(0), len(test)))[:48])
    spikes, labels = next(test.subset(order).batches(48, seed=0, shuffle=False))
    predicted = np.argmax(np.asarray(run.model(jnp.asarray(spikes))), axis=-1)
    assert metrics["epochs"][-1]["test_accuracy"] == pytest.approx(np.mean(predicted == labels))


# -- exact resumption --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dense", "static", "deep_r"])
def test_resume_reaches_the_same_state_as_an_uninterrupted_run(tmp_path, method):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(straight, method=method, epochs=3) == 0
    assert _train(resumed, method=method, epochs=1) == 0
    assert _train(resumed, "--resume", method=method, epochs=3) == 0
    _assert_same_run(_checkpoints(straight)[-1], _checkpoints(resumed)[-1])
    # Same seed, same result; another seed, another network.
    other = tmp_path / "other"
    assert _train(other, "--seed", "1", method=method, epochs=1) == 0
    _, a = load_run(_checkpoints(resumed)[0])
    _, b = load_run(_checkpoints(other)[0])
    assert not np.array_equal(np.asarray(a.model.w_out), np.asarray(b.model.w_out))


def test_resume_from_the_middle_of_an_epoch(tmp_path):
    """A checkpoint inside an epoch stores its position in the data order."""
    straight, partial = tmp_path / "straight", tmp_path / "partial"
    assert _train(straight, "--checkpoint-every", "4", "--keep", "10") == 0
    names = [p.name for p in _checkpoints(straight)]
    assert "epoch_0001_batch_000004.npz" in names  # 6 batches per epoch: one inside each
    (partial / "checkpoints").mkdir(parents=True)
    middle = straight / "checkpoints" / "epoch_0001_batch_000004.npz"
    (partial / "checkpoints" / middle.name).write_bytes(middle.read_bytes())
    _, run = load_run(middle)
    assert (run.epoch, run.batch) == (1, 4) and run.partial["batches"] == 4
    assert _train(partial, "--resume") == 0
    _assert_same_run(_checkpoints(straight)[-1], _checkpoints(partial)[-1])


def test_a_killed_run_resumes_to_the_same_final_weights(tmp_path):
    """Kill a `jaxplastic train` process after its first epoch's checkpoint, resume it, and
    compare with an uninterrupted run: every leaf of model and training state identical."""
    args = [*TINY, "--train-size", "320", *METHOD_ARGS["deep_r"], "--epochs", "6"]
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-u", "-m", "jaxplastic._cli", "train", *args, "--out", str(killed)]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    process = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    output = []
    with process.stdout:
        for line in process.stdout:
            output.append(line)
            if "saved epoch_0001.npz" in line:
                process.send_signal(signal.SIGKILL)
                break
        process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL, "".join(output)
    done = [p.name for p in _checkpoints(killed)]
    assert "epoch_0001.npz" in done and "epoch_0006.npz" not in done, done
    status = json.loads((killed / "metrics.json").read_text())["status"]
    assert status == "running"

    assert main(["train", *args, "--out", str(killed), "--resume"]) == 0
    straight = tmp_path / "straight"
    assert main(["train", *args, "--out", str(straight)]) == 0
    _assert_same_run(_checkpoints(straight)[-1], _checkpoints(killed)[-1])
    assert _checkpoints(killed)[-1].name == "epoch_0006.npz"


# -- evaluate and export -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    with jax.numpy_dtype_promotion("standard"):
        assert _train(out, epochs=1) == 0
    return out


def test_evaluate_matches_the_training_metrics(trained_run, tmp_path, capsys):
    capsys.readouterr()
    result = tmp_path / "eval.json"
    assert main(["evaluate", str(trained_run), "--json", str(result)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    evaluated = json.loads(result.read_text())
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert evaluated["examples"] == 48 and evaluated["epoch"] == 1
    assert evaluated["accuracy"] == pytest.approx(metrics["epochs"][-1]["test_accuracy"])


def test_export_gives_plain_arrays_of_the_same_network(trained_run, tmp_path):
    path = tmp_path / "net.npz"
    assert main(["export", str(trained_run), str(path)]) == 0
    _, run = load_run(_checkpoints(trained_run)[-1])
    model = run.model
    with np.load(path, allow_pickle=False) as f:
        arrays = dict(f)
    assert str(arrays["format"]) == "jaxplastic-classifier" and str(arrays["kind"]) == "sparse"
    n_in, n_hidden = int(arrays["n_in"]), int(arrays["n_hidden"])
    dense = {}
    for name, n_pre, conn in (
        ("input", n_in, model.input),
        ("recurrent", n_hidden, model.recurrent),
    ):
        pre, post, weight = arrays[f"{name}_pre"], arrays[f"{name}_post"], arrays[f"{name}_weight"]
        assert pre.dtype == post.dtype == np.int32 and len(pre) == int(conn.num_synapses)
        assert len(set(zip(pre.tolist(), post.tolist(), strict=True))) == len(pre)  # no duplicate
        w = np.zeros((n_pre, n_hidden), weight.dtype)
        w[pre, post] = weight
        dense[name] = w
    # The dense network rebuilt from the exported arrays (dense matrix products, no ragged
    # propagation) predicts exactly what the sparse model does.
    assert str(arrays["neuron"]) == "lif"
    rebuilt = DenseClassifier(
        dense["input"], dense["recurrent"], arrays["w_out"], arrays["b_out"], model.hidden,
        tau_out=float(arrays["tau_out"]),
    )  # fmt: skip
    spikes, _ = next(load("mnist_offline", split="test", num_steps=15).batches(32, seed=0))
    np.testing.assert_allclose(
        np.asarray(rebuilt(jnp.asarray(spikes))), np.asarray(model(jnp.asarray(spikes))),
        rtol=1e-5, atol=1e-5,
    )  # fmt: skip
    assert float(arrays["neuron_v_threshold"]) == pytest.approx(0.61)


def test_dense_export_lists_every_entry(tmp_path):
    from jaxplastic.learning import export_npz

    model = init_run(ClassifierConfig(method="dense", hidden=8), 6, 3).model
    with np.load(export_npz(model, tmp_path / "dense"), allow_pickle=False) as f:
        arrays = dict(f)
    assert str(arrays["kind"]) == "dense"
    w = np.full((6, 8), np.nan, np.float32)
    w[arrays["input_pre"], arrays["input_post"]] = arrays["input_weight"]
    np.testing.assert_array_equal(w, np.asarray(model.w_in))
    np.testing.assert_array_equal(arrays["w_rec"], np.asarray(model.w_rec))
    assert arrays["recurrent_pre"].shape == (64,)


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--dataset", "cifar"], "invalid choice: 'cifar'"),
        (["train", "--p-in", "0"], "expected a density in (0, 1]"),
        (["train", "--p-rec", "1.5"], "expected a density in (0, 1]"),
        (["train", "--p-in", "nan"], "expected a finite number"),
        (["train", "--hidden", "0"], "expected an integer >= 1"),
        (["train", "--method", "sparse"], "invalid choice: 'sparse'"),
        (["evaluate"], "the following arguments are required: checkpoint"),
    ],
)
def test_bad_arguments_exit_nonzero_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def _fails(argv, capsys, message, code=2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "error" in err and message in err, err
    return err


def test_capacity_too_small_for_the_density(tmp_path, capsys):
    argv = ["train", *TINY, "--method", "static", "--p-in", "0.5", "--capacity-in", "2"]
    err = _fails([*argv, "--out", str(tmp_path)], capsys, "capacity too small for the density")
    assert "capacity_in=2" in err and "p_in=0.5" in err


def test_batch_larger_than_the_training_set(tmp_path, capsys):
    argv = ["train", *TINY, "--batch-size", "500", "--out", str(tmp_path)]
    _fails(argv, capsys, "batch_size: expected at most the 96 training examples, got 500")


def test_missing_dataset_files(tmp_path, capsys):
    argv = [
        "train",
        "--dataset",
        "shd",
        "--data-dir",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path),
    ]
    _fails(argv, capsys, "shd_train.h5")


def test_diverging_loss_stops_with_a_message_and_no_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *TINY, "--method", "dense", "--weight-gain", "1e37", "--out", str(out)]
    _fails(argv, capsys, "the training loss became", code=3)
    assert _checkpoints(out) == []


def test_non_finite_loss_is_raised_by_the_loop():
    config = ClassifierConfig(method="dense", hidden=8, epochs=1, batch_size=4, num_steps=5)
    run = init_run(config, 6, 3)
    run = run._replace(model=run.model.__class__(
        run.model.w_in, run.model.w_rec, jnp.full_like(run.model.w_out, jnp.nan),
        run.model.b_out, run.model.hidden,
    ))  # fmt: skip
    data = _arrays_dataset(np.ones((8, 5, 6), np.uint8), np.arange(8) % 3)
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 1, batch 1"):
        train_epochs(config, run, data, data)


def _arrays_dataset(spikes, labels, num_classes=3) -> SpikeDataset:
    return SpikeDataset(
        name="arrays", split="test", num_inputs=spikes.shape[-1], num_classes=num_classes,
        num_steps=spikes.shape[1], dt=1.0, encoding="given", size=len(labels),
        read=lambda idx: (spikes[idx], labels[idx]), encode=lambda x, idx, seed: x,
        labels=labels.astype(np.int32),
    )  # fmt: skip


def test_data_of_the_wrong_shape_is_refused():
    config = ClassifierConfig(method="dense", hidden=8, epochs=1, batch_size=4, num_steps=5)
    run = init_run(config, 6, 3)
    wrong = _arrays_dataset(np.ones((8, 5, 7), np.uint8), np.arange(8) % 3)
    with pytest.raises(ValueError, match="the model has 6 inputs, the dataset 'arrays' has 7"):
        evaluate(run.model, wrong)
    with pytest.raises(ValueError, match=r"the model has 6 inputs, the data 7 \(train\)"):
        train_epochs(config, run, wrong, wrong)
    too_many = _arrays_dataset(np.ones((8, 5, 6), np.uint8), np.arange(8) % 3, num_classes=5)
    with pytest.raises(ValueError, match="3 outputs, the dataset 'arrays' has 5 classes"):
        evaluate(run.model, too_many)


def test_settings_are_validated():
    with pytest.raises(ValueError, match=r"p_in: expected a density in \(0, 1\], got 0"):
        ClassifierConfig(p_in=0)
    with pytest.raises(ValueError, match="dataset: expected one of"):
        ClassifierConfig(dataset="cifar")
    with pytest.raises(ValueError, match="hidden: expected an integer >= 1"):
        ClassifierConfig(hidden=0)


def test_a_run_folder_is_not_overwritten_without_asking(trained_run, capsys):
    _fails(["train", *TINY, "--out", str(trained_run)], capsys, "pass --resume to continue it")


def test_resume_with_other_settings_is_refused(trained_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    (copy / "checkpoints").mkdir(parents=True)
    for p in _checkpoints(trained_run):
        (copy / "checkpoints" / p.name).write_bytes(p.read_bytes())
    argv = [
        "train",
        *TINY,
        *METHOD_ARGS["deep_r"],
        "--hidden",
        "24",
        "--out",
        str(copy),
        "--resume",
    ]
    err = _fails(argv, capsys, "the checkpoint is of a run with other settings")
    assert "hidden: 16 != 24" in err


def test_corrupted_and_foreign_checkpoints_give_clear_errors(trained_run, tmp_path, capsys):
    good = _checkpoints(trained_run)[-1]
    # One flipped byte inside an array: the checksum catches it.
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(".npy"))
        data_start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[data_start + info.compress_size - 1] ^= 0xFF
    corrupted = tmp_path / "corrupted.npz"
    corrupted.write_bytes(bytes(data))
    err = _fails(["evaluate", str(corrupted)], capsys, "leaf ['model']")
    assert "corrupted (checksum mismatch)" in err or "unreadable (Bad CRC-32" in err
    # A file cut short (a half-written copy).
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: len(data) // 2])
    _fails(["evaluate", str(truncated)], capsys, "unreadable or truncated checkpoint")
    # A checkpoint, but not of a training run.
    foreign = save_checkpoint(tmp_path / "foreign", {"x": jnp.zeros(3)})
    _fails(["export", str(foreign), str(tmp_path / "x.npz")], capsys, "not a training-run")
    _fails(["evaluate", str(tmp_path / "missing.npz")], capsys, "no such checkpoint")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_run(tmp_path / "missing.npz")


def test_a_failed_checkpoint_write_leaves_the_previous_one_intact(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_save = np.save
    calls = {"n": 0}

    def failing_save(file, arr, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > calls["limit"]:
            file.write(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(file, arr, *args, **kwargs)

    # Count the arrays of one checkpoint, then fail in the middle of the second one.
    assert _train(out, epochs=1) == 0
    capsys.readouterr()
    with zipfile.ZipFile(_checkpoints(out)[0]) as zf:
        per_checkpoint = sum(name.endswith(".npy") for name in zf.namelist())
    calls["limit"] = per_checkpoint + per_checkpoint // 2
    monkeypatch.setattr(np, "save", failing_save)
    fresh = tmp_path / "fresh"
    err = _fails([*_train_argv(fresh, epochs=2)], capsys, "No space left on device")
    assert "epoch_0001.npz" in err
    monkeypatch.setattr(np, "save", real_save)
    assert [p.name for p in _checkpoints(fresh)] == ["epoch_0001.npz"]
    assert [p.name for p in (fresh / "checkpoints").iterdir()] == ["epoch_0001.npz"]
    load_run(_checkpoints(fresh)[0])  # complete and verified
    assert main([*_train_argv(fresh, epochs=2), "--resume"]) == 0
    straight = tmp_path / "straight"
    assert main(_train_argv(straight, epochs=2)) == 0
    _assert_same_run(_checkpoints(straight)[-1], _checkpoints(fresh)[-1])


def _train_argv(out: Path, epochs: int) -> list[str]:
    return ["train", *TINY, *METHOD_ARGS["deep_r"], "--epochs", str(epochs), "--out", str(out)]


def test_default_capacity_comes_from_padding():
    config = ClassifierConfig(method="deep_r", hidden=16, p_in=0.05, p_rec=0.2, padding=1.5)
    model = init_run(config, 784, 10).model
    for conn in (model.input, model.recurrent):
        longest = int(np.max(np.asarray(conn.row_lengths)))
        assert conn.capacity == int(np.ceil(2.5 * longest))
    static = init_run(ClassifierConfig(method="static", hidden=16, p_in=0.05), 784, 10).model
    assert static.input.capacity == int(np.max(np.asarray(static.input.row_lengths)))
    # fan-in initialisation: weights of std 1/sqrt(p n_pre), the dense model's input variance.
    weights = np.asarray(model.input.weight)[np.asarray(model.input.alive)]
    assert 0.7 < np.std(weights) * np.sqrt(0.05 * 784) < 1.3


def test_console_commands_are_registered():
    from jaxplastic._cli import build_parser

    help_text = build_parser().format_help()
    for command in ("train", "evaluate", "export"):
        assert command in help_text


def test_results_table_script_summarizes_runs(tmp_path):
    """examples/train_table.py: mean, sample sd and median epoch time over the seeds' runs."""
    import runpy

    script = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "train_table.py"))
    accuracies = [0.9, 0.8, 0.85]
    for seed, acc in enumerate(accuracies):
        folder = tmp_path / script["folder_name"]("DEEP R 1/1", seed)
        folder.mkdir()
        epochs = [{"synapses": [10, 2]}]
        summary = {
            "final_test_accuracy": acc,
            "median_epoch_seconds": 2.0 + seed,
            "first_epoch_seconds": 9.0,
            "removed_per_epoch": [4.0, 1.0 + seed],
            "shortfall": [0, 0],
        }
        metrics = {
            "status": "done",
            "config": {"seed": seed, "epochs": 1},
            "model": {"synapses_initial": [10, 2], "slots": [30, 6]},
            "summary": summary,
            "epochs": epochs,
        }
        (folder / "metrics.json").write_text(json.dumps(metrics))
    (row,) = script["summarize"](tmp_path, 3)
    assert row["name"] == "DEEP R 1/1" and row["seeds"] == [0, 1, 2]
    assert row["mean"] == pytest.approx(85.0)
    assert row["sd"] == pytest.approx(np.std([90, 80, 85], ddof=1))
    assert row["epoch_seconds"] == 3.0 and row["removed_per_epoch"] == [4.0, 2.0]
    assert "| DEEP R 1/1 | **85.00 ± 5.00** | 90.0, 80.0, 85.0 | 3.0 |" in script["markdown"]([row])
