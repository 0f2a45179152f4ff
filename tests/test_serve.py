"""The LanguageTool-compatible server, through a real HTTP client (urllib) against a running server.

The request shapes of the clients follow their documentation and bug reports:
- LanguageTool's HTTP API (`/v2/check`): form-encoded fields `text` or `data` (a JSON
  `{"annotation": [{"text": ...}, {"markup": ..., "interpretAs": ...}]}`), `language` (a code
  or `auto`), and optional `motherTongue`, `preferredVariants`, `enabledRules`,
  `disabledRules`, `enabledCategories`, `disabledCategories`, `enabledOnly`, `level`
  (`default` or `picky`), `username`, `apiKey`.
- The browser add-on: POST form fields, `language=auto` with `preferredVariants`, `data` for
  rich editors, `level`, `enabledOnly=false`, `motherTongue`; it talks to `<server>/v2`.
- LTeX (ltex-ls): POST form fields `data` (its markup as annotation, math as `interpretAs`
  dummies), `language`, `enabledOnly=false`, `motherTongue`, `disabledRules`, but under a
  `Content-Type: application/json` header (ltex-ls pull request #276); it talks to the root URL.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from test_bad_inputs import tiny_run  # noqa: F401 (a fixture: a gpt2-tiny run trained two steps)
from test_correct import scripted

from correcteur.serve import Server, Service, start_in_thread

ANSWERS = {
    "Il a manger une pome 🍎 hier.": "Il a mangé une pomme 🍎 hier.",
    "Ça va 👍🏽 ?": "Ça va 👍🏽 ?",
    "Il a manger une pome.": "Il a mangé une pomme.",
    "Soit Dummy0 un nombre entier positif.": "Soit dummy0 un nombres entier positif.",
    "Ecris a jean@mail.fr avant 10h30.": "Écris à JEAN@MAIL.FR avant 11h00.",
}


def request(url: str, fields: dict | None = None, path: str = "/v2/check", method: str = "POST",
            headers: dict | None = None, body: bytes | None = None) -> tuple[int, str, str]:
    """(status, body, content type) of one request; errors are answers too."""
    query = urllib.parse.urlencode(fields or {})
    if method == "GET":
        req = urllib.request.Request(f"{url}{path}?{query}", method="GET")
    else:
        req = urllib.request.Request(url + path, data=body if body is not None else query.encode(),
                                     headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as answer:
            return answer.status, answer.read().decode("utf-8"), answer.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8"), error.headers["Content-Type"]


@pytest.fixture(scope="module")
def server():
    corrector = scripted(ANSWERS)
    corrector.dictionary = frozenset({"Kubernetes"})
    server = Server(("127.0.0.1", 0), Service(corrector, max_text_length=200, api_key=None), quiet=True)
    start_in_thread(server)
    yield server
    server.shutdown()
    server.server_close()


def test_check_answers_languagetools_json_with_utf16_offsets(server):
    text = "Ça va 👍🏽 ? Il a manger une pome 🍎 hier."
    status, body, content_type = request(server.url, {"text": text, "language": "fr-FR"})
    assert status == 200 and content_type.startswith("application/json")
    answer = json.loads(body)
    assert set(answer) == {"software", "warnings", "language", "matches"}
    assert answer["software"]["name"] == "correcteur" and answer["software"]["apiVersion"] == 1
    assert answer["language"]["code"] == "fr-FR" and answer["language"]["name"] == "French (France)"
    first, second = answer["matches"]
    assert set(first) >= {"message", "shortMessage", "offset", "length", "replacements", "context", "sentence",
                          "rule"}
    assert set(first["rule"]) >= {"id", "description", "issueType", "category"}
    assert set(first["rule"]["category"]) == {"id", "name"}
    # 👍🏽 is two characters beyond U+FFFF: four UTF-16 units before "manger", not two
    units = text.encode("utf-16-le")
    for found, expected in [(first, "manger"), (second, "pome")]:
        start, length = found["offset"], found["length"]
        assert units[2 * start:2 * (start + length)].decode("utf-16-le") == expected
    assert (first["offset"], first["length"]) == (text.index("manger") + 2, 6)
    assert first["replacements"] == [{"value": "mangé"}]
    assert first["shortMessage"] == "Terminaison du verbe"
    assert first["rule"] == {"id": "CORRECTEUR_CONJUGAISON", "description": "Terminaison du verbe",
                             "issueType": "grammar", "category": {"id": "GRAMMAR", "name": "Grammaire"}}
    assert second["rule"]["issueType"] == "misspelling" and second["replacements"] == [{"value": "pomme"}]
    assert first["sentence"] == "Il a manger une pome 🍎 hier."
    context = first["context"]
    context_units = context["text"].encode("utf-16-le")
    assert context_units[2 * context["offset"]:2 * (context["offset"] + context["length"])].decode(
        "utf-16-le") == "manger"


def test_get_and_languages(server):
    status, body, _ = request(server.url, {"text": "Il a manger une pome.", "language": "fr"}, method="GET")
    assert status == 200 and [m["replacements"][0]["value"] for m in json.loads(body)["matches"]] == ["mangé", "pomme"]
    status, body, _ = request(server.url, path="/v2/languages", method="GET")
    assert status == 200 and {"name": "French", "code": "fr", "longCode": "fr"} in json.loads(body)
    assert {entry["longCode"] for entry in json.loads(body)} >= {"fr", "fr-FR", "fr-CA"}


def test_the_browser_add_on_request(server):
    """What the add-on sends from a rich editor: data, language=auto and its other fields."""
    data = {"annotation": [{"text": "Il a manger"}, {"markup": "<b>"}, {"text": " une pome"},
                           {"markup": "</b>"}, {"text": "."}]}
    fields = {"data": json.dumps(data), "language": "auto", "motherTongue": "fr", "preferredVariants": "fr-FR",
              "level": "picky", "enabledOnly": "false", "disabledRules": "WHITESPACE_RULE",
              "textSessionId": "123:456", "noopLanguages": "en,de", "mode": "allButTextLevelOnly"}
    status, body, _ = request(server.url, fields,
                              headers={"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8",
                                       "Origin": "moz-extension://abc"})
    assert status == 200, body
    answer = json.loads(body)
    assert answer["language"]["detectedLanguage"]["code"] == "fr"
    original = "Il a manger<b> une pome</b>."
    found = [(original[m["offset"]:m["offset"] + m["length"]], m["replacements"][0]["value"])
             for m in answer["matches"]]
    assert found == [("manger", "mangé"), ("pome", "pomme")]  # offsets count the markup


def test_the_ltex_request_with_its_json_content_type(server):
    """LTeX sends form fields under `Content-Type: application/json`; its math is markup read as
    a dummy word, which the model would change ("Dummy0" -> "dummy0") and must not."""
    data = {"annotation": [{"markup": "\\section{"}, {"text": "Ecris a jean@mail.fr avant 10h30."},
                           {"markup": "}\n\n", "interpretAs": "\n\n"}, {"text": "Soit "},
                           {"markup": "$x$", "interpretAs": "Dummy0"}, {"text": " un nombre entier positif."}]}
    fields = {"data": json.dumps(data), "language": "fr", "enabledOnly": "false", "motherTongue": "fr",
              "disabledRules": ""}
    status, body, _ = request(server.url, fields, headers={"Content-Type": "application/json"})
    assert status == 200, body
    original = "".join(item.get("text", item.get("markup")) for item in data["annotation"])
    found = [(original[m["offset"]:m["offset"] + m["length"]], m["replacements"][0]["value"])
             for m in json.loads(body)["matches"]]
    # the e-mail, the time and the math dummy are never edited; "nombre" -> "nombres" is
    assert found == [("Ecris", "Écris"), ("a", "à"), ("nombre", "nombres")]


@pytest.mark.parametrize("fields, status, message", [
    ({"language": "fr"}, 400, "Error: Missing 'text' or 'data' parameter"),
    ({"text": "Bonjour."}, 400, "Missing 'language' parameter"),
    ({"text": "Hello.", "language": "en-US"}, 400, "'en-US' is not a language code this server knows"),
    ({"data": "{not json", "language": "fr"}, 400, "'data' is not valid JSON"),
    ({"data": '{"annotation": [{"image": 1}]}', "language": "fr"}, 400, "needs a 'text' or a 'markup'"),
    ({"data": '[1, 2]', "language": "fr"}, 400, "'annotation' list"),
    ({"text": "x" * 201, "language": "fr"}, 413, "exceeds the limit of 200 characters (it's 201"),
])
def test_bad_requests_get_languagetools_errors_and_the_server_lives_on(server, fields, status, message):
    got, body, content_type = request(server.url, fields)
    assert (got, content_type) == (status, "text/plain; charset=utf-8")
    assert message in body
    assert request(server.url, {"text": "Il a manger une pome.", "language": "fr"})[0] == 200


def test_malformed_bodies_and_paths(server):
    assert request(server.url, body=b"text=%C3%28&language=fr")[:1] == (400,)  # not UTF-8 once decoded
    assert request(server.url, body=b"\xff\xfe", headers={"Content-Type": "text/plain"})[0] == 400
    status, body, _ = request(server.url, {"text": "x", "language": "fr"}, path="/v1/nothing")
    assert status == 404 and "/v2/check" in body
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)  # a body announced far over the limit
    connection.putrequest("POST", "/v2/check")
    connection.putheader("Content-Length", str(10**9))
    connection.endheaders()
    answer = connection.getresponse()
    assert answer.status == 413 and b"over this server's limit" in answer.read()
    connection.close()
    # one connection, kept alive: a refused request's body never spills into the next one
    connection = http.client.HTTPConnection(host, port, timeout=30)
    for path, status in [("/v1/nothing", 404), ("/v2/check", 200), ("/v2/languages", 200), ("/v2/check", 200)]:
        connection.request("POST", path, body=urllib.parse.urlencode({"text": "Il a manger une pome.", "language": "fr"}),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        answer = connection.getresponse()
        assert answer.status == status, answer.read()
        answer.read()
    connection.close()
    # a double slash, as a root URL with its trailing slash gives
    assert request(server.url, {"text": "Il a manger une pome.", "language": "fr"}, path="//v2/check")[0] == 200


def test_concurrent_clients_share_one_model(server):
    text = "Il a manger une pome 🍎 hier."
    results = []

    def client() -> None:
        status, body, _ = request(server.url, {"text": text, "language": "fr"})
        results.append((status, len(json.loads(body)["matches"])))

    threads = [threading.Thread(target=client) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [(200, 2)] * 12


class BlockingCorrector:
    """Holds the model until released: the second request finds the wait full."""

    def __init__(self):
        self.entered, self.release = threading.Event(), threading.Event()

    def suggest(self, text, protected=()):
        self.entered.set()
        self.release.wait(30)
        return []


def test_a_full_wait_answers_503_and_an_api_key_is_checked():
    corrector = BlockingCorrector()
    server = Server(("127.0.0.1", 0), Service(corrector, api_key="s3cret", max_waiting=1), quiet=True)
    start_in_thread(server)
    try:
        assert request(server.url, {"text": "a", "language": "fr"})[:2] == (
            403, "Error: this server needs its API key (the 'apiKey' parameter)")
        assert request(server.url, {"text": "a", "language": "fr", "apiKey": "wrong"})[0] == 403
        first = threading.Thread(target=request, args=(server.url, {"text": "a", "language": "fr", "apiKey": "s3cret"}))
        first.start()
        assert corrector.entered.wait(30)
        status, body, _ = request(server.url, {"text": "b", "language": "fr", "apiKey": "s3cret"})
        assert status == 503 and "busy" in body
        corrector.release.set()
        first.join()
        assert request(server.url, {"text": "c", "language": "fr", "apiKey": "s3cret"})[0] == 200
    finally:
        corrector.release.set()
        server.shutdown()
        server.server_close()


def test_the_serve_command_with_a_tiny_checkpoint(tiny_run, tmp_path):  # noqa: F811
    """`python -m correcteur serve` in its own process: it prints its address, answers, and stops
    on Ctrl-C with status 0."""
    checkpoint, _ = tiny_run
    words = tmp_path / "mots.txt"
    words.write_text("Kubernetes\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    process = subprocess.Popen([sys.executable, "-m", "correcteur", "serve", "--checkpoint", str(checkpoint),
                                "--port", "0", "--dictionary", str(words), "--max-text-length", "300"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+)/v2", line).group(1)
        status, body, _ = request(url, {"text": "Les enfant joue au parc avec Kubernetes.", "language": "fr"})
        assert status == 200, body
        answer = json.loads(body)
        assert answer["matches"] == [] or all(m["rule"]["id"].startswith("CORRECTEUR_") for m in answer["matches"])
        assert request(url, {"text": "x" * 301, "language": "fr"})[0] == 413
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(60)
    assert code == 0, process.stderr.read()


def test_serve_help_answers_without_torch_and_with_the_servers_defaults():
    from correcteur import serve
    from correcteur.cli import build_parser

    args = build_parser("serve").parse_args(["serve", "--checkpoint", "run"])
    assert (args.host, args.port, args.max_text_length) == ("127.0.0.1", serve.DEFAULT_PORT, serve.MAX_TEXT_LENGTH)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    code = "import sys, correcteur.cli as c; c.build_parser('serve'); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout == "False\n"
