"""Text files to correct, of any size: checked to be UTF-8 text first, then read paragraph by
paragraph, so that memory holds one paragraph and a refusal comes before minutes of work.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from correcteur.errors import UserError
from correcteur.mask import FENCE

BLOCK = 1 << 20
LINE = re.compile(r"[^\n]*\n|[^\n]+")


def check_text_file(path: str | Path) -> int:
    """The size in bytes of `path`, a UTF-8 text file, or a UserError that says what it is instead."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder: give the text files inside it")
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(BLOCK), b""):
                if b"\x00" in block:
                    raise UserError(f"{path} holds binary data (a NUL byte at offset {offset + block.index(0)}), "
                                    "not text: give a UTF-8 text file")
                pending = len(decoder.getstate()[0])  # bytes of a character the last block cut
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as error:
                    raise UserError(_not_utf8(path, offset - pending + error.start)) from None
                offset += len(block)
            pending = len(decoder.getstate()[0])
            decoder.decode(b"", final=True)
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except UnicodeDecodeError:
        raise UserError(_not_utf8(path, offset - pending)) from None  # the file ends inside a character
    return offset


def _not_utf8(path: Path, offset: int) -> str:
    return (f"{path} is not UTF-8 text (invalid byte at offset {offset}): convert it first, "
            f"e.g. `iconv -f latin1 -t utf-8 {path} > {path.stem}.utf8{path.suffix}`")


def read_lines(path: str | Path) -> Iterator[str]:
    """The lines of a file `check_text_file` accepted, line endings kept as they are."""
    with open(path, "rb") as file:
        for line in file:  # a \n byte never falls inside a UTF-8 character
            yield line.decode("utf-8")


def lines_of(text: str) -> list[str]:
    """`text` cut after each \\n, as `read_lines` cuts a file."""
    return LINE.findall(text)


def paragraphs(lines: Iterable[str]) -> Iterator[str]:
    """The lines gathered into paragraphs, each ending after a blank line; a fenced code block
    is never cut, so that it is recognised (and left alone) whole. Joined, they give the lines back."""
    chunk: list[str] = []
    fenced = False
    for line in lines:
        if FENCE.match(line):
            fenced = not fenced
        chunk.append(line)
        if not fenced and not line.strip():
            yield "".join(chunk)
            chunk = []
    if chunk:
        yield "".join(chunk)
