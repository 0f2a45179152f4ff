"""Requests per second and latency of the LanguageTool-compatible server under concurrent clients.

The server runs in this process on a free port; clients are threads posting `/v2/check` with
urllib, one French sentence each, as an editor does on every pause in typing. Without
`--checkpoint`, the model is the tests' tiny one (a 2-layer, 64-dim GPT-2 with random weights and
GPT-2's tokenizer, guard off): it never writes end-of-text, so every answer runs to its whole
budget, and its figures measure the server and the generation loop, not a useful corrector. With
`--checkpoint`, a trained run (guarded, as `serve` runs it). Writes the "## LanguageTool server"
section of benchmarks/RESULTS.md.

    python benchmarks/bench_serve.py [--checkpoint checkpoints/RUN] [--clients 20] [--requests 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
import urllib.parse
import urllib.request

import torch
from results import command_line, write_section

from correcteur.correct import Corrector
from correcteur.model import GPTModel
from correcteur.serve import Server, Service, start_in_thread
from correcteur.tokenizer import get_tokenizer

TINY = {"vocab_size": 50257, "context_length": 128, "emb_dim": 64, "n_heads": 4, "n_layers": 2,
        "drop_rate": 0.0, "qkv_bias": True}
SENTENCES = [
    "Les enfant de mes voisins sont aller jouer au parc.",
    "Il a manger une pome avant de partir au travail.",
    "Nous avons visiter le musée avec nos amis hier.",
    "Elle est partit à la gare sans son parapluie.",
    "Je pense qu'il faut que tu vien demain matin.",
]


def tiny_corrector() -> Corrector:
    torch.manual_seed(0)
    return Corrector(GPTModel(TINY), get_tokenizer("gpt2"), device="cpu", name="tiny random gpt2 (2×64)")


def run_clients(url: str, clients: int, requests: int) -> dict:
    """`clients` threads, each posting `requests` checks one after the other."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        for k in range(requests):
            body = urllib.parse.urlencode({"text": SENTENCES[(number + k) % len(SENTENCES)], "language": "fr"})
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(url + "/v2/check", data=body.encode(), timeout=600) as answer:
                    json.loads(answer.read())
            except Exception as error:  # counted and shown, never hidden
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")
                continue
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    ordered = sorted(latencies)
    return {"clients": clients, "requests": clients * requests, "ok": len(latencies), "errors": len(errors),
            "seconds": seconds, "per_second": len(latencies) / seconds,
            "median": statistics.median(ordered) if ordered else float("nan"),
            "p90": ordered[int(0.9 * (len(ordered) - 1))] if ordered else float("nan"),
            "first_error": errors[0] if errors else ""}


def table(rows: list[dict]) -> str:
    lines = ["| clients | requests | answered | errors | seconds | requests/s | median latency s | p90 latency s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['clients']} | {r['requests']} | {r['ok']} | {r['errors']} | {r['seconds']:.1f} | "
                     f"{r['per_second']:.2f} | {r['median']:.2f} | {r['p90']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a trained run (folder or best.pt); default: the tiny random model")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=5, help="requests per client")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    corrector = Corrector.from_checkpoint(args.checkpoint, device="cpu") if args.checkpoint else tiny_corrector()
    server = Server(("127.0.0.1", 0), Service(corrector), quiet=True)
    start_in_thread(server)
    try:
        run_clients(server.url, 1, 1)  # warm-up
        rows = [run_clients(server.url, 1, args.requests), run_clients(server.url, args.clients, args.requests)]
    finally:
        server.shutdown()
        server.server_close()
    for row in rows:
        if row["first_error"]:
            print(f"{row['clients']} clients: first error: {row['first_error']}")
    body = table(rows)
    print(body)
    model = (f"trained run `{args.checkpoint}`, guarded" if args.checkpoint else
             "the tests' tiny model (random weights, guard off: every answer runs to its whole budget of "
             "1.5 × input tokens + 8; these figures measure the server, not a useful corrector)")
    machine = (f"On {platform.machine()}, {os.cpu_count()} CPU cores (shared); Python {platform.python_version()}, "
               f"torch {torch.__version__}, {args.threads} threads.")
    notes = (f"{machine}\nModel: {model}; {corrector.description}.\n"
             "One sentence of 9-10 words per request (form-encoded POST /v2/check, urllib clients in threads of "
             "the same process). The model answers one request at a time (a lock), so 20 clients share the "
             "throughput of one: their latency is the wait in line.\n\n")
    write_section("LanguageTool server", notes + body, command_line("bench_serve.py", parser, args))


if __name__ == "__main__":
    main()
