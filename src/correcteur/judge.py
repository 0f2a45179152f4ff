"""The course's LLM judge: a local model scores each response from 0 to 100.

A judge is a second opinion, never the evaluation: the project we descend from got 60/100
from llama3 while most of its outputs were worse than the input. Read these scores next to
`python -m correcteur score`.

The names follow the course (`check_if_running`, `query_model`, `generate_model_scores`) and
its Ollama request (`POST /api/chat`, no streaming, seed 123, temperature 0, num_ctx 2048).
The same functions speak to OpenAI-compatible servers (`/v1/chat/completions`: llama.cpp's
server, vLLM, LM Studio, Ollama itself). Answers that don't parse are asked again once with a
stricter prompt, then kept as unparsed (None): reported, never dropped, never scored 0.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
import time
from pathlib import Path

import psutil
import requests
from tqdm import tqdm

from correcteur.errors import UserError
from correcteur.metrics import entry_texts

DEFAULT_URL = "http://localhost:11434"
DEFAULT_CHAT_URL = DEFAULT_URL + "/api/chat"
CHAT_PATHS = {"ollama": "/api/chat", "openai": "/v1/chat/completions"}
PROMPT_VERSION = "en-1"  # part of the cache key: change it whenever the prompts change
SCORE_KEY = "judge_score"

# Why English: the judge models people run locally (llama3 first) are trained mostly on English
# and follow English instructions, above all "answer with a number only", more reliably than
# French ones; the course's prompt is English too, so scores stay closer to its reference
# numbers. The French texts are quoted verbatim, never translated: the judge reads them as they
# are, and the instructions say they are French.
PROMPT = """You are grading a French spelling and grammar corrector.
Original French text, which may contain errors: «{source}»
Correct version (the reference): «{reference}»
The corrector's answer: «{response}»
Score the corrector's answer from 0 to 100. 100 means it is as correct as the reference; \
errors left in, new errors and changes of meaning lower the score.
Respond with the integer number only."""
STRICT_SUFFIX = """
Your answer must be a single integer between 0 and 100, with no words, no punctuation, no \
explanation. Example of a valid answer: 70"""

NUMBER = re.compile(r"-?\d+(?:[.,]\d+)?")


def check_if_running(process_name: str) -> bool:
    """Whether a process whose name contains `process_name` runs on this machine (the course's
    check that Ollama was started)."""
    for process in psutil.process_iter(["name"]):
        if process_name in (process.info["name"] or ""):
            return True
    return False


def chat_endpoint(url: str, api: str | None = None) -> tuple[str, str, str]:
    """(api, server root, chat url) from a server root (`http://localhost:11434`) or a full chat
    url; the api is `api` when given, else read from the url's path, else Ollama's."""
    url = url.rstrip("/")
    detected = None
    for name, path in CHAT_PATHS.items():
        if url.endswith(path):
            detected, url = name, url.removesuffix(path)
    if url.endswith("/v1"):
        detected, url = "openai", url.removesuffix("/v1")
    if api is not None and api not in CHAT_PATHS:
        raise UserError(f"unknown judge api {api!r}: choose one of {', '.join(CHAT_PATHS)}")
    if api is not None and detected is not None and api != detected:
        raise UserError(f"the url ends like an {detected} endpoint but api={api!r} was asked for")
    api = api or detected or "ollama"
    return api, url, url + CHAT_PATHS[api]


def _server_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    error = body.get("error", body) if isinstance(body, dict) else body
    return str(error.get("message", error) if isinstance(error, dict) else error)[:200]


def _post(url: str, payload: dict, timeout: float, retries: int, backoff: float) -> requests.Response:
    """POST with up to `retries` more tries, waiting backoff·2^k seconds, when the server times
    out, refuses the connection or answers 5xx; any other answer is returned as it is."""
    retries = max(0, retries)
    for attempt in range(retries + 1):
        try:
            response = requests.post(url, json=payload, timeout=timeout)
        except requests.Timeout:
            problem = f"no answer within {timeout} s"
        except requests.ConnectionError as error:
            problem = f"connection failed ({type(error).__name__})"
        else:
            if response.status_code < 500:
                return response
            problem = f"HTTP {response.status_code}: {_server_message(response)}"
        if attempt < retries:
            time.sleep(backoff * 2**attempt)
    raise UserError(f"{url} failed {retries + 1} times, last: {problem}. Is the server running "
                    "and the model loaded? Re-run the same command to resume where it stopped.")


def query_model(prompt: str, model: str = "llama3", url: str = DEFAULT_CHAT_URL,
                api: str | None = None, timeout: float = 120.0, retries: int = 3,
                backoff: float = 1.0, seed: int = 123, temperature: float = 0.0,
                num_ctx: int = 2048) -> str:
    """The model's answer to one user message (the course's function; `api` "openai" for
    OpenAI-compatible servers). The default timeout leaves time for Ollama to load the model."""
    api, _, chat_url = chat_endpoint(url, api)
    messages = [{"role": "user", "content": prompt}]
    if api == "ollama":
        payload = {"model": model, "messages": messages, "stream": False,
                   "options": {"seed": seed, "temperature": temperature, "num_ctx": num_ctx}}
    else:  # OpenAI's schema has no context-length option: the server's setting applies
        payload = {"model": model, "messages": messages, "stream": False,
                   "seed": seed, "temperature": temperature}
    response = _post(chat_url, payload, timeout, retries, backoff)
    if response.status_code == 404:
        raise UserError(f"{chat_url} answered 404 ({_server_message(response)}): is {model!r} "
                        f"pulled (`ollama pull {model}`) and is the url right?")
    if response.status_code >= 400:
        raise UserError(f"{chat_url} refused the request: HTTP {response.status_code}, "
                        f"{_server_message(response)}")
    try:
        body = response.json()
        return body["message"]["content"] if api == "ollama" else body["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise UserError(f"{chat_url} answered something that is not a {api} chat reply: "
                        f"{response.text[:200]!r}") from None


def _has_model(model: str, names: set[str]) -> bool:
    return model in names or (":" not in model and f"{model}:latest" in names)


def check_server(url: str = DEFAULT_URL, model: str = "llama3", api: str | None = None,
                 timeout: float = 10.0) -> None:
    """Raise one UserError that says what to do unless the server answers and has `model`."""
    api, root, _ = chat_endpoint(url, api)
    try:
        if api == "ollama":
            requests.get(root + "/api/version", timeout=timeout).raise_for_status()
            tags = requests.get(root + "/api/tags", timeout=timeout).json()
            names = {m.get(k) for m in tags.get("models", []) for k in ("name", "model")}
        else:
            listing = requests.get(root + "/v1/models", timeout=timeout).json()
            names = {m.get("id") for m in listing.get("data", [])}
    except (requests.RequestException, ValueError, AttributeError, TypeError) as error:  # TypeError: a bare number
        if api == "openai":
            how = "Start your OpenAI-compatible server (llama.cpp's llama-server, vLLM, LM Studio) there."
        elif check_if_running("ollama"):
            how = "An ollama process runs on this machine: check the url and port (--url)."
        else:
            how = (f"Start Ollama with `ollama serve` (get it from https://ollama.com), "
                   f"then `ollama pull {model}`, and run this command again.")
        raise UserError(f"no {api} server answers at {root} ({type(error).__name__}). {how}") from None
    if not _has_model(model, names):
        have = ", ".join(sorted(n for n in names if n)) or "none"
        pull = f"`ollama pull {model}`" if api == "ollama" else "load it in the server"
        raise UserError(f"the server at {root} has no model {model!r} (it has: {have}); {pull}, "
                        "or pass --model with one it has.")


def judge_prompt(source: str, reference: str, response: str, strict: bool = False) -> str:
    prompt = PROMPT.format(source=source, reference=reference, response=response)
    return prompt + STRICT_SUFFIX if strict else prompt


def parse_score(answer: str) -> int | None:
    """The first number of the answer when it is an integer from 0 to 100, else None.

    Stricter than "any integer in the answer": a first number that is not a valid score
    ("8.5/10", "150", "-3") is more likely a misunderstanding than a preamble, and None costs
    only one retry with the stricter prompt, whereas a wrong number would go unnoticed."""
    match = NUMBER.search(answer)
    if match is None or not match.group().isdigit():
        return None
    value = int(match.group())
    return value if value <= 100 else None


def cache_key(source: str, reference: str, response: str, model: str) -> str:
    blob = json.dumps([PROMPT_VERSION, model, source, reference, response], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def open_cache(path: Path):
    """(records by key, file open for appending) of a JSONL score cache. A line cut short by an
    interruption is skipped, and ended so that the next record starts on a line of its own."""
    records = {}
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    for line in text.splitlines():
        try:
            record = json.loads(line)
            records[record["key"]] = record
        except (ValueError, KeyError, TypeError):
            continue
    path.parent.mkdir(parents=True, exist_ok=True)
    file = path.open("a", encoding="utf-8")
    if text and not text.endswith("\n"):
        file.write("\n")
    return records, file


def judge_entry(source: str, reference: str, response: str, model: str, url: str,
                **query_options) -> dict:
    """Ask once; when the answer doesn't parse, ask once more with the stricter prompt."""
    answers = []
    for strict in (False, True):
        answers.append(query_model(judge_prompt(source, reference, response, strict), model, url,
                                   **query_options))
        score = parse_score(answers[-1])
        if score is not None:
            break
    return {"score": score, "answers": answers}


