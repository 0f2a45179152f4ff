"""The instruction dataset: load sentences, clean them, split them leak-free, corrupt them.

Order matters. Sentences are cleaned and deduplicated first, then SPLIT by source sentence
(`sentence_id`, one per distinct correct text), and only then augmented, so that every
variant of a sentence lives in the same split: the test set holds sentences the model never
saw, which is what the project we descend from got wrong (its 300 test entries were 14
training sentences).

Sources: the embedded corpus (`src/correcteur/corpus/*.txt`, package data, one clean sentence a line), the Hugging
Face dataset `fdemelo/spelling-correction-french-news` (or a local copy in its schema), or a
user's CSV/JSON/JSONL file of (input, output) pairs or of clean sentences.

An input prefix (`--input-prefix`, e.g. "grammaire: " to mimic the Hugging Face data) is recorded
once, in manifest.json; entries never carry it. Training copies it into the checkpoint, and the
prompt (`prompt.py`) adds it wherever the model is asked.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import re
import shutil
import statistics
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from correcteur.augment import AugmentConfig, Lexicon, augment_sentence, french_lexicon
from correcteur.errors import UserError
from correcteur.files import CSV_FIELD_LIMIT, sha256_of, write_json
from correcteur.prompt import HF_PREFIX, INSTRUCTION, build_prompt, check_style
from correcteur.tokenizer import get_tokenizer

HF_DATASET = "fdemelo/spelling-correction-french-news"
CORPUS_DIR = Path(__file__).parent / "corpus"  # package data: found where the package is installed
SPLIT_SHARES = {"train": 0.85, "test": 0.10, "val": 0.05}  # as in the seed project
SPLIT_FILES = {"train": "train.json", "val": "val.json", "test": "test.json"}
# Text shaped like a model's control tokens (<|endoftext|>, SmolLM2's <|im_end|>, ...): such
# rows are dropped, since tokenizers refuse them and a model must never learn to write them.
SPECIAL_MARKUP = re.compile(r"<\|[^|<>\s]+\|>")

# ---------------------------------------------------------------------------- loading


@dataclass
class Record:
    """One row of a source: a correct text, and the erroneous input when the source gives one
    (None: a clean sentence, to be corrupted by augmentation)."""
    output: str
    input: str | None
    source: str
    sentence_id: str


def load_embedded(corpus_dir: Path | str = CORPUS_DIR) -> list[Record]:
    """Every line of every `*.txt` file of the corpus folder; ids name the file and line."""
    files = sorted(Path(corpus_dir).glob("*.txt"))
    if not files:
        raise UserError(f"no .txt file in {corpus_dir}: the embedded corpus is missing "
                        "(pass --corpus-dir, or use --source hf or --source FILE)")
    return [Record(line, None, "embedded", f"embedded-{path.stem}-{number:04d}")
            for path in files for number, line in enumerate(read_text(path).splitlines(), start=1)]


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder: give the file inside it (.csv, .json or .jsonl)") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text (byte {error.start}: {error.reason}); "
                        "re-save it as UTF-8") from None


def detect_schema(columns: Iterable[str], origin: str) -> tuple[str, str | None]:
    """(output column, input column or None) from the column names a source offers."""
    columns = set(columns)
    output = next((c for c in ("output", "target") if c in columns), None)
    if "input" in columns and output:
        return output, "input"
    for name in ("text", "sentence"):
        if name in columns:
            return name, None
    raise UserError(f"{origin}: columns {sorted(columns)} are not a dataset this tool reads; "
                    "expected `input` with `output` or `target` (pairs), or `text` or `sentence` "
                    "(clean sentences to corrupt)")


def records_from_rows(rows: Iterable, columns: Iterable[str], source: str,
                      origin: str) -> tuple[list[Record], Counter]:
    """Records from dict rows, counting the rows that cannot be used instead of failing."""
    output_key, input_key = detect_schema(columns, origin)
    records, malformed = [], Counter()
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            malformed["not_an_object"] += 1
            continue
        output = row.get(output_key)
        given = row.get(input_key) if input_key else ""  # "" stands for "no input column"
        if output is None or given is None:
            malformed["missing_field"] += 1
        elif not isinstance(output, str) or not isinstance(given, str):
            malformed["not_text"] += 1
        else:
            given = given.removeprefix(HF_PREFIX) if input_key else None
            records.append(Record(output, given, source, f"{source}-{number:06d}"))
    if not records and not malformed:
        raise UserError(f"{origin} holds no rows: the dataset is empty")
    return records, malformed


def load_file(path: Path | str) -> tuple[list[Record], Counter]:
    """A user's CSV, JSON (a list of objects) or JSONL file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json", ".jsonl"):
        raise UserError(f"{path}: unknown file type {suffix!r}; use .csv, .json or .jsonl")
    text = read_text(path)
    source = path.name
    if suffix == ".csv":
        csv.field_size_limit(CSV_FIELD_LIMIT)
        reader = csv.DictReader(text.splitlines())
        try:
            rows = list(reader)
        except csv.Error as error:
            raise UserError(f"{path} is not a CSV file this tool can read ({error})") from None
        return records_from_rows(rows, reader.fieldnames or [], source, str(path))
    if suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"{path} is not valid JSON ({error}); expected a list of objects") from None
        if not isinstance(rows, list):
            raise UserError(f"{path}: expected a JSON list of objects, found {type(rows).__name__}")
        malformed = Counter()
    else:
        rows, malformed = parse_jsonl(text)
    if rows and not any(isinstance(row, dict) for row in rows):
        kinds = sorted({type(row).__name__ for row in rows})
        raise UserError(f"{path} holds a list of {' and '.join(kinds)}, not of objects: each row must be an "
                        'object such as {"input": "...", "output": "..."} (pairs) or {"text": "..."} '
                        "(clean sentences to corrupt)")
    columns = {key for row in rows if isinstance(row, dict) for key in row}
    records, more = records_from_rows(rows, columns, source, str(path))
    return records, malformed + more


