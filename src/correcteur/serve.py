"""A LanguageTool-compatible HTTP server, so that the editors that already speak to LanguageTool
(LibreOffice, the browser add-on, VS Code's LTeX, Emacs, Vim) underline the corrector's edits.

It answers what those clients use of LanguageTool's API: `/v2/check` (POST with form fields, or
GET with a query string; `text`, or `data` in LanguageTool's annotation format, whose markup is
never corrected and counts in the offsets; `language` fr, fr-XX or auto; every other field is
accepted and ignored) and `/v2/languages`. Offsets and lengths count UTF-16 code units, as
LanguageTool's do. Errors are LanguageTool's: a status (400, 403, 413, 503) and a plain-text body.

Concurrency. `ThreadingHTTPServer` gives each connection a thread, so reading, parsing and
answering run side by side, but the model is loaded once and a corrector is not thread-safe
(generation and the guard share one model, and two would fight over the same cores): model
calls take one lock, in turn. At most `max_waiting` requests wait for it; one more gets 503 at
once, instead of a queue without end.
"""

from __future__ import annotations

import bisect
import hmac
import json
import re
import sys
import threading
import traceback
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import correcteur
from correcteur.correct import split_sentences
from correcteur.edits import KINDS, Edit, Span, utf16_index
from correcteur.errors import UserError

DEFAULT_PORT = 8081  # LanguageTool's own, where the clients look for a local server
MAX_TEXT_LENGTH = 50_000  # characters per request (LanguageTool's maxTextLength)
MAX_WAITING = 64
MAX_FIELDS = 200
CONTEXT_CHARS = 40  # characters of context on each side of a match, as LanguageTool shows
BYTES_PER_CHAR = 16  # a body may hold this many bytes per character of text (percent-encoded JSON)
FRENCH = {"name": "French", "code": "fr", "longCode": "fr"}
VARIANTS = {"fr-FR": "French (France)", "fr-BE": "French (Belgium)", "fr-CA": "French (Canada)",
            "fr-CH": "French (Switzerland)"}
# kind of edit -> LanguageTool's issueType, category id and a French category name
CATEGORIES = {
    "majuscule": ("typographical", "CASING", "Majuscules"),
    "accent": ("misspelling", "TYPOS", "Fautes de frappe possibles"),
    "frappe": ("misspelling", "TYPOS", "Fautes de frappe possibles"),
    "ponctuation": ("typographical", "PUNCTUATION", "Ponctuation"),
    "homophone": ("grammar", "CONFUSED_WORDS", "Confusions d'homophones"),
    "accord": ("grammar", "GRAMMAR", "Grammaire"),
    "conjugaison": ("grammar", "GRAMMAR", "Grammaire"),
    "manquant": ("grammar", "GRAMMAR", "Grammaire"),
    "superflu": ("grammar", "GRAMMAR", "Grammaire"),
    "correction": ("uncategorized", "MISC", "Divers"),
}


class RequestError(Exception):
    """A request refused, with LanguageTool's status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Checked:
    """What to correct: `plain` (text, markup read as its interpretAs), the spans of `plain`
    that are markup, and where each text segment of `plain` lies in the `original`."""

    original: str
    plain: str
    markup: list[Span] = field(default_factory=list)
    segments: list[tuple[int, int, int]] | None = None  # (start in plain, end in plain, start in original)

    def to_original(self, edit: Edit) -> int | None:
        """The edit's offset in the original text, None if it does not lie in one text segment."""
        if self.segments is None:
            return edit.offset
        for start, end, at in self.segments:
            if start <= edit.offset and edit.end <= end:
                return at + edit.offset - start
        return None


def read_input(fields: dict[str, str]) -> Checked:
    """The text of a request, from `text` or `data`."""
    if "text" in fields:
        return Checked(fields["text"], fields["text"])
    if "data" not in fields:
        raise RequestError(400, "Error: Missing 'text' or 'data' parameter")
    try:
        document = json.loads(fields["data"])
    except ValueError as error:
        raise RequestError(400, f"Error: 'data' is not valid JSON ({error})") from None
    items = document.get("annotation") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise RequestError(400, "Error: 'data' must be a JSON object with an 'annotation' list")
    checked = Checked("", "", [], [])
    original, plain = [], []
    at = position = 0
    for item in items:
        text, markup = (item.get("text"), item.get("markup")) if isinstance(item, dict) else (None, None)
        shown = item.get("interpretAs", "") if isinstance(item, dict) else None
        if isinstance(text, str):
            checked.segments.append((position, position + len(text), at))
            original.append(text)
            plain.append(text)
            at, position = at + len(text), position + len(text)
        elif isinstance(markup, str) and isinstance(shown, str):
            checked.markup.append((position, position + len(shown)))
            original.append(markup)
            plain.append(shown)
            at, position = at + len(markup), position + len(shown)
        else:
            raise RequestError(400, "Error: each item of 'annotation' needs a 'text' or a 'markup' string "
                                    "(and 'interpretAs', if any, a string)")
    checked.original, checked.plain = "".join(original), "".join(plain)
    return checked


