"""Files a crash cannot corrupt, checksums, and where the project keeps its files.

Every result file is written to a temporary file in the same folder and renamed over the old
one (`os.replace` is atomic), so an interrupted run leaves the previous file or none, never a
half-written one that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from correcteur.errors import UserError

# The repository (the package is installed editable from it): corpus, checkpoints, runs.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS_DIR = PROJECT_ROOT / "checkpoints"
CACHE_ENV = "CORRECTEUR_CACHE_DIR"


def cache_dir() -> Path:
    """Where the project keeps files it fetched once (override with $CORRECTEUR_CACHE_DIR)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "correcteur")


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
