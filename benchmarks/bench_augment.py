"""Augmentation throughput: how fast clean sentences become training pairs on this CPU.

    .venv/bin/python benchmarks/bench_augment.py [--pairs 100000]

Cycles over the embedded corpus (each pass with new random streams) until it has made the
requested number of pairs, then times a full `correcteur data` build of the corpus. Prints a
table and writes it as the "Augmentation throughput" section of benchmarks/RESULTS.md
(through results.write_section, which leaves the other sections alone). Target: 100k pairs in under 60 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time

from results import write_section

from correcteur.augment import AugmentConfig, augment_sentence, french_lexicon
from correcteur.data import DataConfig, build_dataset, load_embedded


def time_augmentation(sentences: list[str], n_pairs: int, config: AugmentConfig) -> dict:
    lexicon = french_lexicon()
    pairs = done = 0
    start = time.perf_counter()
    while pairs < n_pairs:
        rng = random.Random(f"bench:{done}")
        pairs += len(augment_sentence(sentences[done % len(sentences)], config, rng, lexicon))
        done += 1
    seconds = time.perf_counter() - start
    return {"sentences": done, "pairs": pairs, "seconds": seconds}


def time_build(config: DataConfig) -> tuple[float, int]:
    start = time.perf_counter()
    built = build_dataset(config)
    return time.perf_counter() - start, sum(built.manifest["counts"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000, help="pairs to generate")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()

    sentences = [r.output for r in load_embedded()]
    start = time.perf_counter()
    french_lexicon()
    lexicon_s = time.perf_counter() - start
    rows = []
    for label, config in [("default (4 variants, 1-3 errors)", AugmentConfig()),
                          ("1 variant, 1 error", AugmentConfig(variants=1, max_errors=1))]:
        r = time_augmentation(sentences, args.pairs, config)
        rows.append(f"| {label} | {r['pairs']:,} | {r['sentences']:,} | {r['seconds']:.1f} | "
                    f"{r['sentences'] / r['seconds']:,.0f} | {r['pairs'] / r['seconds']:,.0f} |")
    with tempfile.TemporaryDirectory() as out:
        build_s, build_pairs = time_build(DataConfig(out=out))

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared)"
    body = "\n".join([
        f"On {machine}; Python {platform.python_version()}.",
        f"Corpus: {len(sentences):,} embedded sentences, cycled with new seeds. "
        f"Loading the French lexicon (pyspellchecker) once: {lexicon_s:.1f} s.", "",
        "| augmentation | pairs | sentences | seconds | sentences/s | pairs/s |",
        "|---|---:|---:|---:|---:|---:|", *rows, "",
        f"Full `correcteur data --source embedded` build (load, clean, token count, split, augment, "
        f"statistics, figure, write): {build_s:.1f} s for {build_pairs:,} pairs.",
        "Target: 100k augmented pairs in under 60 s."])
    print(body)
    if not args.no_write:
        write_section("Augmentation throughput", body, command="python benchmarks/bench_augment.py")


if __name__ == "__main__":
    main()
