"""End-to-end training: CLI, run directories, checkpoints, exact resume, learning toward NE*."""

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import kunlun_jax.train.experiment as experiment
from kunlun_jax.cli import main
from kunlun_jax.config import load_config
from kunlun_jax.data.spec import BatchError
from kunlun_jax.train.checkpoint import Checkpointer
from kunlun_jax.train.experiment import Layout, build_experiment
from kunlun_jax.train.loop import RunExistsError, prepare_run_dir, train
from kunlun_jax.train.preemption import PREEMPTED_EXIT_CODE
from tests.conftest import FAST_TINY, run_python
from tests.parallel.bad_batch_on_one_host import CorruptedAt

# Small and fast: one CompSkip pair, short histories, a few steps.
FAST = [*FAST_TINY, "train.log_every=2", "train.checkpoint_every=3"]


def _train_args(runs: Path, name: str, *extra: str) -> list[str]:
    args = ["train", "--config", "tiny", "--runs-dir", str(runs), "--name", name, "--no-progress"]
    return args + [a for o in (*FAST, *extra) for a in ("--set", o)]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A CLI run with its progress shown (an eval at step 3): the run directory, the arguments
    and what it printed, with stderr no terminal (as in a log file or a batch job)."""
    runs = tmp_path_factory.mktemp("runs")
    args = [a for a in _train_args(runs, "r", "train.eval_every=3") if a != "--no-progress"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(args) == 0
    return runs / "r", args, printed.getvalue()


def test_progress_off_a_terminal_is_a_line_per_log_interval(cli_run):
    """No carriage-return progress bar in a log: a line every train.log_every (2) steps with the
    loss, gradient norm and speed, and the mid-run eval's metrics."""
    *_, printed = cli_run
    assert "\r" not in printed
    steps = re.findall(
        r"^tiny step (\d+)/6: loss [0-9.]+, grad_norm [0-9.e+-]+, [0-9.]+ steps/s$", printed, re.M
    )
    assert steps == ["2", "4", "6"], printed
    assert re.search(
        r"^tiny step 3 eval: ne [0-9.]+, auc [0-9.]+, log_loss [0-9.]+$", printed, re.M
    )


def test_train_writes_a_complete_run_directory(cli_run):
    run_dir, *_ = cli_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("ne", "auc", "log_loss", "calibration", "examples_per_sec", "oracle_ne"):
        assert np.isfinite(metrics[key]), key
    assert metrics["count"] == 512
    assert json.loads((run_dir / "config.json").read_text())["model"]["d_model"] == 16
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert Checkpointer(run_dir / "checkpoints").latest_step() == 6


def test_existing_run_is_never_overwritten_without_asking(cli_run, capsys):
    run_dir, args, _ = cli_run
    before = (run_dir / "metrics.json").read_text()
    assert main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (run_dir / "metrics.json").read_text() == before


def _no_fresh_state(monkeypatch):
    """Creating a fresh train state fails: what restores a checkpoint must not make one (it
    would hold a second copy of the state beside the restored one)."""

    def refuse(self, example):
        raise AssertionError("a fresh train state was created beside the restored one")

    monkeypatch.setattr(Layout, "initial_state", refuse)


