"""A stand-in for an Ollama server, since the real one can't run on the test machines.

It speaks `/api/version`, `/api/tags`, `/api/chat` and the OpenAI-compatible `/v1/models` and
`/v1/chat/completions` on 127.0.0.1 (a free port), and misbehaves on demand:

- `script`: what the next chat requests get, in order: "ok", "500" (an internal server
  error) or "slow" (an answer `slow_seconds` late, after the client gave up); "ok" once the
  script is used up;
- `replies`: the contents of the successive answers, the last one repeated;
- a model missing from `models` gets 404, as Ollama answers for a model that isn't pulled;
- `unused_url()`: an address where nothing listens (the server was never started).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def unused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class FakeOllama:
    def __init__(self, models=("llama3:latest",), replies=("85",), script=(), slow_seconds=0.5):
        self.models = list(models)
        self.replies = list(replies)
        self.script = list(script)
        self.slow_seconds = slow_seconds
        self.chat_requests: list[dict] = []  # bodies of every chat request, in order
        self.answered = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler_class())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> FakeOllama:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def has_model(self, name: str) -> bool:
        return name in self.models or f"{name}:latest" in self.models

    def next_chat(self, body: dict) -> tuple[str, str]:
        """(action, reply content) for one chat request."""
        with self.lock:
            self.chat_requests.append(body)
            action = self.script.pop(0) if self.script else "ok"
            reply = self.replies[min(self.answered, len(self.replies) - 1)]
            if action == "ok":
                self.answered += 1
        return action, reply

    def handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output quiet
                pass

            def send_json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
                    pass

            def do_GET(self) -> None:
                if self.path == "/api/version":
                    self.send_json(200, {"version": "0.0.0-fake"})
                elif self.path == "/api/tags":
                    self.send_json(200, {"models": [{"name": m, "model": m} for m in fake.models]})
                elif self.path == "/v1/models":
                    self.send_json(200, {"object": "list",
                                         "data": [{"id": m, "object": "model"} for m in fake.models]})
                else:
                    self.send_json(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path not in ("/api/chat", "/v1/chat/completions"):
                    self.send_json(404, {"error": "not found"})
                    return
                if not fake.has_model(body.get("model", "")):
                    self.send_json(404, {"error": f"model '{body.get('model')}' not found, "
                                                  "try pulling it first"})
                    return
                action, reply = fake.next_chat(body)
                if action == "500":
                    self.send_json(500, {"error": "llama runner process has terminated"})
                    return
                if action == "slow":
                    time.sleep(fake.slow_seconds)
                message = {"role": "assistant", "content": reply}
                if self.path == "/api/chat":
                    self.send_json(200, {"model": body["model"], "message": message, "done": True})
                else:
                    self.send_json(200, {"object": "chat.completion", "model": body["model"],
                                         "choices": [{"index": 0, "message": message,
                                                      "finish_reason": "stop"}]})

        return Handler