def parse_jsonl(text: str) -> tuple[list, Counter]:
    rows, malformed = [], Counter()
    for line in text.splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                malformed["bad_json_line"] += 1
    return rows, malformed


def load_hf(dataset: str = HF_DATASET, cache_dir: str | None = None) -> tuple[list[Record], Counter]:
    """The Hugging Face dataset (all its splits: we split again, by sentence), from the hub or
    from a local folder or file in the same schema (columns `input`, `target`)."""
    import datasets

    builders = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
    path = Path(dataset)
    try:
        if path.is_file() and path.suffix.lower() in builders:
            loaded = datasets.load_dataset(builders[path.suffix.lower()], data_files=str(path),
                                           cache_dir=cache_dir)
        else:
            loaded = datasets.load_dataset(dataset, cache_dir=cache_dir)
    except Exception as error:  # datasets raises many types: network, missing files, bad schema
        raise UserError(f"could not load the dataset {dataset!r} ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''}); without access to "
                        "the Hugging Face hub, build from the embedded corpus: --source embedded") from None
    parts = list(loaded.values()) if isinstance(loaded, datasets.DatasetDict) else [loaded]
    columns = parts[0].column_names if parts else []
    rows = (row for part in parts for row in part)
    total = sum(len(part) for part in parts)
    return records_from_rows(tqdm(rows, total=total, desc="reading dataset", unit="row", disable=None),
                             columns, "hf", dataset)


# ---------------------------------------------------------------------------- cleaning

APOSTROPHES = re.compile("[\u2019\u2018\u02bc\u00b4\u0060]")  # ’ ‘ ʼ ´ ` → '
INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f]")  # NUL and other control characters (not whitespace)


def normalize_text(text: str) -> str:
    """NFC, straight apostrophes, single ordinary spaces (no-break spaces included: the corpus
    convention is a normal space before ? ! : ;), nothing invisible, no control characters."""
    text = unicodedata.normalize("NFC", text)
    text = CONTROL.sub("", INVISIBLE.sub("", APOSTROPHES.sub("'", text)))
    return " ".join(text.split())


