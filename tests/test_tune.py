"""`mnistcnn tune`: the search section, and real Optuna studies on a slice of MNIST.

The studies train a 438-parameter CNN on 1,500 images for a few epochs per trial, in two
processes sharing one SQLite file, and are checked through the database itself.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("optuna")

from mnistcnn.checkpoint import load_model
from mnistcnn.cli import main
from mnistcnn.config.build import load_config
from mnistcnn.errors import ConfigError
from mnistcnn.tune.search import load_tune_config

REPO = Path(__file__).resolve().parents[1]
TUNE_CONFIGS = sorted((REPO / "configs" / "tune").glob("*.yaml"))

# A few seconds per trial on a CPU: 1,500 training images, a 4/8-channel CNN, one thread.
BASE = """
data: {{root: {data}, download: false, subset: 1500, val_size: 300,
        augment: {{degrees: 0.0, translate: 0.0, scale: 0.0}}}}
model: {{name: cnn, channels: [4, 8], convs_per_stage: [1, 1], dropout: 0.0}}
optim: {{name: Adam, lr: 0.01}}
sched: {{name: none}}
train: {{epochs: {epochs}, device: cpu, threads: 1}}
"""


def tune_file(tmp_path: Path, data_dir: Path, search: dict, epochs: int = 3) -> Path:
    search = {"directory": str(tmp_path / "runs"), "study": "t", **search}
    path = tmp_path / "tune.yaml"
    path.write_text(
        BASE.format(data=data_dir, epochs=epochs) + yaml.safe_dump({"search": search}),
        encoding="utf-8",
    )
    return path


def trials(db: Path) -> list[tuple[int, int, str]]:
    """(study_id, number, state) of every trial, read straight from the SQLite file."""
    with sqlite3.connect(db) as con:
        return con.execute("SELECT study_id, number, state FROM trials ORDER BY number").fetchall()


def attrs(db: Path, key: str) -> list[str]:
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT value_json FROM trial_user_attributes WHERE key = ?", (key,))
        return [r[0] for r in rows]


# --- the search section --------------------------------------------------------------------


@pytest.mark.parametrize("path", TUNE_CONFIGS, ids=lambda p: p.name)
def test_shipped_tune_config_loads_and_comments_every_value(path: Path) -> None:
    tune = load_tune_config(path)
    assert tune.search.space and tune.search.n_trials
    bare = [line for line in path.read_text().splitlines() if re.match(r"^\s*[\w.]+:\s*\S", line)]
    assert all("#" in line for line in bare), [line for line in bare if "#" not in line]


def test_there_is_a_shipped_tune_config() -> None:
    assert TUNE_CONFIGS


def test_spaces_and_layering(tmp_path: Path, data_dir: Path) -> None:
    path = tune_file(
        tmp_path,
        data_dir,
        {
            "n_trials": 2,
            "space": {
                "optim.lr": {"log_uniform": [1e-4, 1e-1]},
                "optim": {"name": {"choice": ["SGD", "AdamW"]}},  # nested = dotted
                "model.channels": {"choice": [[4, 8], [8, 16]]},
                "data.batch_size": {"int": [32, 512], "log": True},
            },
        },
    )
    tune = load_tune_config(path, ["search.sampler=random", "optim.lr=0.02"])
    search = tune.search
    assert (search.sampler, search.n_trials, tune.base.optim.kwargs["lr"]) == ("random", 2, 0.02)
    kinds = {s.key: (s.kind, s.log) for s in search.space}
    assert kinds == {
        "optim.lr": ("log_uniform", True),
        "optim.name": ("choice", False),
        "model.channels": ("choice", False),
        "data.batch_size": ("int", True),
    }
    from mnistcnn.tune.search import trial_config

    # Searched values are one layer: a new optimizer name keeps only the searched arguments.
    params = {"optim.name": "AdamW", "optim.lr": 0.003, "model.channels": "[8, 16]"}
    cfg = trial_config(tune, params, tmp_path / "x.pth")
    assert (cfg.optim.name, dict(cfg.optim.kwargs)) == ("AdamW", {"lr": 0.003})
    assert cfg.model.kwargs["channels"] == (8, 16)
    assert cfg.train.output == str(tmp_path / "x.pth")


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"n_trials": 2, "space": {"optim.lr": {"uniform": [0.1, 0.01]}}}, "low must be < high"),
        ({"n_trials": 2, "space": {"optim.lr": {"normal": [0, 1]}}}, "expected one of uniform"),
        ({"n_trials": 2, "space": {"data.batchsize": {"int": [1, 2]}}}, "'batchsize' is not a"),
        ({"n_trials": 2, "space": {"optim.lr": {"log_uniform": [0, 1]}}}, "needs low > 0"),
        ({"n_trials": 2, "space": {"data.batch_size": {"int": [1.5, 2]}}}, "integers"),
        ({"n_trials": 2, "space": {"train.output": {"choice": ["a.pth"]}}}, "set by tune"),
        ({"n_trials": 2, "space": {}}, "at least one key"),
        ({"n_trials": 2, "sampler": "bayes", "space": {"optim.lr": {"choice": [1]}}}, "tpe"),
        ({"n_trials": 2, "pruner": "asha", "space": {"optim.lr": {"choice": [1]}}}, "hyperband"),
        (
            {"n_trials": 2, "metric": "test_accuracy", "space": {"optim.lr": {"choice": [1]}}},
            "val_",
        ),
        ({"n_trials": None, "space": {"optim.lr": {"choice": [1]}}}, "n_trials and/or timeout"),
        ({"heartbeat": 0, "space": {"optim.lr": {"choice": [1]}}}, "search.heartbeat must be"),
        ({"n_trials": 2, "trails": 3, "space": {"optim.lr": {"choice": [1]}}}, "search.trails"),
        (
            {"n_trials": 2, "sampler": "grid", "space": {"optim.lr": {"uniform": [0.1, 1]}}},
            "grid needs a choice",
        ),
    ],
)
def test_bad_search_section_is_one_config_error(
    tmp_path: Path, data_dir: Path, search: dict, message: str
) -> None:
    path = tune_file(tmp_path, data_dir, search)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_tune_config(path)
    assert main(["tune", "--config", str(path)]) == 1


def test_a_yaml_date_in_a_training_section_is_one_config_error(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tune_file(tmp_path, data_dir, {"n_trials": 1, "space": {"optim.lr": {"choice": [1]}}})
    path.write_text(path.read_text().replace("epochs: 3", "epochs: 2020-01-01"))
    assert main(["tune", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == "mnistcnn: error: train.epochs: expected int, got '2020-01-01'\n"


def test_mapping_choices_and_stepped_ranges(tmp_path: Path, data_dir: Path) -> None:
    import optuna

    from mnistcnn.tune.search import trial_config

    space = {
        "model": {"choice": [{"name": "baseline"}, {"name": "cnn", "channels": [4, 8]}]},
        "data.augment.degrees": {"uniform": [0, 15], "step": 5},
    }
    tune = load_tune_config(tune_file(tmp_path, data_dir, {"n_trials": 1, "space": space}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        for s in tune.search.space:
            s.suggest(trial)
        cfg = trial_config(tune, trial.params, tmp_path / "m.pth")
        assert cfg.data.augment.degrees in (0.0, 5.0, 10.0, 15.0)
        seen.add(cfg.model.name)
        study.tell(trial, 0.0)
    assert seen == {"baseline", "cnn"}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--storage", "nosuchdb://x"], "cannot open the study database nosuchdb://x"),
        (["--jobs", "0"], "--jobs must be >= 1"),
    ],
)
def test_bad_storage_or_jobs_is_one_line(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str], flags: list, message: str
) -> None:
    space = {"optim.lr": {"choice": [0.01]}}
    path = tune_file(tmp_path, data_dir, {"n_trials": 1, "space": space})
    assert main(["tune", "--config", str(path), *flags]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_tune_needs_a_config_with_a_search_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tune"]) == 2  # a usage error: --config is required
    assert "--config" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="tune needs --config"):
        load_tune_config(None)
    assert main(["tune", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: mnistcnn tune")
    plain = tmp_path / "plain.yaml"
    plain.write_text("train: {epochs: 1}\n")
    assert main(["tune", "--config", str(plain)]) == 1
    assert "needs a search section" in capsys.readouterr().err


# --- real studies --------------------------------------------------------------------------


@pytest.mark.slow
def test_two_process_study_prunes_and_writes_a_trainable_best(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # lr 1e-6 cannot learn in 3 epochs; 0.01 can. Seed 5 gives each worker a good first trial,
    # so every later 1e-6 trial falls below the median at epoch 1 whatever the timing.
    search = {
        "n_trials": 6,
        "sampler": "random",
        "pruner": "median",
        "seed": 5,
        "startup_trials": 1,
        "space": {"optim.lr": {"choice": [0.01, 1.0e-6]}},
    }
    path = tune_file(tmp_path, data_dir, search)
    assert main(["tune", "--config", str(path), "--jobs", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "t"
    rows = trials(run / "study.db")
    assert [n for _, n, _ in rows] == list(range(6))
    states = [s for _, _, s in rows]
    assert states.count("PRUNED") >= 1 and states.count("COMPLETE") >= 2, states
    assert len(set(attrs(run / "study.db", "worker"))) == 2  # two processes ran trials
    # a finished trial's value is its saved model's validation accuracy
    with sqlite3.connect(run / "study.db") as con:
        scored = con.execute(
            "SELECT v.value, a.value_json FROM trials t JOIN trial_values v USING (trial_id) "
            "JOIN trial_user_attributes a USING (trial_id) WHERE a.key = 'model'"
        ).fetchall()
    assert len(scored) == states.count("COMPLETE")
    for value, model in scored:
        assert value == load_model(json.loads(model)).meta["val_accuracy"]
    assert "pruned" in out and "best config:" in out
    for name in ("history.png", "epochs.png", "importances.png"):
        assert (run / name).read_bytes()[:4] == b"\x89PNG"

    best = run / "best.yaml"
    cfg = load_config(best, ["train.epochs=1", "data.subset=500"])
    assert cfg.optim.kwargs["lr"] == 0.01 and cfg.train.output == str(run / "best.pth")
    sets = ["--set", "train.epochs=1", "--set", "train.run_dir=null"]  # no runs/ in the repo
    assert main(["train", "--config", str(best), *sets, "--quiet"]) == 0
    assert (run / "best.pth").is_file()


@pytest.mark.slow
def test_failed_and_nan_trials_are_recorded_and_the_study_goes_on(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The whole grid, 4 trials: SGD at 0.01 learns; SGD at 1e20 turns the loss NaN
    # (TrainingError); Adam takes no momentum (ConfigError), at either rate.
    search = {
        "sampler": "grid",
        "pruner": "none",
        "n_trials": 4,
        "space": {
            "optim": {
                "name": {"choice": ["SGD", "Adam"]},
                "lr": {"choice": [0.01, 1.0e20]},
                "momentum": {"choice": [0.0]},
            }
        },
    }
    path = tune_file(tmp_path, data_dir, search, epochs=1)
    assert main(["tune", "--config", str(path), "--json"]) == 0
    db = tmp_path / "runs" / "t" / "study.db"
    states = sorted(s for _, _, s in trials(db))
    errors = " ".join(attrs(db, "error"))
    assert states == ["COMPLETE", "FAIL", "FAIL", "FAIL"], states
    assert errors.count("not an argument of Adam") == 2 and "loss became nan" in errors, errors
    assert '"best_yaml"' in capsys.readouterr().out


@pytest.mark.slow
def test_interrupted_study_resumes_where_it_stopped(tmp_path: Path, data_dir: Path) -> None:
    search = {"n_trials": 4, "sampler": "tpe", "pruner": "none", "startup_trials": 2}
    search["space"] = {"optim.lr": {"log_uniform": [1e-3, 3e-2]}}
    path = tune_file(tmp_path, data_dir, search, epochs=2)
    db = tmp_path / "runs" / "t" / "study.db"
    cmd = [sys.executable, "-m", "mnistcnn", "tune", "--config", str(path), "--jobs", "2", "-q"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A new session, like a terminal's foreground job: Ctrl-C reaches every worker.
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if db.is_file() and any(s == "COMPLETE" for _, _, s in _try_trials(db)):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1]
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same mnistcnn tune command again" in err
    before = trials(db)
    done = [n for _, n, s in before if s == "COMPLETE"]
    assert 1 <= len(done) < 4 and "RUNNING" not in {s for _, _, s in before}

    assert main(["tune", "--config", str(path), "-q"]) == 0
    after = trials(db)
    assert after[: len(before)] == before  # the same study (same id), its trials kept
    assert {study for study, _, _ in after} == {before[0][0]}
    assert sum(s == "COMPLETE" for _, _, s in after) == 4  # interrupted trials do not count


def _try_trials(db: Path) -> list[tuple[int, int, str]]:
    try:
        return trials(db)
    except sqlite3.Error:  # tables not created yet, or locked for a moment
        return []
