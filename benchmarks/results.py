"""One place that writes benchmark tables into benchmarks/RESULTS.md, one section per benchmark."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = "# Benchmark results\n\nEach section is rewritten by the script named in it. Machine: see each section.\n"


def command_line(script: str, parser, args, leave_out: tuple[str, ...] = ()) -> str:
    """The command that reproduces a run: the script with the options that differ from their
    defaults (flags bare), except those in `leave_out` (ones that change nothing measured)."""
    options = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items()
               if v != parser.get_default(k) and k not in leave_out]
    return " ".join([f"python benchmarks/{script}", *options])


def write_section(title: str, body: str, command: str) -> None:
    """Replace (or append) the `## title` section of RESULTS.md, keeping every other section."""
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else HEADER
    stamp = datetime.date.today().isoformat()
    section = f"## {title}\n\nMeasured {stamp} with `{command}`.\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text, encoding="utf-8")
