"""Loading, cleaning, leak-free splits, reproducible and atomic output, prompt helpers, CLI."""

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from correcteur import data
from correcteur.augment import AugmentConfig
from correcteur.cli import main
from correcteur.data import (
    DataConfig,
    Record,
    build_dataset,
    clean_records,
    load_file,
    load_hf,
    normalize_text,
)
from correcteur.errors import UserError
from correcteur.prompt import (
    RESPONSE_HEADER,
    build_prompt,
    extract_response,
    format_input,
    format_response_prefix,
)

ENTRY = {"instruction": "Corrigez le texte suivant.", "input": "J'ai bin mangé."}
SUBJECTS = ["Je", "Tu", "Elle", "On", "Nous", "Vous"]
PLACES = ["à la gare", "chez le médecin", "au marché", "devant l'école", "à la piscine",
          "près du café", "au bureau", "dans le parc", "à la mairie", "sur le port"]


def word_count(text: str) -> int:
    return len(text.split())


def tiny_lexicon() -> frozenset:
    return frozenset({"arrive", "arrivés", "arrivée", "arriver", "arrivez"})


def write_corpus(folder: Path) -> Path:
    """60 distinct sentences in two files, written for the test."""
    corpus = folder / "corpus"
    corpus.mkdir()
    sentences = [f"{s} attend {p} depuis {n} minutes, et c'est long."
                 for n, s in enumerate(SUBJECTS, start=2) for p in PLACES]
    (corpus / "a.txt").write_text("\n".join(sentences[:30]) + "\n", encoding="utf-8")
    (corpus / "b.txt").write_text("\n".join(sentences[30:]) + "\n", encoding="utf-8")
    return corpus


@pytest.fixture
def config(tmp_path) -> DataConfig:
    return DataConfig(corpus_dir=str(write_corpus(tmp_path)), out=str(tmp_path / "out"), seed=5,
                      augment=AugmentConfig(variants=3))


def build(config: DataConfig, write: bool = True, **changes):
    return build_dataset(replace(config, **changes), count_tokens=word_count, lexicon=tiny_lexicon(),
                         write=write)


# ---------------------------------------------------------------------------- prompt


def test_format_input_is_the_course_alpaca_prompt():
    expected = ("Below is an instruction that describes a task. Write a response that appropriately "
                "completes the request.\n\n### Instruction:\nCorrigez le texte suivant."
                "\n\n### Input:\nJ'ai bin mangé.")
    assert format_input(ENTRY) == expected
    assert "### Input" not in format_input({**ENTRY, "input": ""})
    assert build_prompt(ENTRY) == expected + RESPONSE_HEADER == expected + "\n\n### Response:\n"


@pytest.mark.parametrize("style", ["alpaca", "short"])
def test_extract_response_round_trip(style):
    prompt = build_prompt(ENTRY, style)
    assert extract_response(prompt + "J'ai bien mangé.", style) == "J'ai bien mangé."
    assert extract_response(prompt + "J'ai bien mangé.<|endoftext|>junk", style) == "J'ai bien mangé."
    assert extract_response(prompt + "J'ai bien mangé.\n\n### Instruction:\nx", style) == "J'ai bien mangé."
    assert extract_response(" J'ai bien mangé. ", style) == "J'ai bien mangé."  # no header: all of it


def test_short_prompt_overhead_is_small():
    from correcteur.tokenizer import get_tokenizer

    try:
        tokenizer = get_tokenizer("gpt2")
    except UserError as error:
        pytest.skip(f"GPT-2 tokenizer unavailable: {error}")
    n = len(tokenizer.encode(build_prompt(ENTRY, "short"))) - len(tokenizer.encode(ENTRY["input"]))
    assert n <= 15
    assert format_response_prefix("short").endswith("\n")


def test_unknown_style_is_a_user_error():
    with pytest.raises(UserError, match="prompt style"):
        build_prompt(ENTRY, "chatml")


# ---------------------------------------------------------------------------- cleaning


def test_normalize_text():
    assert normalize_text("J\u2019ai  faim\u00a0!\u200b ") == "J'ai faim !"
    assert normalize_text("e\u0301te\u0301") == "été"  # NFD → NFC


def test_clean_records_counts_what_it_drops_and_groups_by_output():
    records = [Record("Il est là.", None, "s", "s-1"), Record("  ", None, "s", "s-2"),
               Record("Il est là.", None, "s", "s-3"), Record("Il est\u00a0là.", "Il et la.", "s", "s-4"),
               Record("Il est là.", "Il et la.", "s", "s-5"), Record("a <|endoftext|> b", None, "s", "s-6"),
               Record("Une phrase bien trop longue pour ce modèle.", None, "s", "s-7"),
               Record("Fin.", "Fin <|im_end|>", "s", "s-8")]
    kept, dropped = clean_records(records, lambda given, output: word_count(output) <= 5)
    assert dropped == Counter(empty=1, duplicate=2, special_token=2, too_long=1)
    assert [(r.input, r.sentence_id) for r in kept] == [(None, "s-1"), ("Il et la.", "s-1")]


