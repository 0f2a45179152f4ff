"""Bad inputs and faults against every command: one clear message, exit status 2, no traceback,
and nothing half-written left behind. One row per case; add a row for every new finding.

Each row is (command line, files it needs, expected status, message fragment, paths that must
not exist afterwards). Paths are written with placeholders: {tmp} the test's folder, {ckpt} a
tiny trained run, {good} a valid test split, {url} an address where nothing listens, {number}
a server that answers every request with a bare number, {busy_port} that server's port.
"""

from __future__ import annotations

import json
import shlex
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from correcteur.cli import main

ENTRY = {"instruction": "Corrigez le texte suivant.", "input": "Il a manger.", "output": "Il a mangé."}
SENTENCES = [f"Les enfants jouent au parc numéro {n}." for n in range(30)]


def json_file(rows) -> str:
    return json.dumps(rows, ensure_ascii=False)


FILES = {  # name -> content (a folder when None)
    "folder.csv": None,
    "folder.json": None,
    "strings.json": json_file(["une phrase", "une autre phrase"]),
    "few.csv": "text\n" + "".join(f"Phrase numéro {n}.\n" for n in range(5)),
    "notes.txt": "Une phrase.\n",
    "no_input.json": json_file([{"instruction": "x", "output": "Il a mangé."}]),
    "empty_output.json": json_file([ENTRY, {**ENTRY, "output": "  "}]),
    "prefixed.json": json_file([{**ENTRY, "input": "grammaire: Il a manger."}]),
    "answered.json": json_file([{**ENTRY, "model_response": "Il a mangé."}]),
    "unanswered.json": json_file([ENTRY]),
    "broken.json": "[{",
    "latin1.txt": "Il a mangé une pomme.\n".encode("latin-1"),
    "image.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    "not_a_checkpoint.pt": None,  # written by torch below
    "no_family.pt": None,  # written by torch below
}

