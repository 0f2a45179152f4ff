"""The judge client against a local fake Ollama server that misbehaves on demand."""

import json

import pytest
from fake_ollama import FakeOllama, unused_url

from correcteur.cli import main
from correcteur.errors import UserError
from correcteur.judge import (
    chat_endpoint,
    check_server,
    generate_model_scores,
    judge_prompt,
    parse_score,
    plot_score_histogram,
    query_model,
    summarize_scores,
)

FAST = {"timeout": 0.2, "retries": 1, "backoff": 0.0}  # every failing call ends within ~0.5 s

ENTRIES = [
    {"instruction": "Corrigez le texte suivant.", "input": "Il a mangé une pome.",
     "output": "Il a mangé une pomme.", "model_response": "Il a mangé une pomme."},
    {"instruction": "Corrigez le texte suivant.", "input": "Nous somme contents.",
     "output": "Nous sommes contents.", "model_response": "Nous somme content."},
    {"instruction": "Corrigez le texte suivant.", "input": "Ces une bonne idée.",
     "output": "C'est une bonne idée.", "model_response": "C'est une bonne idée."},
]


def prompt_of(body: dict) -> str:
    return body["messages"][0]["content"]


def test_ollama_request_is_the_courses():
    with FakeOllama(replies=["85"]) as server:
        answer = query_model("Bonjour ?", "llama3", server.url + "/api/chat", **FAST)
    assert answer == "85"
    assert server.chat_requests == [{
        "model": "llama3", "messages": [{"role": "user", "content": "Bonjour ?"}], "stream": False,
        "options": {"seed": 123, "temperature": 0.0, "num_ctx": 2048}}]


@pytest.mark.parametrize("suffix, api", [("/v1", None), ("/v1/chat/completions", None), ("", "openai")])
def test_openai_compatible_endpoint(suffix, api):
    with FakeOllama(replies=["72"]) as server:
        check_server(server.url + suffix, "llama3", api=api, timeout=0.2)
        answer = query_model("Note ?", "llama3", server.url + suffix, api=api, **FAST)
    assert answer == "72"
    body = server.chat_requests[0]
    assert (body["seed"], body["temperature"], body["stream"]) == (123, 0.0, False)
    assert "options" not in body


def test_endpoint_from_url():
    assert chat_endpoint("http://h:11434/") == ("ollama", "http://h:11434", "http://h:11434/api/chat")
    assert chat_endpoint("http://h:8080/v1/chat/completions") == (
        "openai", "http://h:8080", "http://h:8080/v1/chat/completions")
    with pytest.raises(UserError, match="ollama endpoint"):
        chat_endpoint("http://h:11434/api/chat", api="openai")


def test_server_not_started_says_how_to_start_it():
    with pytest.raises(UserError, match=r"`ollama serve`.*`ollama pull llama3`"):
        check_server(unused_url(), "llama3", timeout=0.2)


def test_model_not_pulled():
    with FakeOllama(models=["mistral:latest"]) as server:
        check_server(server.url, "mistral", timeout=0.2)
        with pytest.raises(UserError, match=r"no model 'llama3' \(it has: mistral:latest\); `ollama pull llama3`"):
            check_server(server.url, "llama3", timeout=0.2)
        with pytest.raises(UserError, match="404.*ollama pull llama3"):
            query_model("x", "llama3", server.url, **FAST)


def test_server_error_once_is_retried():
    with FakeOllama(replies=["64"], script=["500"]) as server:
        assert query_model("x", "llama3", server.url, **FAST) == "64"
    assert len(server.chat_requests) == 2


def test_persistent_errors_give_up_after_bounded_tries():
    with FakeOllama(script=["500"] * 10) as server, \
            pytest.raises(UserError, match="failed 2 times, last: HTTP 500"):
        query_model("x", "llama3", server.url, **FAST)
    assert len(server.chat_requests) == 2
    with pytest.raises(UserError, match="failed 2 times, last: connection failed"):
        query_model("x", "llama3", unused_url(), **FAST)


def test_backoff_doubles_between_tries(monkeypatch):
    waits = []
    monkeypatch.setattr("correcteur.judge.time.sleep", waits.append)
    with pytest.raises(UserError, match="failed 4 times"):
        query_model("x", "llama3", unused_url(), timeout=0.2, retries=3, backoff=0.5)
    assert waits == [0.5, 1.0, 2.0]


def test_slow_answer_times_out_then_recovers():
    with FakeOllama(replies=["90"], script=["slow", "slow"]) as server:
        with pytest.raises(UserError, match="no answer within 0.2 s"):
            query_model("x", "llama3", server.url, **FAST)
        assert query_model("x", "llama3", server.url, **FAST) == "90"  # one slow, then fine