def test_eval_cli_reproduces_the_final_metrics(cli_run, capsys, tmp_path, monkeypatch):
    run_dir, *_ = cli_run
    _no_fresh_state(monkeypatch)
    capsys.readouterr()
    predictions = tmp_path / "predictions.csv"
    assert main(["eval", str(run_dir), "--predictions", str(predictions)]) == 0
    out = json.loads(capsys.readouterr().out)
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert out["step"] == 6
    assert out["ne"] == pytest.approx(trained["ne"], rel=1e-6)
    assert out["auc"] == pytest.approx(trained["auc"], rel=1e-6)
    # Every eval example once, in order, with the probabilities the metrics were computed from.
    rows = np.loadtxt(predictions, delimiter=",", skiprows=1)
    assert predictions.read_text().splitlines()[0] == "index,click_label,click_prob"
    np.testing.assert_array_equal(rows[:, 0], np.arange(512))
    label, p = rows[:, 1], rows[:, 2]
    assert set(np.unique(label)) <= {0.0, 1.0}
    assert np.all((p > 0) & (p < 1))
    log_loss = -np.mean(label * np.log(p) + (1 - label) * np.log(1 - p))
    assert log_loss == pytest.approx(out["log_loss"], rel=1e-5)
    before = predictions.read_text()
    assert main(["eval", str(run_dir), "--predictions", str(predictions)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert predictions.read_text() == before
    # Several runs (e.g. seeds): each run's metrics and their mean ± std.
    copy = shutil.copytree(run_dir, tmp_path / "copy")
    assert main(["eval", str(run_dir), str(copy)]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["summary"]["ne"]["mean"] == pytest.approx(out["ne"], rel=1e-9)
    assert both["summary"]["ne"]["std"] == 0.0
    assert both["summary"]["ne"]["n"] == 2
    assert main(["eval", str(run_dir), f"{run_dir}/"]) == 2  # one run is not two seeds
    assert "given twice" in capsys.readouterr().err
    assert main(["eval", str(run_dir), str(copy), "--predictions", str(tmp_path / "x.csv")]) == 2
    assert "--predictions takes one run directory" in capsys.readouterr().err


def test_ceilings_report_a_trained_runs_embeddings(cli_run, capsys, monkeypatch, tmp_path):
    """`kunlun-jax data ceilings --run DIR`: the run's tables restored (no fresh state), their
    spread and learned item geometry; 6 Adagrad steps barely move the 0.05-std tables."""
    run_dir, *_ = cli_run
    out = tmp_path / "ceilings.json"
    _no_fresh_state(monkeypatch)
    capsys.readouterr()
    # The run has shorter histories than `tiny`: its numbers do not sit beside tiny's ceilings.
    assert main(["data", "ceilings", "--run", str(run_dir)]) == 2
    assert "trained in another synthetic world" in capsys.readouterr().err
    own = ["--config", str(run_dir / "config.json"), "--examples", "500", "--out", str(out)]
    assert main(["data", "ceilings", *own, "--run", str(run_dir)]) == 0
    assert f"run {run_dir} (step 6): item geometry" in capsys.readouterr().out
    (run,) = json.loads(out.read_text())["runs"]
    assert run["step"] == 6
    assert set(run["table_std"]) == {"user_id", "item_id", "item_category", "hour", "device"}
    assert all(abs(std - 0.05) < 0.01 for std in run["table_std"].values()), run
    assert abs(run["item_geometry"]) < 0.2


def test_resume_refuses_what_would_break_exact_resume(cli_run, tmp_path, capsys):
    """On a copy of the 6-step run: resuming to fewer steps than its checkpoint, or with a
    train setting that changes the optimizer state or the batches, is a clear error that
    leaves every checkpoint in place."""
    shutil.copytree(cli_run[0], tmp_path / "r")
    capsys.readouterr()
    assert main([*_train_args(tmp_path, "r", "train.batch_size=32"), "--resume"]) == 2
    assert "train.batch_size differs from the run's config" in capsys.readouterr().err
    assert main([*_train_args(tmp_path, "r", "train.steps=4"), "--resume"]) == 2
    assert "its checkpoint is at step 6; pass train.steps >= 6" in capsys.readouterr().err
    assert Checkpointer(tmp_path / "r" / "checkpoints").all_steps() == [3, 6]
    assert not (tmp_path / "r" / "corrupt_checkpoints").exists()


def test_eval_of_a_split_the_data_lacks_is_a_clear_error(cli_run, capsys):
    assert main(["eval", str(cli_run[0]), "--split", "test"]) == 2
    assert "synthetic data has the splits ['eval']" in capsys.readouterr().err


@pytest.mark.parametrize("name", [".", "..", "a/b", "/abs"])
def test_run_names_other_than_one_directory_are_refused(tmp_path, name):
    from kunlun_jax.config import ConfigError

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "keep.txt").write_text("the user's")
    with pytest.raises(ConfigError, match="must be one plain directory name"):
        prepare_run_dir(tmp_path / "runs", name, overwrite=True, resume=False)
    assert (tmp_path / "runs" / "keep.txt").read_text() == "the user's"


def test_overwrite_replaces_runs_only(tmp_path):
    (tmp_path / "Documents").mkdir()
    (tmp_path / "Documents" / "thesis.tex").write_text("the user's")
    with pytest.raises(RunExistsError, match="holds files but no run"):
        prepare_run_dir(tmp_path, "Documents", overwrite=True, resume=False)
    assert (tmp_path / "Documents" / "thesis.tex").read_text() == "the user's"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    assert not any(prepare_run_dir(tmp_path, "run", overwrite=True, resume=False).iterdir())


def test_a_run_that_fails_to_start_leaves_no_directory(tmp_path, capsys):
    assert main(_train_args(tmp_path, "r", "mesh.data=16")) == 2  # 8 devices
    assert "mesh" in capsys.readouterr().err
    assert not (tmp_path / "r").exists(), "the retry would find it and refuse"


def test_resume_restores_into_abstract_targets_or_starts_fresh(cli_run, tmp_path, monkeypatch):
    """A resume with a checkpoint restores it without creating a fresh state; one with none
    yet (killed before its first save) starts fresh and trains the straight run's numbers."""
    run_dir, *_ = cli_run
    straight = json.loads((run_dir / "metrics.json").read_text())
    cfg = load_config(str(run_dir / "config.json"))
    (tmp_path / "empty").mkdir()
    fresh = train(cfg, tmp_path / "empty", resume=True, progress=False)
    for key in ("ne", "auc", "log_loss"):
        assert fresh[key] == straight[key], key
    _no_fresh_state(monkeypatch)
    copy = shutil.copytree(run_dir, tmp_path / "copy")
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=8))
    assert train(longer, copy, resume=True, progress=False)["steps"] == 8
    assert Checkpointer(copy / "checkpoints").latest_step() == 8
    # The learning rate went on along the 6-step run's schedule, not a new 8-step one.
    assert load_config(str(copy / "config.json")).train.decay_steps == 6


