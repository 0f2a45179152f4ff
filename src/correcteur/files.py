"""Files a crash cannot corrupt, folders two runs cannot share, checksums, and where the
project keeps its files.

Every result file is written to a temporary file in the same folder and renamed over the old
one (`os.replace` is atomic), so an interrupted run leaves the previous file or none, never a
half-written one that looks complete. A run folder is held by one process at a time
(`run_lock`), so two runs cannot leave it holding a mix of both.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import platformdirs
import psutil

from correcteur.errors import UserError

HOME_ENV = "CORRECTEUR_HOME"
CACHE_ENV = "CORRECTEUR_CACHE_DIR"


def checkout_root() -> Path | None:
    """The repository this module runs from (an editable install or PYTHONPATH=src), or None
    for an installed package."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "src" / "correcteur").is_dir() else None


def project_home() -> Path:
    """Where downloaded weights (checkpoints/) and runs (runs/) live: $CORRECTEUR_HOME, else the
    checkout, else the user's data folder (`platformdirs`: ~/.local/share/correcteur on Linux)."""
    return Path(os.environ.get(HOME_ENV) or checkout_root() or platformdirs.user_data_dir("correcteur"))


PROJECT_ROOT = project_home()
CHECKPOINTS_DIR = PROJECT_ROOT / "checkpoints"


