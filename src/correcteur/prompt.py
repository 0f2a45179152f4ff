"""The prompt: how a text to correct is put to the model, and how its answer is read back.

Training, guard scoring and correction all build their prompts here, so the model is asked at
inference exactly what it was taught. The dataset's input prefix (e.g. "grammaire: ", recorded
once in the data manifest, then in the checkpoint) is added here and nowhere else: entries
never carry it.
"""

from __future__ import annotations

from correcteur.errors import UserError

INSTRUCTION = "Corrigez le texte suivant."
HF_PREFIX = "grammaire: "  # the task prefix of the Hugging Face dataset's inputs
SPECIAL_TOKEN = "<|endoftext|>"
ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
RESPONSE_HEADER = "\n\n### Response:\n"
# For small models: about a dozen GPT-2 tokens of overhead instead of about forty. Both headers
# end with a newline, so the prompt's last token is the same whether or not a response follows.
SHORT_RESPONSE_HEADER = "\n=>\n"
PROMPT_STYLES = ("alpaca", "short")


def check_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise UserError(f"unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}")


def format_input(entry: dict, style: str = "alpaca", input_prefix: str = "") -> str:
    """The instruction and input part of the prompt (the course's `format_input` for "alpaca");
    the response header comes from `format_response_prefix`."""
    check_style(style)
    given = input_prefix + entry["input"] if entry.get("input") else ""
    if style == "short":
        return f"{entry['instruction']}\n{given}"
    text = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{entry['instruction']}"
    return text + (f"\n\n### Input:\n{given}" if given else "")


def format_response_prefix(style: str = "alpaca") -> str:
    check_style(style)
    return SHORT_RESPONSE_HEADER if style == "short" else RESPONSE_HEADER


def build_prompt(entry: dict, style: str = "alpaca", input_prefix: str = "") -> str:
    """Everything the model reads before it writes the correction."""
    return format_input(entry, style, input_prefix) + format_response_prefix(style)


def correction_prompt(text: str, style: str = "alpaca", input_prefix: str = "") -> str:
    """The prompt that asks for `text` to be corrected, as the model saw it in training."""
    return build_prompt({"instruction": INSTRUCTION, "input": text}, style, input_prefix)


def extract_response(generated: str, style: str = "alpaca") -> str:
    """The correction inside generated text: what follows the response header (the whole text
    if it has none), up to the next "###" header, end-of-text or, for the short style, the
    start of a new prompt."""
    header = format_response_prefix(style)
    _, found, after = generated.partition(header)
    text = after if found else generated
    for stop in response_stops(style):
        text = text.split(stop, 1)[0]
    return text.strip()


def response_stops(style: str = "alpaca") -> list[str]:
    """The texts that end an answer, besides the model's end token (also given to Ollama)."""
    return [SPECIAL_TOKEN, "###"] + ([SHORT_RESPONSE_HEADER.rstrip("\n"), f"\n{INSTRUCTION}"]
                                     if style == "short" else [])