ROWS = [
    # download
    ("download --model 999M --models-dir {tmp}/models", 2, "unknown GPT-2 size '999M'", ["{tmp}/models"]),
    ("download --model gpt2-tiny --models-dir {tmp}/models", 2, "nothing to download", ["{tmp}/models"]),
    # data
    ("data --source {tmp}/folder.csv --out {tmp}/out", 2, "is a folder", ["{tmp}/out"]),
    ("data --source {tmp}/missing.csv --out {tmp}/out", 2, "no such file", ["{tmp}/out"]),
    ("data --source {tmp}/strings.json --out {tmp}/out", 2, "holds a list of str, not of objects", ["{tmp}/out"]),
    ("data --source {tmp}/few.csv --out {tmp}/out", 2, "split empty", ["{tmp}/out"]),
    ("data --source {tmp}/notes.txt --out {tmp}/out", 2, "unknown file type '.txt'", ["{tmp}/out"]),
    ("data --clean-share 1.5 --out {tmp}/out", 2, "bad augmentation option", ["{tmp}/out"]),
    # train
    ("train --model gpt2-tiny --allow-scratch --data {tmp}/nothing --out {tmp}/runs", 2, "build the dataset first",
     ["{tmp}/runs"]),
    ("train --model no-such-model --data {good_dir} --out {tmp}/runs", 2, "unknown model 'no-such-model'",
     ["{tmp}/runs"]),
    ("train --model gpt2-tiny --allow-scratch --lr 0 --data {good_dir} --out {tmp}/runs", 2,
     "invalid training settings: lr=0.0", ["{tmp}/runs"]),
    ("train --model gpt2-tiny --out {tmp}/runs --resume", 2, "nothing to resume", []),
    # export
    ("export --checkpoint {tmp}/missing --out {tmp}/half.pt", 2, "no checkpoint at", ["{tmp}/half.pt"]),
    ("export --checkpoint {ckpt} --out {tmp}/folder.json", 2, "is a folder", []),
    # guard
    ("guard --checkpoint {ckpt} --val {tmp}/folder.json", 2, "is a folder", ["{ckpt}/guard.json"]),
    ("guard --checkpoint {ckpt} --val {tmp}/no_input.json", 2, "no text under 'input'", ["{ckpt}/guard.json"]),
    ("guard --checkpoint {ckpt} --val {tmp}/empty_output.json", 2, "1 with an empty 'output'", ["{ckpt}/guard.json"]),
    ("choose --checkpoint {ckpt} --val {tmp}/folder.json", 2, "is a folder", ["{ckpt}/choose.json"]),
    ("choose --checkpoint {ckpt} --val {tmp}/no_input.json --no-model-edits", 2, "no text under 'input'",
     ["{ckpt}/choose.json"]),
    ("choose --checkpoint {ckpt} --val {tmp}/empty_output.json --scorer finetuned", 2, "1 with an empty 'output'",
     ["{ckpt}/choose.json"]),
    # respond
    ("respond --checkpoint {ckpt} --test {tmp}/missing.json --out {tmp}/r.json", 2, "does not exist", ["{tmp}/r.json"]),
    ("respond --checkpoint {ckpt} --test {tmp}/prefixed.json --out {tmp}/r.json", 2, "start with 'grammaire: '",
     ["{tmp}/r.json"]),
    # score
    ("score {tmp}/folder.json", 2, "is a folder", []),
    ("score {tmp}/broken.json", 2, "is not a valid JSON file", []),
    ("score {tmp}/unanswered.json", 2, "run `python -m correcteur respond` first", []),
    ("score {tmp}/empty_output.json", 2, "an empty 'output'", []),
    ("score {tmp}/answered.json --json {tmp}/folder.json", 2, "is a folder", []),
    # judge
    ("judge {tmp}/answered.json --url {url} --out {tmp}/j.json", 2, "no ollama server answers", ["{tmp}/j.json"]),
    ("judge {tmp}/answered.json --url {number} --out {tmp}/j.json", 2, "no ollama server answers", ["{tmp}/j.json"]),
    # evaluate: nothing is created before the inputs are known to be usable
    ("evaluate --checkpoint {ckpt} --test {tmp}/folder.json --out {tmp}/eval", 2, "is a folder", ["{tmp}/eval"]),
    ("evaluate --checkpoint {ckpt} --test {tmp}/no_input.json --out {tmp}/eval", 2, "no text under 'input'",
     ["{tmp}/eval"]),
    ("evaluate --checkpoint {tmp}/missing --test {good} --out {tmp}/eval", 2, "no checkpoint at", ["{tmp}/eval"]),
    # correct
    ("correct --checkpoint {tmp}/missing 'Il a manger.'", 2, "no checkpoint at", []),
    ("correct --checkpoint {ckpt} ' '", 2, "nothing to correct", []),
    ("correct --checkpoint {tmp}/not_a_checkpoint.pt 'Il a manger.'", 2, "is not a checkpoint of this project, or it is damaged",
     []),
    ("correct --checkpoint {tmp}/no_family.pt 'Il a manger.'", 2, "does not say which model family", []),
    ("correct --checkpoint {ckpt} --file {tmp}/missing.txt", 2, "no such file", []),
    ("correct --checkpoint {ckpt} --file {tmp}/notes.txt {tmp}/latin1.txt --in-place", 2, "latin1.txt is not UTF-8 text",
     ["{tmp}/notes.txt.bak"]),
    ("correct --checkpoint {ckpt} --file {tmp}/image.png", 2, "holds binary data (a NUL byte at offset 8)", []),
    ("correct --checkpoint {ckpt} --file {tmp}/folder.json", 2, "is a folder", []),
    ("correct --checkpoint {ckpt} --file - --in-place", 2, "cannot be corrected --in-place", []),
    ("correct --checkpoint {ckpt} --file {tmp}/notes.txt {tmp}/few.csv --output {tmp}/o.txt", 2,
     "--output takes one input file, not 2", ["{tmp}/o.txt"]),
    ("correct --checkpoint {ckpt} --file {tmp}/notes.txt --output {tmp}/notes.txt", 2, "is the input file", []),
    ("correct --checkpoint {ckpt} --file {tmp}/notes.txt --in-place --output {tmp}/o.txt", 2, "choose one",
     ["{tmp}/o.txt"]),
    ("correct --checkpoint {ckpt} --file {tmp}/notes.txt --backup", 2, "add --in-place", ["{tmp}/notes.txt.bak"]),
    ("correct --checkpoint {ckpt} --in-place 'Il a manger.'", 2, "work on files: add --file", []),
    ("correct --checkpoint {ckpt} 'Il a manger.' --file {tmp}/notes.txt", 2, "not both", []),
    ("correct --checkpoint {ckpt} --json --diff 'Il a manger.'", 2, "choose one", []),
    ("correct --checkpoint {ckpt} --dictionary {tmp}/missing.txt 'Il a manger.'", 2, "no such dictionary file", []),
    ("correct --checkpoint {ckpt} --dictionary {tmp}/image.png 'Il a manger.'", 2, "holds binary data", []),
    # app, on a machine without a display
    ("app --checkpoint {ckpt}", 2, "needs a graphical display", []),
    ("app --checkpoint {ckpt} --dictionary {tmp}/latin1.txt", 2, "is not UTF-8 text", []),
    # serve
    ("serve --checkpoint {tmp}/missing --port 0", 2, "no checkpoint at", []),
    ("serve --checkpoint {ckpt} --port 0 --dictionary {tmp}/missing.txt", 2, "no such dictionary file", []),
    ("serve --checkpoint {ckpt} --port {busy_port}", 2, "is already in use", []),
    ("serve --checkpoint {ckpt} --host 256.0.0.1 --port 0", 2, "cannot listen on 256.0.0.1:0", []),
    ("serve --checkpoint {ckpt} --max-text-length 0", 2, "expected a positive whole number, got '0'", []),
]


