"""One command per run folder (flock), and a full disk / read-only folder as a one-line error with the last good
checkpoint intact."""
from __future__ import annotations

import errno
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sslkit.core import files
from sslkit.core.checkpoint import load_checkpoint, save_checkpoint
from sslkit.core.errors import UserError
from sslkit.core.runs import LOCK_NAME, lock_run, release_locks
from tests.conftest import cli_in_process

TOY = ["toy", "pretrain", "--set", "train.device=cpu", "--set", "train.precision=fp32", "--set", "train.log_every=1"]


def _steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_second_command_is_refused_while_first_runs_and_kill9_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "R"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "sslkit", *TOY, "--out", str(run), "--set", "train.steps=1000000",
                              "--set", "train.checkpoint_every=3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    try:
        deadline = time.time() + 120
        while not (run / "checkpoints" / "last.pt").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()[1]
        for extra in (["--resume"], ["--overwrite"], []):        # all bounded (5 steps) if the lock failed
            t0 = time.time()
            second = cli_in_process(*TOY, "--out", run, "--set", "train.steps=5", *extra)
            assert second.returncode == 2, (extra, second.stderr)
            line = second.stderr.strip()
            assert "\n" not in line and f"in use by pid {first.pid} on {platform.node()}" in line, line
            assert "--resume" in line and time.time() - t0 < 10       # at once, not after training
            assert (run / "checkpoints" / "last.pt").exists()         # --overwrite did not move the running run aside
        assert first.poll() is None                                    # the holder was not disturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    step = int(torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"])
    resumed = cli_in_process(*TOY, "--out", run, "--resume", "--set", f"train.steps={step + 3}")
    assert resumed.returncode == 0, resumed.stderr
    steps = _steps(run)
    assert steps == sorted(steps) and steps[-1] == step + 3      # one trajectory, finished by the resume


def test_lock_is_released_at_the_end_of_a_command_and_names_its_holder(tmp_path):
    run = tmp_path / "R"
    assert cli_in_process(*TOY, "--out", run, "--set", "train.steps=2").returncode == 0
    assert cli_in_process(*TOY, "--out", run, "--resume", "--set", "train.steps=3").returncode == 0  # not locked out
    info = json.loads((run / LOCK_NAME).read_text())
    assert info["pid"] == os.getpid() and info["host"] == platform.node() and info["command"].startswith("sslkit")
    # held by another process (a child holding flock on the same file): refused, and the child's pid is named
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, json, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); "      # raises if the commands above still held it
        "os.ftruncate(fd, 0); os.write(fd, json.dumps({'pid': os.getpid(), 'host': 'node7'}).encode()); "
        "print('locked', flush=True); time.sleep(60)"), str(run / LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        message = lock_run(run)
        assert message is not None and f"in use by pid {holder.pid} on node7" in message
    finally:
        holder.kill()
        holder.wait()
    assert lock_run(run) is None        # the kernel dropped the killed holder's lock: no manual clean-up
    release_locks()


def test_two_process_run_is_refused_by_rank_0_and_every_rank_stops(tmp_path):
    """Under --devices only rank 0 takes the lock; the refusal reaches every rank (no hang at a barrier), once."""
    run = tmp_path / "R"
    assert cli_in_process(*TOY, "--out", run, "--set", "train.steps=2").returncode == 0

    def resume() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sslkit", *TOY, "--out", str(run), "--resume", "--set",
                               "train.steps=4", "--devices", "2"], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})

    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
        "os.ftruncate(fd, 0); os.write(fd, b'{\"pid\": %d, \"host\": \"node7\"}' % os.getpid()); "
        "print('locked', flush=True); time.sleep(120)"), str(run / LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = resume()
    finally:
        holder.kill()
        holder.wait()
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"is in use by pid {holder.pid} on node7" in errors[0], res.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2
    res = resume()                          # the holder is gone: the two ranks resume (rank 1 never locks)
    assert res.returncode == 0, res.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4


# -- full disk, read-only folder ------------------------------------------------------------------------------------

class _FullFile:
    """A file whose write fails as on a full (or read-only) filesystem."""

    def __init__(self, fh, err: int) -> None:  # noqa: ANN001
        self.fh, self.err = fh, err

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()

    def write(self, data: bytes) -> int:
        raise OSError(self.err, os.strerror(self.err))

    def flush(self) -> None:
        self.fh.flush()

    def fileno(self) -> int:
        return self.fh.fileno()


def _fail_writes(monkeypatch, name: str, err: int = errno.ENOSPC, after: int = 0) -> None:  # noqa: ANN001
    """Make the (after+1)-th and later atomic writes of files called `name` fail with `err`."""
    real_beside, real_fdopen = files.temp_beside, os.fdopen
    doomed: set[int] = set()
    seen = {"n": 0}

    def beside(path, suffix=".tmp"):  # noqa: ANN001, ANN202
        fd, tmp = real_beside(path, suffix)
        if Path(path).name == name:
            seen["n"] += 1
            if seen["n"] > after:
                doomed.add(fd)
        return fd, tmp

    def fdopen(fd, *a, **k):  # noqa: ANN001, ANN202
        fh = real_fdopen(fd, *a, **k)
        return _FullFile(fh, err) if fd in doomed else fh

    monkeypatch.setattr(files, "temp_beside", beside)
    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize("err, words", [(errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only file system")])
def test_checkpoint_write_error_keeps_previous_checkpoint_and_says_what_to_do(tmp_path, monkeypatch, err, words):
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    save_checkpoint(path, {"step": 5, "model": {"w": torch.ones(3)}})
    before = path.read_bytes()
    _fail_writes(monkeypatch, "last.pt", err)
    with pytest.raises(UserError) as caught:
        save_checkpoint(path, {"step": 10, "model": {"w": torch.zeros(3)}})
    msg = str(caught.value)
    assert f"cannot write {path}: {words}" in msg and "\n" not in msg
    assert f"--resume --out {tmp_path / 'run'}" in msg and "previous checkpoint is intact" in msg
    if err == errno.ENOSPC:
        assert " free on " in msg
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 5
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]       # no temp file left behind


def test_full_disk_during_pretrain_is_one_line_exit_2_and_resume_continues(tmp_path, monkeypatch):
    run = tmp_path / "R"
    _fail_writes(monkeypatch, "last.pt", after=1)              # the checkpoint at step 3 is written, the one at 6 is not
    res = cli_in_process(*TOY, "--out", run, "--set", "train.steps=9", "--set", "train.checkpoint_every=3")
    assert res.returncode == 2, res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot write {run / 'checkpoints' / 'last.pt'}: no space left on device (")
    assert " free on " in line and "--resume" in line and "internal error" not in res.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3
    monkeypatch.undo()                                          # space freed
    res = cli_in_process(*TOY, "--out", run, "--resume")
    assert res.returncode == 0, res.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 9 and _steps(run)[-1] == 9


def test_full_disk_writing_an_output_names_the_file(tmp_path, monkeypatch):
    _fail_writes(monkeypatch, "out.txt")
    with pytest.raises(UserError, match=r"cannot write .*out\.txt: no space left on device \(.* free on .*\) — free"):
        files.atomic_write_text(tmp_path / "out.txt", "x")
    assert list(tmp_path.iterdir()) == []
    assert files.environment_error(ValueError("x")) is None
    assert files.environment_error(OSError(errno.EIO, "I/O error")) is None   # a failing disk is not the user's to fix