def test_profile_steps_trace_the_window_and_leave_the_numbers_alone(cli_run, tmp_path, capsys):
    """train.profile_steps = [4, 8] on a resume of the step-6 run to 8 steps: the steps left
    of the window (6, 7) are traced into tb/ for xprof, the CLI says where, and the metrics
    equal those of the same resume without a trace."""
    run_dir, args, _ = cli_run
    plain = shutil.copytree(run_dir, tmp_path / "plain")
    cfg = load_config(str(run_dir / "config.json"))
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=8))
    untraced = train(longer, plain, resume=True, progress=False)
    shutil.copytree(run_dir, tmp_path / "traced")
    at = args.index("--runs-dir")
    resume = [*args[:at], "--runs-dir", str(tmp_path), "--name", "traced", *args[at + 4 :]]
    window = ["--set", "train.steps=8", "--set", "train.profile_steps=[4, 8]", "--resume"]
    assert main([*resume, *window]) == 0
    printed = capsys.readouterr().out
    log_dir = tmp_path / "traced" / "tb"
    assert f"tiny steps 6-7 traced: xprof --logdir {log_dir}" in printed, printed
    assert len(list(log_dir.glob("plugins/profile/*/*.xplane.pb"))) == 1
    assert not (plain / "tb" / "plugins").exists()
    traced = json.loads((tmp_path / "traced" / "metrics.json").read_text())
    for key in ("ne", "auc", "log_loss"):
        assert traced[key] == untraced[key], key


