"""Downloading GPT-2 from a local server laid out like the Hugging Face hub."""

from __future__ import annotations

import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from correcteur import fetch, weights
from correcteur.cli import main
from correcteur.errors import UserError
from correcteur.generate import generate
from correcteur.model import GPTModel

REPO = "openai-community/gpt2"


class FakeHub:
    """Serves files at `/{repo}/resolve/main/{name}` as the hub does: large files through a
    redirect that states their sha256 and size (X-Linked-Etag, X-Linked-Size), Range requests
    answered with 206. Knobs let a test break it."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.stated_size: int | None = None  # announce a wrong size
        self.stated_sha256: str | None = None  # announce a wrong hash
        self.cut_after: int | None = None  # break the connection after this many bytes
        self.honour_range = True
        self.status = 200
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hub.handle(self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        self.requests.append((request.path, request.headers.get("Range")))
        name = request.path.rsplit("/", 1)[-1]
        if self.status != 200 or name not in self.files:
            request.send_error(self.status if self.status != 200 else 404)
            return
        data = self.files[name]
        if name.endswith(".safetensors") and "/resolve/main/" in request.path:
            request.send_response(302)
            request.send_header("Location", f"/cdn/{name}")
            request.send_header("X-Linked-Etag", f'"{self.stated_sha256 or hashlib.sha256(data).hexdigest()}"')
            request.send_header("X-Linked-Size", str(self.stated_size or len(data)))
            request.end_headers()
            return
        ranged = "Range" in request.headers and self.honour_range
        start = int(request.headers["Range"].split("=")[1].rstrip("-")) if ranged else 0
        request.send_response(206 if start else 200)
        if start:
            request.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        request.send_header("Content-Length", str(len(data) - start))
        request.end_headers()
        request.wfile.write(data[start:][: self.cut_after])

    def ranges(self, name: str) -> list[str | None]:
        return [r for path, r in self.requests if path.endswith("/" + name)]


@pytest.fixture
def hub(hf_gpt2_dir):
    server = FakeHub({name: (hf_gpt2_dir / name).read_bytes() for name in weights.GPT2_FILES})
    thread = threading.Thread(target=server.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_download_and_load_gives_hugging_face_gpt2(hub, tmp_path, hf_gpt2_dir, tokenizer):
    from transformers import GPT2LMHeadModel

    settings, params = weights.download_and_load_gpt2("124M", tmp_path, endpoint=hub.url)
    assert sorted(p.name for p in (tmp_path / "124M").iterdir()) == ["config.json", "model.safetensors"]
    gpt = GPTModel(weights.config_from_settings(settings)).eval()
    weights.load_weights_into_gpt(gpt, params)

    reference = GPT2LMHeadModel.from_pretrained(hf_gpt2_dir).eval()
    prompt = torch.tensor([tokenizer.encode("Il a manger une pomme hier soir.")])
    with torch.no_grad():
        diff = (gpt(prompt) - reference(prompt).logits).abs().max().item()
    assert diff < 1e-4
    expected = reference.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None,
                                  pad_token_id=tokenizer.eot_token)
    assert generate(gpt, prompt, 20, 128).tolist() == expected.tolist()

    count = len(hub.requests)  # complete files are not fetched again, whatever the size's spelling
    weights.download_and_load_gpt2("gpt2-small (124M)", tmp_path, endpoint=hub.url)
    assert len(hub.requests) == count


@pytest.mark.parametrize("honour_range", [True, False])
def test_partial_file_is_resumed(hub, tmp_path, honour_range):
    """Resumed where the server honours Range; else downloaded again from the start."""
    hub.honour_range = honour_range
    data = hub.files["model.safetensors"]
    (tmp_path / "124M").mkdir()
    (tmp_path / "124M" / "model.safetensors.part").write_bytes(data[:100_000])
    path = weights.download_gpt2("gpt2", tmp_path, endpoint=hub.url)
    assert hub.ranges("model.safetensors") == ["bytes=100000-"] * 2  # the redirect, then the file
    assert (path / "model.safetensors").read_bytes() == data
    assert not (path / "model.safetensors.part").exists()


def test_broken_connection_keeps_the_part_for_next_time(hub, tmp_path):
    hub.cut_after = 300_000
    with pytest.raises(UserError, match="connection broke"):
        weights.download_gpt2("124M", tmp_path, endpoint=hub.url)
    target = tmp_path / "124M"
    assert not (target / "model.safetensors").exists()
    kept = (target / "model.safetensors.part").stat().st_size
    assert 300_000 - fetch.CHUNK_SIZE < kept <= 300_000  # at most the last chunk is lost

    hub.cut_after = None
    weights.download_gpt2("124M", tmp_path, endpoint=hub.url)
    assert hub.ranges("model.safetensors")[-1] == f"bytes={kept}-"
    assert (target / "model.safetensors").read_bytes() == hub.files["model.safetensors"]


@pytest.mark.parametrize("knob, message", [("stated_size", "bytes instead of the"),
                                           ("stated_sha256", "sha256 differs")])
def test_wrong_size_or_hash_is_rejected_and_nothing_kept(hub, tmp_path, knob, message):
    setattr(hub, knob, 123 if knob == "stated_size" else "0" * 64)
    with pytest.raises(UserError, match=message):
        weights.download_gpt2("124M", tmp_path, endpoint=hub.url)
    assert sorted(p.name for p in (tmp_path / "124M").iterdir()) == ["config.json"]


def test_server_down_gives_one_clear_paragraph(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError) as error:
        weights.download_gpt2("gpt2-medium", tmp_path, endpoint=f"http://127.0.0.1:{port}")
    message = str(error.value)
    assert f"cannot connect to 127.0.0.1:{port}" in message
    assert str(tmp_path / "355M" / "config.json") in message
    assert str(tmp_path / "355M" / "model.safetensors") in message
    assert "openai-community/gpt2-medium" in message and "\n" not in message
    assert error.value.__suppress_context__  # no chained traceback from requests
    assert list((tmp_path / "355M").iterdir()) == []


def test_http_error_is_named(hub, tmp_path):
    hub.status = 503
    with pytest.raises(UserError, match="HTTP 503"):
        weights.download_gpt2("124M", tmp_path, endpoint=hub.url)


def test_command_line_download(hub, tmp_path, capsys):
    assert main(["download", "--model", "124M", "--models-dir", str(tmp_path), "--endpoint", hub.url]) == 0
    assert (tmp_path / "124M" / "model.safetensors").read_bytes() == hub.files["model.safetensors"]
    assert main(["download", "--model", "999M", "--models-dir", str(tmp_path)]) == 2
    assert "unknown GPT-2 size '999M'" in capsys.readouterr().err


def test_course_import_paths():
    """The course's import blocks work unchanged from the repository root."""
    import gpt_download
    import previous_labs

    assert gpt_download.download_and_load_gpt2 is weights.download_and_load_gpt2
    for name in previous_labs.__all__:
        assert getattr(previous_labs, name) is not None, name


@pytest.mark.parametrize("spelling", ["355M", "gpt2-medium", "gpt2-medium (355M)", "GPT2-Medium"])
def test_size_spellings(spelling):
    assert (weights.gpt2_size(spelling), weights.hub_repo(spelling)) == ("355M", "openai-community/gpt2-medium")
