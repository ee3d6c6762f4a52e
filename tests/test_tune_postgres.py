"""`mnistcnn tune` on a real PostgreSQL server: workers in separate folders on one study, one of
them SIGKILLed, the server stopped mid-study, and the errors of a storage that will not open.

The server is Debian's (`initdb`, `pg_ctl` from /usr/lib/postgresql/*/bin), started once for
the module as the `postgres` user, on 127.0.0.1 and a free port, with password (scram) logins.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mnistcnn.cli import main

pytest.importorskip("optuna")
psycopg = pytest.importorskip("psycopg")

PASSWORD = "tune-test"
BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))

# Trials of a fraction of a second: 300 images, a 4/8-channel CNN, 2 epochs, one thread.
TUNE = """
data: {{root: {data}, download: false, subset: 300, val_size: 100,
        augment: {{degrees: 0.0, translate: 0.0, scale: 0.0}}}}
model: {{name: cnn, channels: [4, 8], convs_per_stage: [1, 1], dropout: 0.0}}
optim: {{name: Adam, lr: 0.01}}
sched: {{name: none}}
train: {{epochs: 2, device: cpu, threads: 1}}
search: {{study: s, n_trials: {n_trials}, heartbeat: 1, sampler: random, pruner: none,
          space: {{optim.lr: {{log_uniform: [0.003, 0.03]}}}}}}
"""


class Server:
    """A PostgreSQL server in `folder`, run as the postgres user."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port

    def pg_ctl(self, *args: str) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off"
        cmd = [f"{BIN[-1]}/pg_ctl", "-D", str(self.folder / "data"), "-l", str(self.folder / "log")]
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *cmd, "-o", options, "-w", *args],
            check=True,
            capture_output=True,
        )

    def url(self, database: str, password: str = PASSWORD, port: int | None = None) -> str:
        return f"postgresql://postgres:{password}@127.0.0.1:{port or self.port}/{database}"

    def createdb(self, name: str) -> str:
        """A new database; its URL."""
        with psycopg.connect(self.url("postgres"), autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def trials(self, url: str) -> list[tuple[int, str, str | None, str | None]]:
        """(number, state, worker, the trial it retries) of every trial, by number."""
        query = """SELECT t.number, t.state::text, w.value_json, r.value_json FROM trials t
            LEFT JOIN trial_user_attributes w ON w.trial_id = t.trial_id AND w.key = 'worker'
            LEFT JOIN trial_system_attributes r
                ON r.trial_id = t.trial_id AND r.key = 'failed_trial'
            ORDER BY t.number"""
        try:
            with psycopg.connect(url) as con:
                return con.execute(query).fetchall()
        except psycopg.errors.UndefinedTable:  # no worker has created the tables yet
            return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    if not BIN or not os.path.isfile(f"{BIN[-1]}/initdb"):
        pytest.skip("no PostgreSQL server binary in /usr/lib/postgresql/*/bin")
    if os.geteuid() != 0:
        pytest.skip("the test server runs as the postgres user, which needs root")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user to run the PostgreSQL test server as")
    folder = Path(tempfile.mkdtemp(prefix="mnistcnn-pg-"))
    (folder / "password").write_text(PASSWORD)
    shutil.chown(folder, "postgres")
    shutil.chown(folder / "password", "postgres")
    initdb = [f"{BIN[-1]}/initdb", "-D", str(folder / "data"), "-U", "postgres", "-N"]
    auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={folder / 'password'}"]
    subprocess.run(
        ["runuser", "-u", "postgres", "--", *initdb, *auth], check=True, capture_output=True
    )
    server = Server(folder, free_port())
    server.pg_ctl("start")
    try:
        yield server
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                f"{BIN[-1]}/pg_ctl",
                "-D",
                str(folder / "data"),
                "stop",
                "-m",
                "immediate",
            ],
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


def tune_file(tmp_path: Path, data_dir: Path, n_trials: int) -> Path:
    path = tmp_path / "tune.yaml"
    path.write_text(TUNE.format(data=data_dir, n_trials=n_trials), encoding="utf-8")
    return path


def tune_command(path: Path, url: str, folder: Path) -> list[str]:
    sets = ["--set", f"search.directory={folder}"]
    return [
        sys.executable,
        "-m",
        "mnistcnn",
        "tune",
        "-c",
        str(path),
        "--storage",
        url,
        *sets,
        "-q",
    ]


