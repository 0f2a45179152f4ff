"""`correct --file`: text files of any size corrected paragraph by paragraph, with a progress bar,
to standard output, to `--output`, or in place (atomic, the original kept as FILE.bak with
`--backup`). Every option and every file is checked before the model is loaded, so a typo in the
last file name does not cost the first file's minutes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from correcteur.edits import Edit, apply
from correcteur.errors import UserError
from correcteur.files import atomic_write
from correcteur.textdiff import diff_words, format_diff
from correcteur.textfiles import check_text_file, lines_of, paragraphs, read_lines

STDIN = "-"
BACKUP_SUFFIX = ".bak"


@dataclass
class Request:
    """What `correct` was asked to do with its files."""

    files: list[str]
    in_place: bool = False
    backup: bool = False
    output: str | None = None
    as_json: bool = False
    diff: bool = False


def check_request(request: Request) -> dict[str, int]:
    """The size of each file to read, or a UserError for options that do not go together or a
    file that is not UTF-8 text."""
    writes = request.in_place or request.output is not None
    if request.in_place and request.output is not None:
        raise UserError("--in-place rewrites each file where it is; --output writes one elsewhere: choose one")
    if request.backup and not request.in_place:
        raise UserError("--backup keeps the original of a file corrected --in-place: add --in-place")
    if request.in_place and STDIN in request.files:
        raise UserError("standard input (-) cannot be corrected --in-place: use --output FILE, or a redirection")
    if request.output is not None and len(request.files) > 1:
        raise UserError(f"--output takes one input file, not {len(request.files)}: correct them --in-place, "
                        "or one at a time")
    if request.diff and (writes or request.as_json):
        raise UserError("--diff prints the changes: it goes with neither --in-place, --output nor --json")
    if request.output is not None and request.files != [STDIN] and \
            Path(request.output).resolve() == Path(request.files[0]).resolve():
        raise UserError(f"--output {request.output} is the input file: use --in-place to rewrite it")
    return {name: 0 if name == STDIN else check_text_file(name) for name in request.files}


def correct_files(corrector, request: Request, sizes: dict[str, int], read_stdin) -> None:
    """Correct every file as `request` says; `read_stdin()` gives standard input as text."""
    report = []
    for name in request.files:
        if name == STDIN:
            text = read_stdin()
            lines, size = lines_of(text), len(text.encode("utf-8"))
        else:
            lines, size = read_lines(name), sizes[name]
        edits: list[Edit] = []
        chunks = corrected_chunks(corrector, lines, size, name, edits if request.as_json else None, request.diff)
        if request.in_place:
            if request.backup:
                atomic_write(name + BACKUP_SUFFIX, lambda file, source=name: _copy(source, file))
            atomic_write(name, lambda file, chunks=chunks: _write(chunks, file))
        elif request.output is not None:
            atomic_write(request.output, lambda file, chunks=chunks: _write(chunks, file))
        elif request.as_json:
            for _ in chunks:
                pass
        else:
            for chunk in chunks:
                sys.stdout.write(chunk)
            sys.stdout.flush()
        report.append({"file": name, "edits": [edit.to_dict() for edit in edits]})
    if request.as_json:
        print(json.dumps(report, ensure_ascii=False, indent=2))


def corrected_chunks(corrector, lines: Iterable[str], size: int, name: str, edits: list[Edit] | None,
                     diff: bool = False) -> Iterator[str]:
    """The corrected text paragraph by paragraph (or its diff); with `edits`, each paragraph's
    edits are added to it, offsets counted from the start of the file."""
    offset = 0
    with tqdm(total=size or None, unit="B", unit_scale=True, desc=name, disable=None, leave=False) as bar:
        for paragraph in paragraphs(lines):
            if edits is None:
                fixed = corrector.correct(paragraph)
            else:
                found = corrector.suggest(paragraph)
                fixed = apply(paragraph, found)
                edits.extend(dataclasses.replace(e, offset=e.offset + offset) for e in found)
            offset += len(paragraph)
            bar.update(len(paragraph.encode("utf-8")))
            yield format_diff(diff_words(paragraph, fixed)) if diff else fixed


def _write(chunks: Iterable[str], file) -> None:
    for chunk in chunks:
        file.write(chunk.encode("utf-8"))


def _copy(source: str, file) -> None:
    with open(source, "rb") as original:
        shutil.copyfileobj(original, file)