@pytest.mark.parametrize("answer, score", [
    ("85", 85), (" 100\n", 100), ("0", 0), ("Score : 85/100", 85), ("I would give it 72.", 72),
    ("8.5/10", None), ("150", None), ("-3", None), ("Très bien !", None), ("", None),
])
def test_parse_score(answer, score):
    assert parse_score(answer) == score


def test_unparsable_answer_is_asked_again_strictly():
    with FakeOllama(replies=["Très bonne correction !", "90"]) as server:
        scores = generate_model_scores(ENTRIES[:1], url=server.url, progress=False, **FAST)
    assert scores == [90]
    first, second = (prompt_of(b) for b in server.chat_requests)
    assert second.startswith(first) and "single integer" in second[len(first):]
    assert "«Il a mangé une pome.»" in first


def test_always_unparsable_is_reported_not_dropped():
    with FakeOllama(replies=["Bien."]) as server:
        scores = generate_model_scores(ENTRIES, url=server.url, progress=False, **FAST)
    assert scores == [None, None, None]
    assert len(server.chat_requests) == 6  # one strict retry per entry, no more
    assert summarize_scores(scores) == {"n": 3, "n_scored": 0, "n_unparsed": 3, "mean": None, "median": None}


def test_interrupted_run_resumes_from_cache(tmp_path):
    cache = tmp_path / "judge.cache.jsonl"
    with FakeOllama(replies=["80"], script=["ok", "500", "500"]) as server, \
            pytest.raises(UserError, match="resume"):
        generate_model_scores(ENTRIES, url=server.url, cache_path=cache, progress=False, **FAST)
    assert len(cache.read_text().splitlines()) == 1
    with cache.open("a") as f:
        f.write('{"key": "cut sho')  # a record cut by the interruption
    with FakeOllama(replies=["60", "40"]) as server:
        scores = generate_model_scores(ENTRIES, url=server.url, cache_path=cache, progress=False, **FAST)
    assert scores == [80, 60, 40]
    assert [prompt_of(b) for b in server.chat_requests] == [
        judge_prompt("Nous somme contents.", "Nous sommes contents.", "Nous somme content."),
        judge_prompt("Ces une bonne idée.", "C'est une bonne idée.", "C'est une bonne idée.")]
    with FakeOllama(replies=["0"]) as server:
        assert generate_model_scores(ENTRIES, url=server.url, cache_path=cache, progress=False) == [80, 60, 40]
    assert server.chat_requests == []


def test_summary_and_histogram(tmp_path):
    scores = [90, None, 70, 75]
    assert summarize_scores(scores) == {"n": 4, "n_scored": 3, "n_unparsed": 1, "mean": 235 / 3, "median": 75}
    fig = plot_score_histogram(scores, tmp_path / "hist.png")
    counts = [bar.get_height() for bar in fig.axes[0].patches]
    assert counts == [0, 0, 0, 0, 0, 0, 0, 2, 0, 1, 0]  # 70 and 75 in [70, 80), 90 in [90, 100)
    assert (tmp_path / "hist.png").stat().st_size > 0


def test_judge_command(tmp_path, capsys):
    data = tmp_path / "responses.json"
    original = json.dumps(ENTRIES, ensure_ascii=False)
    data.write_text(original, encoding="utf-8")
    summary = tmp_path / "summary.json"
    with FakeOllama(replies=["95", "Oui", "30", "88"]) as server:
        code = main(["judge", str(data), "--url", server.url, "--timeout", "0.2", "--retries", "0",
                     "--json", str(summary)])
    assert code == 0
    assert data.read_text(encoding="utf-8") == original
    judged = json.loads((tmp_path / "responses.judged.json").read_text(encoding="utf-8"))
    assert [e["judge_score"] for e in judged] == [95, 30, 88]
    assert [{k: v for k, v in e.items() if k != "judge_score"} for e in judged] == ENTRIES
    assert json.loads(summary.read_text())["mean"] == pytest.approx(71.0)
    assert "llama3 scored 3 of 3 entries (0 unparsed): mean 71.0, median 88" in capsys.readouterr().out
    assert main(["judge", str(data), "--out", str(data), "--url", unused_url()]) == 2
    assert "never overwrites its input" in capsys.readouterr().err
    assert main(["judge", str(data), "--url", unused_url(), "--timeout", "0.2"]) == 2
    assert "ollama serve" in capsys.readouterr().err
