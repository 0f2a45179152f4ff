"""The installed package: a wheel that works outside the checkout, `--version`, its folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import correcteur
from correcteur import files
from correcteur.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0 and capsys.readouterr().out == f"correcteur {correcteur.__version__}\n"


def test_the_home_is_the_checkout_else_the_user_data_folder_and_an_override_wins(monkeypatch, tmp_path):
    import platformdirs

    monkeypatch.delenv(files.HOME_ENV, raising=False)
    assert files.checkout_root() == ROOT and files.project_home() == ROOT
    monkeypatch.setattr(files, "checkout_root", lambda: None)
    assert files.project_home() == Path(platformdirs.user_data_dir("correcteur"))
    monkeypatch.setenv(files.HOME_ENV, str(tmp_path))
    assert files.project_home() == tmp_path
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path / "cache"))
    assert files.cache_dir() == tmp_path / "cache"


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get("CORRECTEUR_WHEEL_CHECKED")), reason=".ci/run ran .ci/wheel_smoke already")
def test_the_wheel_installs_and_runs_outside_the_checkout():
    """.ci/wheel_smoke: wheel built, installed with --no-deps into a fresh venv that borrows this
    environment's packages, `correcteur` run from a temporary folder (corpus from the wheel)."""
    done = subprocess.run(["bash", str(ROOT / ".ci" / "wheel_smoke")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == f"correcteur {correcteur.__version__}"
    assert lines[1].startswith("usage: correcteur correct")
    assert lines[2].startswith("wrote train.json, val.json, test.json")
    assert lines[3].startswith("installed package at ") and "corpus inside it" in lines[3]