def generate_model_scores(json_data: list[dict], json_key: str = "model_response",
                          model: str = "llama3", *, url: str = DEFAULT_CHAT_URL,
                          cache_path: str | Path | None = None,
                          progress: bool = True, **query_options) -> list[int | None]:
    """One score per entry, in order (None = the judge's answers did not parse), judging
    `entry[json_key]` against the input and the reference output (the course's function).

    With `cache_path`, every result (unparsed ones too: at temperature 0 the judge would say
    the same again) is appended to that JSONL file as soon as it is known, and entries found
    there are not asked again, so an interrupted run resumes. `query_options` go to
    `query_model` (api, timeout, retries, backoff, ...)."""
    texts = [entry_texts(e, i, json_key) for i, e in enumerate(json_data)]
    cache, cache_file = open_cache(Path(cache_path)) if cache_path is not None else ({}, None)
    scores = []
    try:
        for source, reference, response in tqdm(texts, desc=f"judging with {model}", disable=not progress):
            key = cache_key(source, reference, response, model)
            if key not in cache:
                cache[key] = {"key": key, **judge_entry(source, reference, response, model, url,
                                                        **query_options)}
                if cache_file is not None:
                    cache_file.write(json.dumps(cache[key], ensure_ascii=False) + "\n")
                    cache_file.flush()
            scores.append(cache[key]["score"])
    finally:
        if cache_file is not None:
            cache_file.close()
    return scores