def test_a_failed_final_eval_loses_no_steps_and_a_rerun_resumes(cli_run, tmp_path, monkeypatch):
    """A 6-step run resumed to 8 steps whose final eval fails: the step-8 checkpoint was saved
    before the eval, and the 6-step run's metrics.json is gone (it would read as the 8-step
    run's). `train_or_read_back`, as a study or sweep re-run calls it, resumes that run (only
    the eval is left) rather than training it again from scratch."""
    from kunlun_jax.train import loop

    run_dir = shutil.copytree(cli_run[0], tmp_path / "r")
    cfg = load_config(str(run_dir / "config.json"))
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=8))

    def failing_eval(*args, **kwargs):
        raise OSError("eval data unreadable")

    with monkeypatch.context() as patch:
        patch.setattr(loop, "_evaluate", failing_eval)
        with pytest.raises(OSError, match="eval data unreadable"):
            train(longer, run_dir, resume=True, progress=False)
    assert Checkpointer(run_dir / "checkpoints").latest_step() == 8
    assert not (run_dir / "metrics.json").exists()
    longer = load_config(str(run_dir / "config.json"))  # the resumed run's, decay_steps 6
    assert loop.finished_run(run_dir, longer) is None
    (run_dir / "kept").touch()  # a retrain from scratch would replace the directory
    _no_fresh_state(monkeypatch)
    metrics, again, trained = loop.train_or_read_back(longer, tmp_path, "r")
    assert (again, trained, metrics["steps"]) == (run_dir, True, 8)
    assert (run_dir / "kept").exists()
    assert loop.train_or_read_back(longer, tmp_path, "r")[1:] == (run_dir, False)


def test_resume_refuses_when_only_quarantined_checkpoints_are_left(tmp_path):
    from kunlun_jax.train.checkpoint import CheckpointError

    (tmp_path / "corrupt_checkpoints" / "6-1").mkdir(parents=True)
    ckpt = Checkpointer(tmp_path / "checkpoints")
    with pytest.raises(CheckpointError, match="no checkpoint left to resume from"):
        ckpt.restore_latest_good(None, None)
    ckpt.close()


def test_running_out_of_memory_while_restoring_quarantines_nothing(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path / "checkpoints")
    (tmp_path / "checkpoints" / "6").mkdir()

    def restore(*args, **kwargs):
        raise RuntimeError("restore failed") from MemoryError("host memory")

    monkeypatch.setattr(ckpt._manager, "all_steps", lambda: [6])
    monkeypatch.setattr(ckpt._manager, "restore", restore)
    with pytest.raises(RuntimeError, match="restore failed"):
        ckpt.restore_latest_good(None, None)
    assert (tmp_path / "checkpoints" / "6").is_dir()
    assert not (tmp_path / "corrupt_checkpoints").exists()
    ckpt.close()


def test_bad_config_on_the_command_line_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "--runs-dir", str(tmp_path), "--set", "model.num_layer=3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown config key 'model.num_layer'" in err
    assert "num_layers" in err
    assert not any(tmp_path.iterdir()), "a failed config must not create a run directory"