def cache_dir() -> Path:
    """Where the project keeps files it fetched once: $CORRECTEUR_CACHE_DIR, else the user's
    cache folder (`platformdirs`: ~/.cache/correcteur on Linux)."""
    return Path(os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("correcteur"))


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(file)` on a temporary file next to `path`, then rename it to `path`.

    A write the disk refuses (no space left: an OSError, or torch's RuntimeError from its zip
    writer) becomes one `UserError` naming the folder and the space it lacked; the previous
    file at `path` is untouched either way."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder: give the name of the file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from other users
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        written = Path(tmp).stat().st_size if Path(tmp).exists() else 0
        Path(tmp).unlink(missing_ok=True)
        if _out_of_space(error):
            raise UserError(_no_space_message(path, written)) from None
        raise
    return path


def _out_of_space(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(error, RuntimeError):  # torch's zip writer
        return "PytorchStreamWriter failed writing" in str(error) or "file write failed" in str(error)
    return False


def _no_space_message(path: Path, written: int) -> str:
    free = shutil.disk_usage(path.parent).free
    return (f"no space left to write {path.name} in {path.parent}: the disk refused after "
            f"{written / 2**20:.1f} MiB, so it needs more than that, and {free / 2**20:.1f} MiB are free there. "
            f"Free some space (or point the output elsewhere) and run again; the previous {path.name}, "
            "if any, is untouched.")


def write_json(path: str | Path, data) -> Path:
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")))


CSV_FIELD_LIMIT = 2**31 - 1  # the csv module's default (128 KiB per field) refuses long texts
PAIR_SUFFIXES = {".tsv": "\t", ".csv": ","}
TARGET_COLUMNS = ("target", "output")


def load_pairs(path: Path) -> list[dict]:
    """Entries from a TSV or CSV file of (input, target) pairs: a header row names `input` and
    `target` (or `output`); a `type` column becomes the entry's error type (`clean`, or a row
    whose target equals its input, has none). Other columns are kept as they are."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter=PAIR_SUFFIXES[path.suffix.lower()]))
    header = set(rows[0]) if rows else set()
    target = next((c for c in TARGET_COLUMNS if c in header), None)
    if "input" not in header or target is None:
        raise UserError(f"{path}: its header row must name the columns 'input' and 'target' (or 'output'); "
                        f"it names {sorted(c for c in header if c) or 'none'}")
    entries, bad = [], []
    for number, row in enumerate(rows, start=2):
        if None in row or row["input"] is None or row[target] is None:
            bad.append(number)
            continue
        entry = {k: v for k, v in row.items() if k not in ("input", target)}
        entry.update(input=row["input"], output=row[target])
        if "type" in row:
            entry["error_types"] = [] if row["type"] in ("", "clean") or row["input"] == row[target] else [row["type"]]
        entries.append(entry)
    if bad:
        raise UserError(f"{path}: {len(bad)} rows do not have the header's columns (line {bad[0]} first)")
    return entries


def load_entries(path: str | Path) -> list[dict]:
    """A JSON list of entries, or (input, target) pairs from a TSV or CSV file (`load_pairs`),
    with a clear message when the file is missing or malformed."""
    path = Path(path)
    if path.suffix.lower() in PAIR_SUFFIXES and path.is_file():
        try:
            return load_pairs(path)
        except UnicodeDecodeError as error:
            raise UserError(f"{path} is not UTF-8 text ({error})") from None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder: give the JSON file inside it (such as test.json)") from None
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


# --- one process per run folder ---------------------------------------------------------------

LOCK_NAME = ".lock"
UNREADABLE_GRACE_S = 10.0  # an empty lock younger than this is being written; older, a crash left it
PID_REUSE_MARGIN_S = 60.0  # a process started this long after the lock was written did not write it
_held: set[Path] = set()  # the locks this process holds


@contextlib.contextmanager
def run_lock(folder: str | Path, purpose: str = "a run") -> Iterator[Path]:
    """Hold `folder` for this process until the block ends, however it ends (exception, Ctrl-C).

    Two processes writing one run folder would leave a mix of both (the config of one, the
    weights of the other), so a second one is refused with a `UserError` that names the
    folder and the process holding it. The lock is `folder/.lock`, created with O_EXCL (of two
    processes, one wins) and holding the PID, host and `purpose`. A lock whose process no
    longer runs on this host (killed, or the machine restarted) is taken over with a note;
    one from another host is refused, as its process cannot be checked from here. A folder
    created for the lock and left empty is removed again."""
    folder = Path(folder)
    created = [f for f in (folder, *folder.parents) if not f.exists()]  # innermost first
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    try:
        token = _take_lock(lock, purpose)
        try:
            yield lock
        finally:
            _release_lock(lock, token)
    finally:
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    """Remove `folders` (innermost first) as long as they are empty: a run refused or failed
    before writing anything leaves no trace."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty: the run wrote something, keep it and its parents
            return


def _take_lock(lock: Path, purpose: str) -> str:
    """Create `lock` for this process, taking over a stale one; the token proves it is ours."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
              "since": time.time(), "token": uuid.uuid4().hex}
    for _ in range(5):  # a stale lock removed: try again (another process may have been faster)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(lock)
            if _holder_runs(lock, holder):
                raise UserError(_in_use_message(lock, holder)) from None
            _remove_stale_lock(lock)
            continue
        except OSError as error:  # a read-only or missing folder: say which
            raise UserError(f"cannot lock {lock.parent} ({error.strerror}): the folder must be writable") from None
        _held.add(lock.resolve())  # before its record exists: no thread of ours judges it stale
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(record, file)
        except BaseException:  # a full disk, Ctrl-C: no empty lock left behind
            lock.unlink(missing_ok=True)
            _held.discard(lock.resolve())
            raise
        return record["token"]
    raise UserError(f"could not lock {lock.parent}: other processes keep taking it over ({lock})")


def _release_lock(lock: Path, token: str) -> None:
    """Remove `lock` if it is still ours (never a lock another process took over)."""
    holder = _read_lock(lock)
    if holder is not None and holder.get("token") == token:
        lock.unlink(missing_ok=True)
    _held.discard(lock.resolve())


def _read_lock(lock: Path) -> dict | None:
    """The lock's record; None when it is gone, empty or garbled (see `_holder_runs`)."""
    try:
        record = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    valid = (isinstance(record, dict) and isinstance(record.get("pid"), int)
             and isinstance(record.get("since", 0), (int, float)))
    return record if valid else None


def _holder_runs(lock: Path, holder: dict | None) -> bool:
    """Whether the process that wrote `lock` may still run; in doubt, yes (refusing is safe,
    taking over a live run's folder is not)."""
    if holder is None:  # empty: being written this instant, or left by a crash long ago
        with contextlib.suppress(FileNotFoundError):
            return time.time() - lock.stat().st_mtime < UNREADABLE_GRACE_S
        return False
    if holder.get("host") != socket.gethostname():
        return True  # another machine's processes cannot be seen from here
    if holder["pid"] == os.getpid():  # this process, or an earlier life of its PID (a container restarted)
        return lock.resolve() in _held
    try:
        process = psutil.Process(holder["pid"])
        since = holder.get("since")
        started_after = since is not None and process.create_time() > since + PID_REUSE_MARGIN_S
        return process.status() != psutil.STATUS_ZOMBIE and not started_after
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _remove_stale_lock(lock: Path) -> None:
    """Delete a stale `lock`, with a note. The takeover is itself guarded by an O_EXCL file and
    the lock judged again inside it: two processes that both saw the stale lock must not both
    delete (one of them the other's fresh lock) and both go on."""
    guard = lock.with_name(lock.name + ".takeover")
    try:
        os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:  # another process is taking over: look again in a moment
        with contextlib.suppress(FileNotFoundError):
            if time.time() - guard.stat().st_mtime > UNREADABLE_GRACE_S:
                guard.unlink()  # left by a process killed mid-takeover
        time.sleep(0.05)
        return
    try:
        holder = _read_lock(lock)
        if lock.exists() and not _holder_runs(lock, holder):
            print(f"note: {lock.parent} was locked by {_holder_words(holder)}, which no longer runs; "
                  "taking the folder over", file=sys.stderr)
            lock.unlink(missing_ok=True)
    finally:
        guard.unlink(missing_ok=True)


def _holder_words(holder: dict | None) -> str:
    if holder is None:
        return "a process that left its lock file empty"
    since = holder.get("since")
    when = "" if since is None else time.strftime(" since %Y-%m-%d %H:%M", time.localtime(since))
    return f"process {holder['pid']} on {holder.get('host')} ({holder.get('purpose', 'a run')}{when})"


def _in_use_message(lock: Path, holder: dict | None) -> str:
    if holder is None:
        return (f"{lock.parent} is being locked by another process at this very moment; "
                "wait for it to end, or use another folder")
    here = holder.get("host") == socket.gethostname()
    this = (" (this very process)" if here and holder["pid"] == os.getpid() else
            "" if here else ", a machine whose processes cannot be checked from here")
    return (f"{lock.parent} is in use by {_holder_words(holder)}{this}: two processes writing one folder "
            f"would mix their files. Wait for it to end, or use another folder (another --run-name or "
            f"--out); if that process is not a correcteur run any more, delete {lock}")