def language_of(code: str | None) -> dict:
    """LanguageTool's `language` object for a requested code; French only."""
    if not code:
        raise RequestError(400, "Error: Missing 'language' parameter, e.g. 'language=fr' or 'language=auto'")
    code = code.strip()
    if code.lower() == "auto":
        detected = {"name": "French", "code": "fr", "confidence": 1.0, "source": "correcteur corrects French only"}
        return {"name": "French", "code": "fr", "detectedLanguage": detected}
    main, _, region = code.partition("-")
    if main.lower() != "fr":
        raise RequestError(400, f"Error: '{code}' is not a language code this server knows: it corrects French "
                                "only (fr, fr-FR, fr-BE, fr-CA, fr-CH, or auto)")
    code = f"fr-{region.upper()}" if region else "fr"
    name = VARIANTS.get(code, "French")
    return {"name": name, "code": code,
            "detectedLanguage": {"name": name, "code": code, "confidence": 1.0, "source": "language parameter"}}


def languages() -> list[dict]:
    """`/v2/languages`: French and its variants."""
    return [FRENCH, *({"name": name, "code": "fr", "longCode": code} for code, name in VARIANTS.items())]


def matches(checked: Checked, edits: list[Edit]) -> list[dict]:
    """LanguageTool's matches for edits of `checked.plain`, offsets in UTF-16 units of the original."""
    plain = checked.plain
    pieces = split_sentences(plain)
    starts, position = [], 0
    for piece, separator in pieces:
        starts.append(position)
        position += len(piece) + len(separator)
    to16 = utf16_index(checked.original)
    found = []
    for edit in edits:
        offset = checked.to_original(edit)
        if offset is None:  # across markup: never made by the corrector, but never answered either
            continue
        start16 = to16(offset)
        sentence = pieces[max(0, bisect.bisect_right(starts, edit.offset) - 1)][0]
        found.append(match(plain, edit, sentence, start16, to16(offset + edit.length) - start16))
    return found


def match(plain: str, edit: Edit, sentence: str, offset: int, length: int) -> dict:
    kind = edit.kind if edit.kind in CATEGORIES else "correction"
    issue, category, category_name = CATEGORIES[kind]
    start, end = max(0, edit.offset - CONTEXT_CHARS), min(len(plain), edit.end + CONTEXT_CHARS)
    context = plain[start:end]
    context16 = utf16_index(context)
    how = edit.source + ("" if edit.confidence is None else f", marge {edit.confidence:.1f} nats")
    return {
        "message": f"{edit.message or KINDS[kind]} ({how}).",
        "shortMessage": edit.message or KINDS[kind],
        "replacements": [{"value": edit.replacement}],
        "offset": offset,
        "length": length,
        "context": {"text": context, "offset": context16(edit.offset - start),
                    "length": context16(edit.end - start) - context16(edit.offset - start)},
        "sentence": sentence,
        "type": {"typeName": "UnknownWord" if issue == "misspelling" else "Other"},
        "rule": {"id": f"CORRECTEUR_{kind.upper()}", "description": KINDS[kind], "issueType": issue,
                 "category": {"id": category, "name": category_name}},
        "ignoreForIncompleteSentence": False,
        "contextForSureMatch": 0,
    }


class Service:
    """The corrector behind the server: one model, one request in it at a time."""

    def __init__(self, corrector, max_text_length: int = MAX_TEXT_LENGTH, api_key: str | None = None,
                 max_waiting: int = MAX_WAITING):
        self.corrector = corrector
        self.max_text_length = max_text_length
        self.api_key = api_key
        self.lock = threading.Lock()
        self.waiting = threading.BoundedSemaphore(max_waiting)

    def check(self, fields: dict[str, str]) -> dict:
        """The answer to `/v2/check` for the request's fields, or a RequestError."""
        if self.api_key is not None and not hmac.compare_digest(fields.get("apiKey", ""), self.api_key):
            raise RequestError(403, "Error: this server needs its API key (the 'apiKey' parameter)")
        checked = read_input(fields)
        language = language_of(fields.get("language"))
        if len(checked.plain) > self.max_text_length:
            raise RequestError(413, f"Error: Your text exceeds the limit of {self.max_text_length} characters "
                                    f"(it's {len(checked.plain)} characters). Please submit a shorter text.")
        edits = self._suggest(checked.plain, checked.markup)
        software = {"name": "correcteur", "version": correcteur.__version__, "buildDate": None, "apiVersion": 1,
                    "premium": False, "status": ""}
        return {"software": software, "warnings": {"incompleteResults": False}, "language": language,
                "matches": matches(checked, edits)}

    def _suggest(self, text: str, markup: list[Span]) -> list[Edit]:
        if not self.waiting.acquire(blocking=False):
            raise RequestError(503, "Error: the server is busy with other requests; try again in a moment")
        try:
            with self.lock:
                return self.corrector.suggest(text, markup)
        finally:
            self.waiting.release()