class BareNumber(BaseHTTPRequestHandler):
    """A server that answers every request with the JSON document `5`."""

    def _answer(self):
        body = b"5"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def number_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), BareNumber)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A gpt2-tiny run trained for two steps, and its data folder."""
    from correcteur.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("run")
    data = folder / "data"
    data.mkdir()
    entries = [{**ENTRY, "input": s.replace("jouent", "joue"), "output": s} for s in SENTENCES]
    for split in ("train", "val", "test"):
        (data / f"{split}.json").write_text(json_file(entries[:6]), encoding="utf-8")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        run = train(TrainConfig(model="gpt2-tiny", allow_scratch=True, data_dir=str(data), out_dir=str(folder),
                                run_name="tiny", prompt_style="short", batch_size=3, eval_freq=2, eval_iter=1,
                                max_steps=2))
    return run.run_dir, data


def place_files(tmp_path) -> None:
    for name, content in FILES.items():
        if name.endswith(".pt"):
            continue
        if content is None:
            (tmp_path / name).mkdir()
        elif isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        else:
            (tmp_path / name).write_text(content, encoding="utf-8")
    torch.save({"format_version": 1, "a pickled object": ValueError("not a tensor")},
               tmp_path / "not_a_checkpoint.pt")
    torch.save({"format_version": 1, "kind": "inference", "model": {}, "model_cfg": {}},
               tmp_path / "no_family.pt")


@pytest.mark.parametrize("command, status, message, absent", ROWS, ids=[row[0].split(" {")[0] + f"-{i}"
                                                                         for i, row in enumerate(ROWS)])
def test_bad_input_gets_one_clear_message(command, status, message, absent, tmp_path, tiny_run, number_server,
                                          capsys, monkeypatch):
    from fake_ollama import unused_url

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.chdir(tmp_path)
    place_files(tmp_path)
    checkpoint, data = tiny_run
    values = {"tmp": str(tmp_path), "ckpt": str(checkpoint), "good": str(data / "test.json"),
              "good_dir": str(data), "url": unused_url(), "number": number_server,
              "busy_port": number_server.rsplit(":", 1)[1]}
    argv = [part.format(**values) for part in shlex.split(command)]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    err = capsys.readouterr().err
    assert code == status, err
    assert message in err, err
    assert "Traceback" not in err
    for path in absent:
        assert not Path(path.format(**values)).exists(), path


def test_every_command_has_a_bad_input_row():
    from correcteur.cli import COMMANDS

    assert {row[0].split()[0] for row in ROWS} == set(COMMANDS)
