"""One process per run folder: a second one is refused, a dead one's lock is taken over, and
the lock goes when its holder ends, however it ends (files.run_lock)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_train import (  # noqa: F401 - single_thread is an autouse fixture
    PAIRS,
    CharTokenizer,
    single_thread,
    tiny_config,
    tiny_model,
    write_data,
)

import correcteur.train as train_module
from correcteur.checkpoint import export_half
from correcteur.errors import UserError
from correcteur.files import LOCK_NAME, run_lock
from correcteur.guard_tuning import calibrate_guard
from correcteur.train import train

HOLDER = """
import sys
from correcteur.files import run_lock
with run_lock(sys.argv[1], "training"):
    print("locked", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def held_by_another_process(folder: Path) -> Iterator[subprocess.Popen]:
    """Another Python process that holds `folder`'s lock until the block ends."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "locked\n"
        yield process
    finally:
        process.stdin.close()
        assert process.wait(timeout=30) == 0


def write_lock(folder: Path, **record) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    lock.write_text(json.dumps({"host": socket.gethostname(), "purpose": "training",
                                "since": time.time() - 3600, "token": "old", **record}))
    return lock


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_folder_held_by_another_process_is_refused_with_its_pid(tmp_path):
    run = tmp_path / "run"
    with held_by_another_process(run) as holder:
        with pytest.raises(UserError) as error, run_lock(run):
            pass
        message = str(error.value)
        assert f"{run} is in use by process {holder.pid} on {socket.gethostname()} (training since " in message
        assert str(run / LOCK_NAME) in message  # what to delete if that process is gone
    assert not (run / LOCK_NAME).exists()
    with run_lock(run):  # free again
        pass


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_note(tmp_path, capsys):
    pid = dead_pid()
    lock = write_lock(tmp_path, pid=pid)
    with run_lock(tmp_path) as held:
        assert held == lock and json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"was locked by process {pid}" in capsys.readouterr().err
    assert not lock.exists()


def test_this_process_id_in_a_lock_it_does_not_hold_is_an_earlier_life(tmp_path):
    """A container restarted gives the new run the PID its killed predecessor had."""
    write_lock(tmp_path, pid=os.getpid())
    with run_lock(tmp_path), pytest.raises(UserError, match="this very process"), run_lock(tmp_path):
        pass  # but a lock this process holds is held
    assert list(tmp_path.iterdir()) == []


def test_a_lock_from_another_host_is_refused(tmp_path):
    write_lock(tmp_path, pid=dead_pid(), host="gpu-box-7")
    with pytest.raises(UserError, match="on gpu-box-7 .*cannot be checked from here"), run_lock(tmp_path):
        pass


def test_an_empty_lock_is_refused_while_young_and_taken_over_when_old(tmp_path):
    lock = tmp_path / LOCK_NAME
    lock.touch()  # a process between creating its lock and writing its PID, or one killed there
    with pytest.raises(UserError, match="being locked by another process"), run_lock(tmp_path):
        pass
    os.utime(lock, (time.time() - 60, time.time() - 60))
    with run_lock(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("ending", [None, RuntimeError, KeyboardInterrupt])
def test_the_lock_is_gone_however_the_block_ends(tmp_path, ending):
    run = tmp_path / "runs" / "new"
    with contextlib.suppress(RuntimeError, KeyboardInterrupt), run_lock(run) as lock:
        assert lock.is_file()
        (run / "config.json").write_text("{}")
        if ending:
            raise ending("stopped")
    assert [p.name for p in run.iterdir()] == ["config.json"]


def test_a_folder_created_for_the_lock_and_left_empty_is_removed(tmp_path):
    with pytest.raises(RuntimeError), run_lock(tmp_path / "runs" / "new"):
        raise RuntimeError("refused before writing anything")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- who takes it


def test_train_refuses_a_run_folder_another_process_holds(tmp_path):
    """Two runs into one new folder: the second is refused before it writes anything."""
    write_data(tmp_path / "data", PAIRS, PAIRS[:2])
    config = tiny_config(tmp_path, max_steps=2)
    with held_by_another_process(config.run_dir) as holder:
        with pytest.raises(UserError, match=f"in use by process {holder.pid}"):
            train(config, model=tiny_model(), tokenizer=CharTokenizer())
        assert [p.name for p in config.run_dir.iterdir()] == [LOCK_NAME]


def test_train_holds_its_folder_and_lets_go_after_a_run_and_after_a_failure(tmp_path, monkeypatch):
    write_data(tmp_path / "data", PAIRS, PAIRS[:2])
    config = tiny_config(tmp_path, max_steps=2)
    step = train_module.train_step
    held = []

    def checked_step(*args, **kwargs):
        held.append((config.run_dir / LOCK_NAME).is_file())
        return step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", checked_step)
    train(config, model=tiny_model(), tokenizer=CharTokenizer())
    assert held == [True, True] and not (config.run_dir / LOCK_NAME).exists()

    def failing_step(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(train_module, "train_step", failing_step)
    failed = tiny_config(tmp_path, run_name="failed", max_steps=2)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        train(failed, model=tiny_model(), tokenizer=CharTokenizer())
    assert (failed.run_dir / "train_config.json").is_file() and not (failed.run_dir / LOCK_NAME).exists()


def test_guard_tuning_and_export_refuse_a_run_still_training(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"provisional")
    with held_by_another_process(run) as holder:
        with pytest.raises(UserError, match=f"in use by process {holder.pid}"):
            calibrate_guard(run, tmp_path / "val.json")
        with pytest.raises(UserError, match=f"in use by process {holder.pid}"):
            export_half(run, run / "best-bf16.pt")
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME, "best.pt"]