# ---------------------------------------------------------------------------- loading


def test_load_csv_pairs_strips_the_hf_prefix(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("input,output\ngrammaire: Il et là.,Il est là.\nOn a fini.\n", encoding="utf-8")
    records, malformed = load_file(path)
    assert [(r.input, r.output, r.source) for r in records] == [("Il et là.", "Il est là.", "pairs.csv")]
    assert malformed == Counter(missing_field=1)


def test_load_jsonl_sentences_counts_bad_lines(tmp_path):
    path = tmp_path / "clean.jsonl"
    path.write_text('{"text": "Il est là."}\n{oops\n{"text": 3}\n["x"]\n\n{"text": "On y va."}\n',
                    encoding="utf-8")
    records, malformed = load_file(path)
    assert [(r.output, r.input) for r in records] == [("Il est là.", None), ("On y va.", None)]
    assert malformed == Counter(bad_json_line=1, not_text=1, not_an_object=1)


@pytest.mark.parametrize("name, content, message", [
    ("missing.csv", None, "no such file"),
    ("latin.csv", "text\nIl était là.\n".encode("latin-1"), "not UTF-8"),
    ("columns.csv", b"foo,bar\n1,2\n", "columns"),
    ("empty.json", b"[]", "empty"),
    ("object.json", b'{"text": "x"}', "list of objects"),
    ("broken.json", b"[{", "not valid JSON"),
    ("table.xlsx", b"x", "unknown file type"),
])
def test_bad_files_are_user_errors_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message) as error:
        load_file(path)
    assert name in str(error.value)


def write_hf_copy(folder: Path) -> Path:
    """A local dataset in the schema of fdemelo/spelling-correction-french-news."""
    path = folder / "hf.csv"
    rows = [("grammaire: Il et là.", "Il est là."), ("grammaire: Jai fini.", "J'ai fini."),
            ("grammaire: Il est la.", "Il est là.")]
    rows += [(f"grammaire: {s} attend a la gare.", f"{s} attend à la gare.") for s in SUBJECTS * 2]
    path.write_text("input,target\n" + "".join(f"{i},{t}\n" for i, t in rows), encoding="utf-8")
    return path


def test_load_hf_reads_a_local_copy_through_datasets(tmp_path):
    records, malformed = load_hf(str(write_hf_copy(tmp_path)), cache_dir=str(tmp_path / "cache"))
    assert not malformed
    assert records[0] == Record("Il est là.", "Il et là.", "hf", "hf-000001")
    assert len(records) == 15


def test_load_hf_unreachable_points_to_the_embedded_corpus(tmp_path):
    with pytest.raises(UserError, match="--source embedded"):
        load_hf(str(tmp_path / "no-such-folder"), cache_dir=str(tmp_path / "cache"))


# ---------------------------------------------------------------------------- building


def texts_by_split(splits, key):
    return {name: {entry[key] for entry in entries} for name, entries in splits.items()}


def test_built_dataset_has_no_leak_between_splits(config, tmp_path):
    built = build(config)
    assert {name: len(e) > 0 for name, e in built.splits.items()} == {"train": True, "test": True, "val": True}
    for key in ("output", "input", "sentence_id"):
        texts = texts_by_split(built.splits, key)
        assert not texts["train"] & texts["test"]
        assert not texts["train"] & texts["val"]
        assert not texts["test"] & texts["val"]
    assert built.stats["splits"]["train"]["sentences"] == 51  # 85% of 60
    for entry in built.splits["train"]:
        assert (entry["input"] == entry["output"]) == (entry["error_types"] == [])


def test_inputs_that_collide_across_splits_are_dropped_from_test_and_val():
    """Homophone swaps turn "est là" into "est la" and back: sentences of different groups get
    the same corrupted inputs, which test and validation must give up."""
    records = [Record(f"Il {verb} {where}, numéro {i}.", None, "s", f"s-{verb}-{where}-{i}")
               for i in range(30) for verb in ("est", "et") for where in ("là", "la")]
    augment = AugmentConfig(variants=3, max_errors=1, clean_share=0.2, weights={"homophone": 1.0})
    splits, dropped = data.build_splits(records, augment, 0, frozenset(), lambda given, output: True)
    inputs, outputs = texts_by_split(splits, "input"), texts_by_split(splits, "output")
    texts = {name: inputs[name] | outputs[name] for name in splits}
    assert not inputs["train"] & texts["test"] and not inputs["train"] & texts["val"]
    assert not inputs["test"] & texts["val"]
    # A test or validation input is never a sentence the model was shown as correct elsewhere.
    assert not inputs["test"] & texts["train"] and not inputs["val"] & (texts["train"] | texts["test"])
    assert dropped["input_in_other_split"] > 0