def summarize_scores(scores: list[int | None]) -> dict:
    """n, n_scored, n_unparsed, mean and median (over the parsed scores; None when none)."""
    parsed = [s for s in scores if s is not None]
    return {"n": len(scores), "n_scored": len(parsed), "n_unparsed": len(scores) - len(parsed),
            "mean": statistics.fmean(parsed) if parsed else None,
            "median": statistics.median(parsed) if parsed else None}


def plot_score_histogram(scores: list[int | None], save_path: str | Path | None = None):
    """Histogram of the parsed scores in bins of 10; returns the matplotlib Figure."""
    from matplotlib.figure import Figure

    summary = summarize_scores(scores)
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.hist([s for s in scores if s is not None], bins=range(0, 111, 10), edgecolor="white")
    ax.set_xlabel("judge score")
    ax.set_ylabel("entries")
    ax.set_title(f"{summary['n_scored']} scored of {summary['n']} ({summary['n_unparsed']} unparsed)")
    if save_path is not None:
        fig.savefig(save_path, dpi=120)
    return fig


def format_summary(summary: dict, model: str) -> str:
    mean = "—" if summary["mean"] is None else f"{summary['mean']:.1f}"
    median = "—" if summary["median"] is None else f"{summary['median']:g}"
    return (f"{model} scored {summary['n_scored']} of {summary['n']} entries "
            f"({summary['n_unparsed']} unparsed): mean {mean}, median {median}")