def test_config_command_prints_the_resolved_config(capsys):
    assert main(["config", "--config", "small", "--set", "model.num_layers=6"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["num_layers"] == 6


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training exited early ({proc.returncode})"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_killed_run_resumes_to_identical_numbers(cli_run, tmp_path):
    """SIGKILL a real training process right after its step-3 checkpoint, resume it, and get
    bit-identical params and metrics to the uninterrupted run (the `cli_run` fixture)."""
    straight, *_ = cli_run
    # Evals every step (they do not touch the train state or data order) slow the run down
    # enough that the kill lands before the end.
    killed = _train_args(tmp_path, "killed", "train.eval_every=1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kunlun_jax.cli", *killed],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    checkpoints = tmp_path / "killed" / "checkpoints"
    try:
        _wait_for(checkpoints / "3", proc)  # orbax renames a finished save into place
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert Checkpointer(checkpoints).latest_step() < 6, "the kill came after the last step"

    assert main([*killed, "--resume"]) == 0
    resumed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    full = json.loads((straight / "metrics.json").read_text())
    for key in ("ne", "auc", "log_loss", "calibration"):
        assert resumed[key] == full[key], key
    exp = build_experiment(load_config("tiny", FAST))
    a = Checkpointer(straight / "checkpoints").restore(6, exp.state, exp.data_iter)[0]
    b = Checkpointer(checkpoints).restore(6, exp.state, exp.data_iter)[0]
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sigterm_finishes_the_step_saves_and_exits_for_a_resume(tmp_path, capsys):
    run_dir = tmp_path / "r"

    def preempt_once_training_starts():
        while not (run_dir / "config.json").exists():  # written once signals are caught
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=preempt_once_training_starts, daemon=True).start()
    assert main(_train_args(tmp_path, "r")) == PREEMPTED_EXIT_CODE
    out = capsys.readouterr().out
    assert "preempted by signal 15 after step 1: checkpoint saved" in out
    assert "--resume --name r" in out
    assert Checkpointer(run_dir / "checkpoints").latest_step() == 1
    assert not (run_dir / "metrics.json").exists()


def test_nan_guard_stops_with_a_report(tmp_path):
    from kunlun_jax.train.loop import NonFiniteError

    cfg = load_config("tiny", [*FAST, "train.learning_rate=1e30", "train.clip_norm=0"])
    run_dir = prepare_run_dir(tmp_path, "nan", overwrite=False, resume=False)
    with pytest.raises(NonFiniteError, match=r"step \d+: loss = .*non-finite gradients in"):
        train(cfg, run_dir, progress=False)


def test_a_bad_training_batch_stops_the_run_naming_its_step_and_field(tmp_path, monkeypatch):
    make_iterator = experiment.train_iterator
    monkeypatch.setattr(
        experiment, "train_iterator", lambda *a, **k: CorruptedAt(make_iterator(*a, **k), 2)
    )
    run_dir = prepare_run_dir(tmp_path, "bad", overwrite=False, resume=False)
    with pytest.raises(BatchError, match=r"^the batch of train step 2: batch field 'sparse'"):
        train(load_config("tiny", FAST), run_dir, progress=False)


def test_eval_batches_are_checked_and_a_failure_elsewhere_stops_every_host(monkeypatch):
    """Each host checks its rows of an eval batch; where another process's rows failed
    (processes_where says so), this one raises too, naming it, instead of entering the step."""
    exp = build_experiment(load_config("tiny", FAST), init_state=False)
    batch = exp.example
    assert exp.global_batch(batch)["label"].shape == batch["label"].shape
    bad = {**batch, "label": np.full_like(batch["label"], 2.0)}
    with pytest.raises(BatchError, match=r"^an eval batch: batch field 'label' must hold only"):
        exp.global_batch(bad)
    monkeypatch.setattr(experiment, "processes_where", lambda flag: [0, 3] if flag else [3])
    with pytest.raises(BatchError, match=r"^an eval batch failed validation on process 3 "):
        exp.global_batch(batch)
    with pytest.raises(BatchError, match=r"^an eval batch: batch field 'label'"):
        exp.global_batch(bad)


@pytest.mark.slow
def test_bucketed_histories_train_sharded_and_resume_exactly(tmp_path):
    """data.length_buckets on 2 devices: batches of several padded lengths train (one compile
    each), and a resume from the step-3 checkpoint reproduces the straight run's metrics. The
    run has two tasks (synthetic conversion and click, labels [B, 2] split over the devices)
    with MMoE heads: each task has its metrics, its label rate and its own Bayes-optimal NE
    (oracle_ne), in data.tasks order (the conversion's are the unprefixed ones)."""
    buckets = [
        *FAST,
        "data.synthetic.mean_history=1",
        "data.length_buckets=[2, 4]",
        "train.batch_size=8",
        "mesh.data=2",
        'data.tasks=["conversion", "click"]',
        "model.task_heads=mmoe",
    ]
    cfg = load_config("tiny", buckets)
    exp = build_experiment(cfg)
    shapes = {next(exp.data_iter)["seqs"]["click"]["item"].shape[1] for _ in range(6)}
    assert len(shapes) > 1, shapes
    run_dir = prepare_run_dir(tmp_path, "a", overwrite=False, resume=False)
    straight = train(cfg, run_dir, progress=False)
    for key in ("ne", "oracle_ne", "auc", "click/ne", "click/oracle_ne", "click/auc"):
        assert np.isfinite(straight[key]), key
    assert straight["oracle_ne"] != straight["click/oracle_ne"]
    assert straight["base_rate"] < straight["click/base_rate"]  # conversions need clicks
    shutil.copytree(run_dir, tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "6")  # as if killed after step 3's save
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    for key in ("ne", "auc", "log_loss", "click/ne", "click/auc", "click/log_loss"):
        assert resumed[key] == straight[key], key


@pytest.mark.slow
def test_training_tiny_approaches_the_bayes_optimal_ne(tmp_path):
    """`make train`'s command at 200 steps, as a user runs it: one CPU device, XLA's default
    code generation (the suite's compile-speed flag and 8 simulated devices would make its
    200 steps 2-3x slower). NE 0.850 (needs < 0.860)."""
    args = ["train", "--config", "tiny", "--runs-dir", str(tmp_path), "--name", "learn"]
    args += ["--no-progress", "--set", "train.steps=200", "--set", "data.num_eval=4096"]
    run_python("-m", "kunlun_jax.cli", *args, env={**os.environ, "XLA_FLAGS": ""})
    metrics = json.loads((tmp_path / "learn" / "metrics.json").read_text())
    assert metrics["mesh"] == {"data": 1, "fsdp": 1, "model": 1}
    assert metrics["ne"] < 0.9, metrics
    # At least a third of the way from NE = 1 (base rate) to the Bayes optimum NE*.
    assert (1 - metrics["ne"]) > (1 - metrics["oracle_ne"]) / 3, metrics
    assert metrics["auc"] > 0.7


def test_data_prepare_cli_and_training_on_movielens(tmp_path, capsys):
    src = Path(__file__).parent / "fixtures" / "ml-latest-small"
    out = tmp_path / "prepared"
    assert main(["data", "prepare", "movielens-latest-small", str(src), str(out)]) == 0
    assert (out / "manifest.json").is_file()
    assert main(["data", "prepare", "movielens-latest-small", str(src), str(out)]) == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    cfg = load_config(
        "movielens",
        [
            "data.source=movielens-latest-small",
            f"data.path={out}",
            "data.max_len=8",
            "model.d_model=16",
            "model.head_hidden=[16]",
            "train.steps=3",
            "train.batch_size=64",
            "mesh.data=2",  # labels [B, 2] split over two devices
            'data.tasks=["like", "love"]',  # multi-task: two labels, two head outputs
            "train.task_weights=[1.0, 0.5]",
        ],
    )
    run_dir = prepare_run_dir(tmp_path, "ml", overwrite=False, resume=False)
    metrics = train(cfg, run_dir, progress=False)
    assert np.isfinite(metrics["ne"])
    assert np.isfinite(metrics["love/ne"])
    assert "oracle_ne" not in metrics
    # NE is normalized by each task's training label rate (spec), not the evaluated split's.
    from kunlun_jax.data.pipeline import make_source

    train_rates = make_source(cfg.data, "train")[0].base_rates
    eval_rates = make_source(cfg.data, "eval")[0].base_rates
    assert (metrics["base_rate"], metrics["love/base_rate"]) == train_rates != eval_rates
    assert 0 < train_rates[1] < train_rates[0] < 1  # 5 stars is rarer than >= 4
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 0  # a multi-task run restores and evaluates
    again = json.loads(capsys.readouterr().out)
    assert again["love/ne"] == pytest.approx(metrics["love/ne"], rel=1e-6)


def test_a_run_older_than_a_config_field_resumes_with_its_default(tmp_path):
    """A run's config.json from before a field existed loads (as --config too) with the
    field's default, which is what the run used: the resume check passes."""
    from kunlun_jax.config import to_dict
    from kunlun_jax.train.loop import _resumed_config

    config = load_config("tiny", FAST)
    saved = to_dict(config)
    del saved["model"]["seq_attention"], saved["train"]["keep_best"]
    del saved["train"]["decay_steps"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert load_config(str(tmp_path / "config.json")) == config
    assert _resumed_config(tmp_path, config) == config


def test_a_resume_to_more_steps_keeps_the_runs_schedule_length(tmp_path):
    from kunlun_jax.config import ConfigError, to_dict
    from kunlun_jax.train.loop import _resumed_config

    (tmp_path / "config.json").write_text(json.dumps(to_dict(load_config("tiny", FAST))))
    longer = _resumed_config(tmp_path, load_config("tiny", [*FAST, "train.steps=9"]))
    assert (longer.train.steps, longer.train.decay_steps) == (9, 6)
    same = load_config("tiny", [*FAST, "train.steps=9", "train.decay_steps=6"])
    assert _resumed_config(tmp_path, same) == same
    other = load_config("tiny", [*FAST, "train.steps=9", "train.decay_steps=9"])
    with pytest.raises(ConfigError, match=r"train\.decay_steps differs"):
        _resumed_config(tmp_path, other)


def test_finished_runs_are_read_back_and_other_runs_never_replaced(tmp_path):
    from kunlun_jax.config import to_dict
    from kunlun_jax.train.loop import finished_run

    config = load_config("tiny", FAST)
    run = tmp_path / "r"
    assert finished_run(run, config) is None  # absent
    run.mkdir()
    assert finished_run(run, config) is None  # empty
    (run / "config.json").write_text(json.dumps(to_dict(config)))
    assert finished_run(run, config) is None  # unfinished: retrain
    (run / "metrics.json").write_text('{"ne": 0.9, "steps": 3}')
    assert finished_run(run, config) is None  # an earlier end's metrics (3 of 6 steps)
    (run / "metrics.json").write_text('{"ne": 0.9, "steps": 6}')
    assert finished_run(run, config) == {"ne": 0.9, "steps": 6}
    with pytest.raises(FileExistsError, match="holds a run of another config"):
        finished_run(run, load_config("tiny", [*FAST, "train.steps=7"]))
    (run / "config.json").unlink()
    with pytest.raises(FileExistsError, match="holds files but no run"):
        finished_run(run, config)


def test_resume_refuses_a_different_model(tmp_path):
    from kunlun_jax.config import ConfigError, to_dict

    run_dir = prepare_run_dir(tmp_path, "r", overwrite=False, resume=False)
    (run_dir / "config.json").write_text(json.dumps(to_dict(load_config("tiny", FAST))))
    other = load_config("tiny", [*FAST, "model.d_model=32"])
    with pytest.raises(ConfigError, match=r"cannot resume .*: model\.\* differ"):
        train(other, run_dir, resume=True, progress=False)


def test_multi_task_loss_weights_each_tasks_mean_cross_entropy():
    from kunlun_jax.train.state import bce_loss

    logits = np.array([[2.0, -1.0], [0.5, 0.3], [-1.0, 2.0]], np.float32)
    labels = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    per_task = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p), axis=0)
    assert float(bce_loss(logits, labels)) == pytest.approx(per_task.mean(), rel=1e-6)
    weighted = (3 * per_task[0] + per_task[1]) / 4
    assert float(bce_loss(logits, labels, (3.0, 1.0))) == pytest.approx(weighted, rel=1e-6)
    assert float(bce_loss(logits[:, 1], labels[:, 1])) == pytest.approx(per_task[1], rel=1e-6)


def test_the_train_cli_prints_every_tasks_summary(capsys):
    from kunlun_jax.cli import _print_metrics

    _print_metrics({"ne": 0.5, "steps": 3, "click/ne": 0.25, "click/auc": 0.75, "other/x": 1.0})
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert lines == [["ne:", "0.5000"], ["click/ne:", "0.2500"], ["click/auc:", "0.7500"]]