def test_build_writes_a_manifest_that_hashes_each_file(config, tmp_path):
    built = build(config)
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest == built.manifest
    assert manifest["counts"] == {name: len(e) for name, e in built.splits.items()}
    for name, info in manifest["files"].items():
        assert data.sha256_of(out / name) == info["sha256"]
    assert json.loads((out / "test.json").read_text(encoding="utf-8")) == built.splits["test"]
    assert (out / "stats.png").stat().st_size > 1000
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", "stats.json", "stats.md", "stats.png", "test.json", "train.json", "val.json"])


def test_same_seed_same_files_other_seed_other_files(config, tmp_path):
    first = build(config, out=str(tmp_path / "a")).manifest["files"]
    again = build(config, out=str(tmp_path / "b")).manifest["files"]
    other = build(config, out=str(tmp_path / "c"), seed=6).manifest["files"]
    assert first == again
    assert first["train.json"] != other["train.json"]


def test_failed_build_leaves_no_complete_looking_output(config, tmp_path, monkeypatch):
    def broken(stats):
        raise OSError("disk full")

    monkeypatch.setattr(data, "format_stats", broken)
    with pytest.raises(OSError):
        build(config)
    assert list((tmp_path / "out").iterdir()) == []  # no split file, no staging folder


def test_input_prefix_and_over_long_pairs(config, tmp_path):
    built = build(config, input_prefix="grammaire: ", write=False)
    # Recorded once, in the manifest; the entries never carry it (the prompt adds it).
    assert built.manifest["config"]["input_prefix"] == "grammaire: "
    assert not any(e["input"].startswith("grammaire") for part in built.splits.values() for e in part)
    longest = max(word_count(build_prompt({"instruction": data.INSTRUCTION, "input": e["output"]}))
                  + word_count(e["output"]) for e in built.splits["train"])
    built = build(config, max_tokens=longest - 1, write=False)
    assert built.stats["dropped"]["too_long"] > 0


def test_build_from_hf_schema_keeps_given_pairs_in_one_split(config, tmp_path):
    path = write_hf_copy(tmp_path)
    with path.open("a", encoding="utf-8") as file:  # enough sentences for no split to be empty
        file.writelines(f"grammaire: Le train {n} part a midi.,Le train {n} part à midi.\n" for n in range(20))
    built = build(config, write=False, source="hf", hf_dataset=str(path), augment=AugmentConfig(variants=0))
    entries = [e for part in built.splits.values() for e in part]
    assert {e["source"] for e in entries} == {"hf"}
    assert sum(e["error_types"] == ["given"] for e in entries) == 9 + 20
    assert built.stats["dropped"] == {"duplicate": 6}
    same_target = [name for name, part in built.splits.items() for e in part if e["output"] == "Il est là."]
    assert len(same_target) >= 2 and len(set(same_target)) == 1


# ---------------------------------------------------------------------------- command line


def test_cli_reports_bad_input_without_output(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", "--source", str(tmp_path / "nope.csv"), "--out", str(out)]) == 2
    assert "nope.csv: no such file" in capsys.readouterr().err
    assert not out.exists()


def test_cli_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    help_text = capsys.readouterr().out
    for option in ("--source", "--out", "--seed", "--variants", "--clean-share", "--input-prefix",
                   "--max-tokens", "--hf-dataset", "--limit"):
        assert option in help_text


def test_too_few_sentences_for_every_split_fail_and_write_nothing(config, tmp_path):
    source = tmp_path / "few.csv"
    source.write_text("text\n" + "".join(f"Phrase numéro {n}.\n" for n in range(5)), encoding="utf-8")
    with pytest.raises(UserError, match="5 distinct sentences leave the .* split empty"):
        build(config, source=str(source), out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_control_characters_are_cleaned_and_long_csv_fields_read(tmp_path):
    assert normalize_text("Il\x00 a\x07 mangé\x1b.") == "Il a mangé."
    long = "mot " * 40_000  # 160 KB, over the csv module's default field limit
    source = tmp_path / "long.csv"
    source.write_text(f"text\n{long}\n", encoding="utf-8")
    (record,), malformed = load_file(source)
    assert record.output == long and not malformed


@pytest.mark.parametrize("content, message", [
    ('["une phrase", "une autre"]', "holds a list of str, not of objects"),
    ("[1, 2]", "holds a list of int, not of objects"),
])
def test_a_list_of_non_objects_says_what_was_expected(tmp_path, content, message):
    source = tmp_path / "rows.json"
    source.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        load_file(source)
