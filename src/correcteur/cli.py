"""`python -m correcteur <command>`: one command per pipeline stage.

Each command lives in its stage's module as `add_<command>_arguments(parser)` and
`run_<command>(args) -> int`; the module is imported only when its command runs, so
`--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from correcteur.errors import UserError

COMMANDS: dict[str, tuple[str, str]] = {
    "download": ("correcteur.weights", "download GPT-2, SmolLM2 or small hub models into checkpoints/"),
    "data": ("correcteur.data", "build the instruction dataset: clean, augment, split leak-free"),
    "train": ("correcteur.train", "fine-tune a model on the instruction dataset"),
    "export": ("correcteur.checkpoint", "write a trained model in bfloat16/float16 (half the size)"),
    "guard": ("correcteur.guard", "tune the guard's thresholds on the validation split (guard.json)"),
    "respond": ("correcteur.evaluate", "generate a model_response for every test entry"),
    "score": ("correcteur.metrics", "score responses against the reference and the copy baseline"),
    "judge": ("correcteur.judge", "score responses with an LLM judge (Ollama or OpenAI-compatible)"),
    "evaluate": ("correcteur.evaluate", "respond + score + baselines (+ judge): a full report"),
    "correct": ("correcteur.correct", "correct text given as arguments or on standard input"),
    "app": ("correcteur.app", "open the Tkinter corrector window"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="correcteur",
        description="Fine-tune a language model to correct French text, evaluate it honestly, use it.",
        epilog="Run `python -m correcteur COMMAND --help` for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        cmd_parser = sub.add_parser(name, help=help_text, description=help_text,
                                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if name == command:
            module = importlib.import_module(module_name)
            getattr(module, f"add_{name}_arguments")(cmd_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(getattr(module, f"run_{args.command}")(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