def clean_records(records: Iterable[Record], fits: Callable[[str, str], bool]
                  ) -> tuple[list[Record], Counter]:
    """Normalised records without empty, duplicate or over-long rows (`fits(input, output)`
    says whether a formatted pair fits the model). Records with the same correct text get the
    same `sentence_id`, the first one's, so that a split can never separate them."""
    kept, dropped = [], Counter()
    seen: set[tuple[str, str | None]] = set()
    id_of_output: dict[str, str] = {}
    for record in records:
        output = normalize_text(record.output)
        given = None if record.input is None else normalize_text(record.input)
        if not output or given == "":
            dropped["empty"] += 1
        elif SPECIAL_MARKUP.search(output) or SPECIAL_MARKUP.search(given or ""):
            dropped["special_token"] += 1
        elif (given, output) in seen:
            dropped["duplicate"] += 1
        elif not fits(given or output, output):
            dropped["too_long"] += 1
        else:
            seen.add((given, output))
            sentence_id = id_of_output.setdefault(output, record.sentence_id)
            kept.append(Record(output, given, record.source, sentence_id))
    return kept, dropped


# ---------------------------------------------------------------------------- splits and pairs


def split_ids(sentence_ids: Iterable[str], seed: int) -> dict[str, set[str]]:
    """Shuffle the distinct sentence ids with `seed` and cut them 85/10/5 (train/test/val)."""
    ids = sorted(set(sentence_ids))
    random.Random(seed).shuffle(ids)
    n_train = round(SPLIT_SHARES["train"] * len(ids))
    n_test = round(SPLIT_SHARES["test"] * len(ids))
    return {"train": set(ids[:n_train]), "test": set(ids[n_train:n_train + n_test]),
            "val": set(ids[n_train + n_test:])}


def group_pairs(records: list[Record], sentence_id: str, augment: AugmentConfig, seed: int,
                lexicon: Lexicon) -> list[dict]:
    """All entries of one source sentence: the pairs its source gave (error types unknown:
    "given"), `augment.variants` corrupted copies, and now and then the clean pair.
    Each sentence has its own random stream, so adding a sentence changes no other."""
    output, source = records[0].output, records[0].source
    rng = random.Random(f"{seed}:{sentence_id}")
    pairs = [(r.input, [] if r.input == output else ["given"]) for r in records if r.input is not None]
    pairs += augment_sentence(output, augment, rng, lexicon, n_given=len(pairs))
    entries, inputs = [], set()
    for given, error_types in pairs:
        if given not in inputs:
            inputs.add(given)
            entries.append({"instruction": INSTRUCTION, "input": given, "output": output,
                            "source": source, "sentence_id": sentence_id, "error_types": error_types})
    return entries


def build_splits(records: list[Record], augment: AugmentConfig, seed: int, lexicon: Lexicon,
                 fits: Callable[[str, str], bool]) -> tuple[dict[str, list[dict]], Counter]:
    """Split by sentence, then augment each split. A corrupted input can by chance equal a
    text of an earlier split, input or correct sentence (ses → ces may give another real
    sentence): test and validation drop such pairs, so no text is ever shared between splits."""
    by_id: dict[str, list[Record]] = {}
    for record in records:
        by_id.setdefault(record.sentence_id, []).append(record)
    ids_of = split_ids(by_id, seed)
    splits, dropped, earlier_texts = {}, Counter(), set()
    for name in ("train", "test", "val"):
        entries = []
        for sentence_id in tqdm(sorted(ids_of[name]), desc=f"augmenting {name}", unit="sentence",
                                disable=None):
            for entry in group_pairs(by_id[sentence_id], sentence_id, augment, seed, lexicon):
                if entry["input"] in earlier_texts:
                    dropped["input_in_other_split"] += 1
                elif not fits(entry["input"], entry["output"]):
                    dropped["too_long_after_augmentation"] += 1
                else:
                    entries.append(entry)
        random.Random(f"{seed}:{name}").shuffle(entries)
        earlier_texts |= {e["input"] for e in entries} | {e["output"] for e in entries}
        splits[name] = entries
    return splits, dropped


# ---------------------------------------------------------------------------- statistics


def length_summary(lengths: list[int]) -> dict:
    if not lengths:
        return {"min": 0, "median": 0, "mean": 0, "max": 0}
    return {"min": min(lengths), "median": float(statistics.median(lengths)),
            "mean": round(statistics.fmean(lengths), 2), "max": max(lengths)}


