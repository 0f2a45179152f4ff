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
        self.states_size = True  # False: a bare mirror, no X-Linked-*, Content-Length or Content-Range
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
            if self.states_size:
                request.send_header("X-Linked-Etag", f'"{self.stated_sha256 or hashlib.sha256(data).hexdigest()}"')
                request.send_header("X-Linked-Size", str(self.stated_size or len(data)))
            request.end_headers()
            return
        ranged = "Range" in request.headers and self.honour_range
        start = int(request.headers["Range"].split("=")[1].rstrip("-")) if ranged else 0
        request.send_response(206 if start else 200)
        if start and self.states_size:
            request.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if self.states_size:
            request.send_header("Content-Length", str(len(data) - start))
        request.end_headers()  # HTTP/1.0: without a length, the body ends where the connection closes
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


def test_a_download_cut_short_by_a_server_that_states_no_size_is_kept_not_accepted(hub, tmp_path):
    """A bare mirror (--endpoint) states no size: the safetensors header tells the cut file from
    the whole one, and the cut one is resumed next time."""
    hub.states_size, hub.cut_after = False, 300_000
    with pytest.raises(UserError, match="stopped at 300,000 bytes of the .* safetensors header announces"):
        weights.download_gpt2("124M", tmp_path, endpoint=hub.url)
    target = tmp_path / "124M"
    assert not (target / "model.safetensors").exists()
    assert (target / "model.safetensors.part").stat().st_size == 300_000

    hub.cut_after = None
    weights.download_gpt2("124M", tmp_path, endpoint=hub.url)
    assert hub.ranges("model.safetensors")[-1] == "bytes=300000-"
    assert (target / "model.safetensors").read_bytes() == hub.files["model.safetensors"]
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("cut", [3, 8 + 20])  # inside the header's length, inside the header
def test_a_safetensors_file_cut_inside_its_header_is_kept_to_resume(hub, tmp_path, cut):
    hub.states_size = False
    (tmp_path / "124M").mkdir()
    (tmp_path / "124M" / "config.json").write_bytes(hub.files["config.json"])
    hub.cut_after = cut
    with pytest.raises(UserError, match=f"stopped at {cut} bytes \\(the server stated no size\\)"):
        weights.download_gpt2("124M", tmp_path, endpoint=hub.url)
    assert (tmp_path / "124M" / "model.safetensors.part").stat().st_size == cut


def test_a_whole_download_without_stated_sizes_is_accepted_by_its_own_checks(hub, tmp_path):
    hub.states_size = False
    path = weights.download_gpt2("124M", tmp_path, endpoint=hub.url)
    for name in weights.GPT2_FILES:
        assert (path / name).read_bytes() == hub.files[name]


def test_a_json_file_cut_short_without_stated_size_is_refused_and_dropped(hub, tmp_path):
    """Small JSON files from a server that states no size must parse; a broken one is fetched
    again whole (no .part kept: it may be an error page, not a beginning)."""
    hub.states_size, hub.cut_after = False, 10
    with pytest.raises(UserError, match="not valid JSON"):
        weights.download_gpt2("124M", tmp_path, endpoint=hub.url)
    assert list((tmp_path / "124M").iterdir()) == []


@pytest.mark.parametrize("tail, message", [(b"extra", "more than the"), (None, "not a safetensors file")])
def test_a_safetensors_file_its_header_does_not_describe_is_refused(hub, tmp_path, tail, message):
    data = hub.files["model.safetensors"]
    hub.files["model.safetensors"] = data + tail if tail else b"<html>mirror error page</html>"
    hub.states_size = False
    with pytest.raises(UserError, match=message):
        weights.download_gpt2("124M", tmp_path, endpoint=hub.url)
    assert sorted(p.name for p in (tmp_path / "124M").iterdir()) == ["config.json"]


def test_a_file_nothing_can_check_is_refused_and_kept(hub, tmp_path):
    hub.files["merges.txt"] = b"#version: 0.2\n" * 1000
    hub.states_size = False
    with pytest.raises(UserError, match="stated neither the size nor the sha256") as error:
        fetch.download_repo(REPO, ("merges.txt",), tmp_path, endpoint=hub.url)
    assert "rename it to merges.txt" in str(error.value)
    assert not (tmp_path / "merges.txt").exists()
    assert (tmp_path / "merges.txt.part").read_bytes() == hub.files["merges.txt"]


def test_safetensors_size_reads_the_files_own_header(hf_gpt2_dir, tmp_path):
    data = (hf_gpt2_dir / "model.safetensors").read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    cut = tmp_path / "cut.safetensors"
    for size, expected in [(len(data), len(data)), (header_end + 1, len(data)), (header_end - 1, None), (5, None)]:
        cut.write_bytes(data[:size])
        assert fetch.safetensors_size(cut) == expected, size
    cut.write_bytes((2).to_bytes(8, "little") + b"[]")
    with pytest.raises(ValueError, match="not a table of tensors"):
        fetch.safetensors_size(cut)


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