class Handler(BaseHTTPRequestHandler):
    """One connection: routes, reads fields, answers JSON or a LanguageTool-style error."""

    server: Server
    protocol_version = "HTTP/1.1"  # editors check on every pause in typing: keep the connection
    server_version = f"correcteur/{correcteur.__version__}"

    def do_GET(self) -> None:  # noqa: N802 (http.server's names)
        self._answer(lambda: urllib.parse.urlsplit(self.path).query)

    def do_POST(self) -> None:  # noqa: N802
        self._answer(self._body)

    def do_OPTIONS(self) -> None:  # noqa: N802 (a browser's preflight)
        self._send(204, b"", "text/plain; charset=utf-8")

    def _answer(self, read: Callable[[], str]) -> None:
        path = re.sub("/+", "/", urllib.parse.urlsplit(self.path).path).rstrip("/")
        try:
            given = read()  # first, whatever the path: a body left unread would spoil the next request
            if path.endswith("/v2/languages"):
                self._json(languages())
            elif path.endswith("/v2/check"):
                self._json(self.server.service.check(parse_fields(given, self.headers.get("Content-Type", ""))))
            else:
                raise RequestError(404, f"Error: no such endpoint {path or '/'}: this server answers "
                                        "/v2/check and /v2/languages")
        except RequestError as error:
            self._text(error.status, str(error))
        except UserError as error:  # the corrector refused this text (a word too long for the model)
            self._text(400, f"Error: {error}")
        except Exception as error:  # a bug must cost one request, never the server
            traceback.print_exc(file=sys.stderr)
            self._text(500, f"Error: internal error ({type(error).__name__}: {error})")

    def _body(self) -> str:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise RequestError(411, "Error: send the request with a Content-Length")
        try:
            size = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise RequestError(400, "Error: bad Content-Length") from None
        limit = BYTES_PER_CHAR * self.server.service.max_text_length + 65536
        if size > limit:
            self.close_connection = True  # the body is left unread: this connection cannot go on
            raise RequestError(413, f"Error: the request of {size} bytes is over this server's limit of {limit} "
                                    f"bytes (texts of up to {self.server.service.max_text_length} characters)")
        try:
            return self.rfile.read(size).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(400, "Error: the request body is not UTF-8") from None

    def _json(self, data) -> None:
        self._send(200, json.dumps(data, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _text(self, status: int, message: str) -> None:
        self._send(status, message.encode("utf-8"), "text/plain; charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.server.allow_origin:
            self.send_header("Access-Control-Allow-Origin", self.server.allow_origin)
            self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
            self.send_header("Access-Control-Allow-Headers", "Content-Type")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        if not self.server.quiet:
            super().log_message(format, *args)


def parse_fields(body: str, content_type: str = "") -> dict[str, str]:
    """A request's fields: form-encoded (LanguageTool's format, also sent by LTeX under an
    `application/json` content type), or a JSON object; the first value of a repeated field."""
    if body.lstrip().startswith("{") and "json" in content_type:
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return {key: value if isinstance(value, str) else json.dumps(value) for key, value in data.items()}
    try:
        pairs = urllib.parse.parse_qsl(body, keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError:
        raise RequestError(400, "Error: a parameter is not UTF-8 once percent-decoded") from None
    except ValueError:
        raise RequestError(400, f"Error: more than {MAX_FIELDS} parameters") from None
    fields: dict[str, str] = {}
    for key, value in pairs:
        fields.setdefault(key, value)
    return fields


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a client that keeps its connection open never blocks the exit

    def __init__(self, address: tuple[str, int], service: Service | None, allow_origin: str | None = None,
                 quiet: bool = False):
        super().__init__(address, Handler)
        self.service = service
        self.allow_origin = allow_origin
        self.quiet = quiet

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def start_in_thread(server: Server) -> threading.Thread:
    """Serve in a daemon thread (tests, benchmarks); `server.shutdown()` stops it."""
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="correcteur-server")
    thread.start()
    return thread