def dataset_stats(splits: dict[str, list[dict]], dropped: Counter) -> dict:
    """Counts a reader needs to trust the dataset: pairs, sentences, clean share, error types,
    sources and lengths (in words) per split, and the rows dropped, by reason."""
    per_split = {}
    for name, entries in splits.items():
        per_split[name] = {
            "pairs": len(entries),
            "sentences": len({e["sentence_id"] for e in entries}),
            "clean_pairs": sum(e["input"] == e["output"] for e in entries),
            "error_types": dict(Counter(t for e in entries for t in e["error_types"]).most_common()),
            "sources": dict(Counter(e["source"] for e in entries).most_common()),
            "output_words": length_summary([len(e["output"].split()) for e in entries]),
            "input_words": length_summary([len(e["input"].split()) for e in entries]),
        }
    return {"splits": per_split, "dropped": dict(dropped.most_common())}


def format_stats(stats: dict) -> str:
    """The statistics as Markdown tables (printed and saved as stats.md)."""
    splits = stats["splits"]
    names = list(splits)
    lines = ["# Dataset statistics", "", "| | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]
    for key in ("pairs", "sentences", "clean_pairs"):
        lines.append(f"| {key} | " + " | ".join(str(splits[n][key]) for n in names) + " |")
    for key in ("output_words", "input_words"):
        for part in ("min", "median", "mean", "max"):
            lines.append(f"| {key} {part} | " + " | ".join(str(splits[n][key][part]) for n in names) + " |")
    for table in ("error_types", "sources"):
        keys = sorted({k for n in names for k in splits[n][table]})
        lines += ["", f"| {table.replace('_', ' ')} | " + " | ".join(names) + " |",
                  "|---|" + "---:|" * len(names)]
        lines += [f"| {k} | " + " | ".join(str(splits[n][table].get(k, 0)) for n in names) + " |" for k in keys]
    lines += ["", "| dropped rows, by reason | count |", "|---|---:|"]
    lines += [f"| {reason} | {count} |" for reason, count in stats["dropped"].items()] or ["| (none) | 0 |"]
    return "\n".join(lines) + "\n"


def plot_stats(splits: dict[str, list[dict]]):
    """Error-type counts and the sentence-length histogram, as a matplotlib Figure (made
    without pyplot, so it works without a display and shows inline in a notebook)."""
    from matplotlib.figure import Figure

    entries = [e for part in splits.values() for e in part]
    types = Counter(t for e in entries for t in e["error_types"])
    types["(clean)"] = sum(not e["error_types"] for e in entries)
    figure = Figure(figsize=(11, 4), layout="constrained")
    bars, hist = figure.subplots(1, 2)
    names = sorted(types, key=types.get)
    bars.barh(names, [types[name] for name in names], color="tab:blue")
    bars.set(title="Operations applied (all splits)", xlabel="pairs")
    for name, part in splits.items():
        hist.hist([len(e["output"].split()) for e in part], bins=range(0, 42, 2), alpha=0.6, label=name)
    hist.set(title="Correct sentence length", xlabel="words", ylabel="pairs")
    hist.legend()
    return figure


# ---------------------------------------------------------------------------- output


def write_dataset(out: Path, splits: dict[str, list[dict]], stats: dict, manifest: dict,
                  figure=None) -> dict:
    """Write every file in a temporary folder inside `out`, then move them in, the manifest
    last. The manifest (with each file's sha256) is the mark of a complete build: an old one
    is removed first, so an interrupted move never leaves a set that looks complete."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".data-build-", dir=out))
    try:
        for name, filename in SPLIT_FILES.items():
            write_json(staging / filename, splits[name])
        write_json(staging / "stats.json", stats)
        (staging / "stats.md").write_text(format_stats(stats), encoding="utf-8")
        hashed = [*SPLIT_FILES.values(), "stats.json", "stats.md"]
        manifest = {**manifest, "files": {name: {"sha256": sha256_of(staging / name),
                                                 "bytes": (staging / name).stat().st_size}
                                          for name in hashed}}
        write_json(staging / "manifest.json", manifest)
        if figure is not None:
            figure.savefig(staging / "stats.png", dpi=100)
        (out / "manifest.json").unlink(missing_ok=True)
        for path in sorted(staging.iterdir(), key=lambda p: p.name == "manifest.json"):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


# ---------------------------------------------------------------------------- the run


@dataclass
class DataConfig:
    """Everything a dataset build depends on; recorded in manifest.json."""
    source: str = "embedded"          # "embedded", "hf" or a file path
    out: str = "data"
    seed: int = 123
    corpus_dir: str = str(CORPUS_DIR)
    hf_dataset: str = HF_DATASET      # hub name, or a local folder/file in its schema
    input_prefix: str = ""            # put before every input in the prompt, e.g. "grammaire: "; see data/README.md
    prompt_style: str = "alpaca"      # used to measure formatted length
    max_tokens: int = 1024            # longest formatted pair kept (GPT-2's context)
    tokenizer: str = "gpt2"
    limit: int | None = None          # keep only the first N distinct sentences (quick builds)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class BuiltDataset:
    splits: dict[str, list[dict]]
    stats: dict
    manifest: dict
    figure: object  # matplotlib Figure


def token_counter(name: str = "gpt2") -> Callable[[str], int]:
    tokenizer = get_tokenizer(name)
    return lambda text: len(tokenizer.encode(text, allowed_special=set()))


def load_source(config: DataConfig) -> tuple[list[Record], Counter]:
    if config.source == "embedded":
        return load_embedded(config.corpus_dir), Counter()
    if config.source == "hf":
        return load_hf(config.hf_dataset)
    return load_file(config.source)


def first_sentences(records: list[Record], limit: int | None) -> list[Record]:
    if limit is None:
        return records
    keep = set(list(dict.fromkeys(r.sentence_id for r in records))[:limit])
    return [r for r in records if r.sentence_id in keep]


def build_dataset(config: DataConfig, count_tokens: Callable[[str], int] | None = None,
                  lexicon: Lexicon | None = None, write: bool = True) -> BuiltDataset:
    """Load, clean, split, augment; write the files (unless `write` is False) and return the
    splits, statistics, manifest and figure."""
    check_style(config.prompt_style)
    records, malformed = load_source(config)
    count_tokens = count_tokens or token_counter(config.tokenizer)
    lexicon = french_lexicon() if lexicon is None else lexicon

    def fits(given: str, output: str) -> bool:
        entry = {"instruction": INSTRUCTION, "input": given}
        return count_tokens(build_prompt(entry, config.prompt_style, config.input_prefix) + output) <= config.max_tokens

    records, dropped = clean_records(records, fits)
    records = first_sentences(records, config.limit)
    if not records:
        raise UserError(f"no usable row in source {config.source!r} "
                        f"(dropped: {dict(malformed + dropped)})")
    splits, dropped_pairs = build_splits(records, config.augment, config.seed, lexicon, fits)
    empty = [name for name, entries in splits.items() if not entries]
    if empty:
        sentences = len({r.sentence_id for r in records})
        raise UserError(f"{sentences} distinct sentences leave the {' and '.join(empty)} split empty (splits take "
                        f"{', '.join(f'{share:.0%} {name}' for name, share in SPLIT_SHARES.items())} of the "
                        "sentences): give at least 20 distinct sentences; nothing was written")
    stats = dataset_stats(splits, malformed + dropped + dropped_pairs)
    settings = {k: v for k, v in asdict(config).items() if k != "out"}
    manifest = {"source": config.source, "seed": config.seed, "config": settings,
                "counts": {name: len(entries) for name, entries in splits.items()},
                "sentences": {name: s["sentences"] for name, s in stats["splits"].items()},
                "dropped": stats["dropped"]}
    figure = plot_stats(splits)
    if write:
        manifest = write_dataset(Path(config.out), splits, stats, manifest, figure)
    return BuiltDataset(splits, stats, manifest, figure)


def build_dataset_or_embedded(config: DataConfig) -> BuiltDataset:
    """`build_dataset`, falling back to the embedded corpus when the Hugging Face hub can't be
    reached (the `gpu` profile on a machine without the hub): said once, plainly."""
    try:
        return build_dataset(config)
    except UserError as error:
        if config.source != "hf":
            raise
        print(f"{error}\n-> building from the embedded corpus instead.")
        return build_dataset(dataclasses.replace(config, source="embedded"))


def examples_by_error_type(entries: list[dict]) -> dict[str, dict]:
    """The first entry with exactly one error of each type (and one clean pair), for showing."""
    examples: dict[str, dict] = {}
    for entry in entries:
        types = entry.get("error_types") or []
        key = types[0] if len(types) == 1 else ("clean" if not types else None)
        if key is not None:
            examples.setdefault(key, entry)
    return dict(sorted(examples.items()))