def spawn(cmd: list[str]) -> subprocess.Popen:
    """A `mnistcnn tune` worker process, its output piped and unbuffered."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(what: Callable[[], Any], worker: subprocess.Popen) -> Any:
    """The first true `what()` while `worker` runs."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and worker.poll() is None:
        if found := what():
            return found
        time.sleep(0.05)
    worker.kill()
    raise AssertionError(f"gave up waiting: {worker.communicate()[1]}")


@pytest.mark.slow
def test_a_killed_worker_trial_is_failed_and_retried_by_a_live_one(
    server: Server, tmp_path: Path, data_dir: Path
) -> None:
    url = server.createdb("killed")
    path = tune_file(tmp_path, data_dir, n_trials=3)
    doomed = spawn(tune_command(path, url, tmp_path / "a"))
    live = spawn(tune_command(path, url, tmp_path / "b"))
    mine = f':{doomed.pid}"'

    def doomed_running() -> list[int]:
        return [n for n, s, w, _ in server.trials(url) if s == "RUNNING" and w and w.endswith(mine)]

    wait_for(doomed_running, doomed)
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate()
    out, err = live.communicate(timeout=120)
    assert live.returncode == 0, err
    rows = server.trials(url)
    states = [s for _, s, _, _ in rows]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1, rows
    # The trial it was running when killed (it may have finished one just before).
    [killed] = [n for n, s, w, _ in rows if s == "FAIL" and w and w.endswith(mine)]
    live_worker = next(w for _, _, w, _ in rows if w and w.endswith(f':{live.pid}"'))
    assert [(s, w) for _, s, w, r in rows if r == str(killed)] == [("COMPLETE", live_worker)]
    assert "3 complete" in out and "1 retried" in out and "0 running" in out

    # Each worker's trials' files are in its own folder; the report is built from the database
    # by any worker, here the killed one's machine running the same command again.
    trials_b = sorted(int(p.name) for p in (tmp_path / "b" / "s" / "trials").iterdir())
    assert trials_b == [n for n, _, w, _ in rows if w == live_worker]
    assert main(tune_command(path, url, tmp_path / "a")[3:]) == 0
    headers = [(tmp_path / f / "s" / "best.yaml").read_text().splitlines()[0] for f in "ab"]
    assert headers[0] == headers[1] and headers[0].startswith("# Best trial")


@pytest.mark.slow
def test_a_lost_server_stops_the_worker_and_the_same_command_continues(
    server: Server, tmp_path: Path, data_dir: Path
) -> None:
    url = server.createdb("lost")
    path = tune_file(tmp_path, data_dir, n_trials=3)
    cmd = tune_command(path, url, tmp_path)
    worker = spawn(cmd)
    wait_for(
        lambda: [s for _, s, _, _ in server.trials(url)][-2:] == ["COMPLETE", "RUNNING"], worker
    )
    server.pg_ctl("stop", "-m", "fast")
    try:
        _, err = worker.communicate(timeout=60)
    finally:
        server.pg_ctl("start")
    assert worker.returncode == 1, err
    last = err.strip().splitlines()[-1]  # after the study's opening lines
    assert "Traceback" not in err and "Exception" not in err, err
    assert last.startswith("mnistcnn: error: lost the study database postgresql://postgres:***@")
    assert last.endswith("run the same command again to continue")
    assert (tmp_path / "s" / "trials" / "0000" / "model.pth").is_file()

    assert main(cmd[3:]) == 0
    states = [s for _, s, _, _ in server.trials(url)]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1, states  # one retried


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({"port": 1}, "Connection refused; check the URL, its host and port, and that the server"),
        (
            {"password": "wrong"},
            'password authentication failed for user "postgres"; check the user and password',
        ),
        (
            {"database": "nosuch"},
            'database "nosuch" does not exist; create it first (createdb nosuch)',
        ),
    ],
)
def test_a_storage_that_will_not_open_is_one_line_and_leaves_nothing(
    server: Server,
    tmp_path: Path,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    where: dict,
    message: str,
) -> None:
    url = server.url(**{"database": "postgres", **where})
    path = tune_file(tmp_path, data_dir, n_trials=1)
    assert main(tune_command(path, url, tmp_path / "runs")[3:]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert PASSWORD not in err and not (tmp_path / "runs").exists()


def test_a_missing_driver_names_the_extra(
    tmp_path: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg: ModuleNotFoundError
    path = tune_file(tmp_path, data_dir, n_trials=1)
    url = "postgresql://postgres@127.0.0.1:1/optuna"
    assert main(tune_command(path, url, tmp_path / "runs")[3:]) == 1
    err = capsys.readouterr().err
    assert "needs the psycopg driver: pip install 'mnistcnn[postgres]'" in err, err
    assert not (tmp_path / "runs").exists()
