"""Data-parallel training on 2 CPU processes with gloo: the same run as one process, exact resume,
a dead or interrupted rank that leaves a usable checkpoint.

The ranks are processes of their own that set torchrun's variables and call `train` as torchrun's
processes do; each writes what happened (status, message, weights) under `out/`. Every wait has
a timeout (the process group's too, `CORRECTEUR_DIST_TIMEOUT`): a failing test never hangs."""

from __future__ import annotations

import argparse
import faulthandler
import gc
import json
import multiprocessing
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

import pytest
import torch
from test_train import PAIRS, CharTokenizer, single_thread, tiny_config, tiny_model, write_data  # noqa: F401

from correcteur import checkpoint as ckpt
from correcteur import pipeline
from correcteur.distributed import Ranks, peer_failure
from correcteur.errors import UserError
from correcteur.model import GPTModel
from correcteur.train import train

WAIT_S = 60  # the longest a group of ranks may take before the test fails (and kills them)


class Tripwire(GPTModel):
    """The tests' tiny model, whose `at`-th training forward pass on rank `rank` sends `signum`
    to its own process: a rank killed, or a Ctrl-C, at a known step."""

    def __init__(self, rank: int, at: int, signum: int):
        super().__init__(tiny_model().cfg)
        self.load_state_dict(tiny_model().state_dict())
        self.rank, self.at, self.signum, self.calls = rank, at, signum, 0

    def forward(self, *args, **kwargs):
        if self.training and int(os.environ["RANK"]) == self.rank:
            self.calls += 1
            if self.calls == self.at:
                os.kill(os.getpid(), self.signum)
        return super().forward(*args, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, out: Path, config, resume: bool, model) -> None:
    """One rank, as torchrun starts it: its variables set, then `train`; what happened goes to
    out/rank<N>.json (and its weights to out/rank<N>.pt), and the rank exits at once.

    At once, and with the garbage collector off: after another rank died, torch's clean-up of
    the failed exchange (DDP's reducer, gloo's threads) may block, which torchrun ends by
    killing the rank after its message; here nothing would."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CORRECTEUR_DIST_TIMEOUT="20")
    torch.set_num_threads(1)
    gc.disable()
    faulthandler.dump_traceback_later(WAIT_S - 10, exit=True)  # a hung rank shows where it was
    try:
        result = train(config, model=model or tiny_model(), tokenizer=CharTokenizer(), resume=resume)
        torch.save(result.model.state_dict(), out / f"rank{rank}.pt")
    except UserError as error:
        _report(out, rank, {"status": "error", "message": str(error)}, 2)
    except KeyboardInterrupt as error:
        _report(out, rank, {"status": "interrupted", "message": str(error)}, 130)
    _report(out, rank, {"status": "ok"}, 0)


def _report(out: Path, rank: int, status: dict, code: int) -> None:
    (out / f"rank{rank}.json").write_text(json.dumps(status))
    sys.stdout.flush()
    os._exit(code)


def _context():
    """Fresh processes, as torchrun starts (a fork of the test process would inherit its
    threads' locks), forked from one server that has imported torch and the package once."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torch._dynamo", "torch.distributed", "correcteur.train", "test_distributed"])
    return context


def run_ranks(config, out: Path, world_size: int = 2, resume: bool = False, model=None) -> list[dict]:
    """Run `train(config)` on `world_size` ranks; each rank's outcome (with its exit code)."""
    out.mkdir(parents=True, exist_ok=True)
    port, context = _free_port(), _context()
    processes = [context.Process(target=_rank_main, args=(rank, world_size, port, out, config, resume, model))
                 for rank in range(world_size)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(WAIT_S)
    hung = [process for process in processes if process.exitcode is None]
    for process in hung:
        process.kill()
    assert not hung, "a rank was still running after the timeout"
    outcomes = []
    for rank, process in enumerate(processes):
        path = out / f"rank{rank}.json"
        outcomes.append({**(json.loads(path.read_text()) if path.exists() else {}), "exitcode": process.exitcode})
        path.unlink(missing_ok=True)
    return outcomes


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def history(config) -> list[dict]:
    """The run's evaluations, without what depends on the machine's load (time, memory)."""
    records = json.loads((config.run_dir / "history.json").read_text())
    return [{k: v for k, v in r.items() if k not in ("wall_time_s", "peak_ram_mb")} for r in records]


def assert_weights_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


@pytest.fixture
def data(tmp_path):
    # 9 examples: with a global batch of 4, each epoch ends on a batch of 1, which rank 1 has no
    # share of (it computes a stand-in of weight 0).
    return write_data(tmp_path / "data", PAIRS[:9], PAIRS)


# ----------------------------------------------------------------------------- one process, two


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_two_ranks_train_as_one_process_with_their_global_batch(tmp_path, data, lora_rank):
    """2 ranks x batch 2 x 2 accumulation steps = one process x batch 4 x 2: same batches, same
    order, losses normalised by the global count of response tokens, so the same weights."""
    common = dict(grad_accum_steps=2, num_epochs=3, eval_freq=2, lora_rank=lora_rank, lora_alpha=4.0)
    one = train(tiny_config(tmp_path, run_name="one", batch_size=4, **common),
                model=tiny_model(), tokenizer=CharTokenizer())
    config = tiny_config(tmp_path, run_name="two", batch_size=2, **common)
    outcomes = run_ranks(config, tmp_path / "out")
    assert [o["exitcode"] for o in outcomes] == [0, 0], outcomes

    two = json.loads((config.run_dir / "summary.json").read_text())
    assert (two["steps"], two["ranks"], one.summary["steps"]) == (6, 2, 6)  # 2 steps an epoch, 3 epochs
    assert two["stop_reason"] == one.summary["stop_reason"] == "completed"
    history = json.loads((config.run_dir / "history.json").read_text())
    assert [r["step"] for r in history] == [r["step"] for r in one.history] == [2, 4, 6]
    for key in ("train_loss", "val_loss"):  # evaluation reduced over the ranks
        assert [r[key] for r in history] == pytest.approx([r[key] for r in one.history], rel=1e-5)
    rank0, rank1 = weights(tmp_path / "out" / "rank0.pt"), weights(tmp_path / "out" / "rank1.pt")
    assert_weights_close(rank0, rank1, atol=0)  # every rank holds the same model
    assert_weights_close(rank0, one.model.state_dict(), atol=1e-4)
    assert_weights_close(ckpt.load_checkpoint(config.run_dir / "best.pt")["model"], rank0, atol=0)
    assert ckpt.load_checkpoint(config.run_dir / "last.pt")["meta"]["ranks"] == 2


def test_early_stopping_is_one_decision_for_every_rank(tmp_path):
    """Validation answers contradict the training ones: the validation loss only gets worse,
    and both ranks stop at the step one process stops at, with its best weights."""
    write_data(tmp_path / "data", PAIRS[:9], [(wrong, "zzzz zzzz") for wrong, _ in PAIRS[:4]])
    one = train(tiny_config(tmp_path, run_name="one", batch_size=4, eval_freq=1, patience=2, num_epochs=10),
                model=tiny_model(), tokenizer=CharTokenizer())
    config = tiny_config(tmp_path, run_name="two", batch_size=2, eval_freq=1, patience=2, num_epochs=10)
    assert [o["exitcode"] for o in run_ranks(config, tmp_path / "out")] == [0, 0]
    two = json.loads((config.run_dir / "summary.json").read_text())
    assert one.summary["stop_reason"] == two["stop_reason"] == "early_stopping"
    assert (two["steps"], two["best_step"]) == (one.summary["steps"], one.summary["best_step"]) == (3, 1)
    assert_weights_close(weights(tmp_path / "out" / "rank1.pt"), one.model.state_dict(), atol=1e-4)


# ----------------------------------------------------------------------------- resume


def test_resume_under_ddp_is_exact_and_may_change_the_number_of_ranks(tmp_path, data):
    straight = tiny_config(tmp_path, run_name="straight", max_steps=4)
    assert [o["exitcode"] for o in run_ranks(straight, tmp_path / "straight")] == [0, 0]
    expected = weights(tmp_path / "straight" / "rank0.pt")
    half = tiny_config(tmp_path, run_name="split", max_steps=2)
    assert [o["exitcode"] for o in run_ranks(half, tmp_path / "half")] == [0, 0]
    shutil.copytree(half.run_dir, tmp_path / "at-step-2")

    # One process goes on: the global batch must stay 4, so --batch-size 4, not 2.
    with pytest.raises(UserError, match=r"batch: 2 process\(es\) x 2 in the checkpoint, 1 x 2 now"):
        train(tiny_config(tmp_path, run_name="split", max_steps=4), model=tiny_model(), tokenizer=CharTokenizer(),
              resume=True)
    alone = train(tiny_config(tmp_path, run_name="split", max_steps=4, batch_size=4), model=tiny_model(),
                  tokenizer=CharTokenizer(), resume=True)
    assert alone.summary["steps"] == 4 and alone.summary["ranks"] == 1
    assert_weights_close(alone.model.state_dict(), expected, atol=1e-4)

    # Two ranks go on from the same step-2 checkpoint: exactly the uninterrupted run.
    shutil.rmtree(half.run_dir)
    shutil.copytree(tmp_path / "at-step-2", half.run_dir)
    rest = tiny_config(tmp_path, run_name="split", max_steps=4)
    assert [o["exitcode"] for o in run_ranks(rest, tmp_path / "rest", resume=True)] == [0, 0]
    assert_weights_close(weights(tmp_path / "rest" / "rank0.pt"), expected, atol=0)
    assert history(rest) == history(straight)


# ----------------------------------------------------------------------------- failures


def test_a_killed_rank_ends_the_other_with_a_message_and_leaves_the_checkpoint(tmp_path, data):
    """Rank 1 dies (SIGKILL) in step 5; last.pt of step 4 stays whole and resumes."""
    config = tiny_config(tmp_path, max_steps=8, checkpoint_every=2, num_epochs=4)
    rank0, rank1 = run_ranks(config, tmp_path / "out", model=Tripwire(rank=1, at=5, signum=signal.SIGKILL))
    assert rank1["exitcode"] == -signal.SIGKILL
    assert rank0["exitcode"] == 2, rank0
    assert "rank 0 of 2: another rank stopped or cannot be reached" in rank0["message"]
    assert "--resume" in rank0["message"] and str(config.run_dir / "last.pt") in rank0["message"]
    saved = ckpt.load_checkpoint(config.run_dir / "last.pt")
    assert saved["state"]["step"] == 4
    resumed = train(tiny_config(tmp_path, max_steps=5, checkpoint_every=2, num_epochs=4, batch_size=4),
                    model=tiny_model(), tokenizer=CharTokenizer(), resume=True)
    assert resumed.summary["steps"] == 5


def test_ctrl_c_on_one_rank_stops_every_rank_after_the_same_step(tmp_path, data):
    config = tiny_config(tmp_path, max_steps=8, num_epochs=4)
    outcomes = run_ranks(config, tmp_path / "out", model=Tripwire(rank=1, at=3, signum=signal.SIGINT))
    assert [o["exitcode"] for o in outcomes] == [130, 130], outcomes
    assert "training stopped at step 3" in outcomes[0]["message"]
    assert ckpt.load_checkpoint(config.run_dir / "last.pt")["state"]["step"] == 3


def test_peer_failures_are_told_from_other_errors():
    gloo = RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:6\nmore")
    assert peer_failure(gloo) == "Connection closed by peer [127.0.0.1]:6"
    assert peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert peer_failure(torch.cuda.OutOfMemoryError("CUDA out of memory (nccl)")) is None
    assert peer_failure(UserError("the download timed out")) is None  # the user's own message stays


def test_shards_cover_each_global_batch_once():
    batch = [7, 3, 9, 1, 4]
    shards = [Ranks(rank, 2).shard(batch) for rank in range(2)]
    assert shards == [[7, 9, 4], [3, 1]]
    assert Ranks(2, 3).shard([5, 6]) == []  # a batch smaller than the ranks: nothing for rank 2
    one = Ranks()
    assert one.agree("budget") == "budget" and one.all_sum([1.5, 2]) == [1.5, 2]
    assert one.token_weights([torch.tensor([[-100, 3, 4]])], [True]) == [1.0]  # exactly one process's loss


# ----------------------------------------------------------------------------- torchrun itself


def test_the_gpu_profile_trains_on_every_visible_gpu(tmp_path, monkeypatch):
    import torch

    from correcteur.cli import add_train
    from correcteur.train import TrainConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert pipeline.training_processes(pipeline.get_profile("gpu")) == 4
    assert pipeline.training_processes(pipeline.get_profile("cpu")) == 1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pipeline.training_processes(pipeline.get_profile("gpu")) == 1  # one GPU: in the notebook's process

    config = TrainConfig(model="gpt2-medium", out_dir=str(tmp_path), lora_rank=4, mask_instruction=False,
                         max_minutes=2.5, **pipeline.get_profile("gpu").train)
    command = pipeline.torchrun_command(config, 4, resume=True)
    assert command[1:6] == ["-m", "torch.distributed.run", "--nproc_per_node=4", "-m", "correcteur"]
    assert command[6] == "train" and command[-1] == "--resume"
    parser = argparse.ArgumentParser()
    add_train(parser)
    assert TrainConfig(**{k: v for k, v in vars(parser.parse_args(command[7:])).items() if k != "resume"}) == config


@pytest.mark.slow
def test_torchrun_trains_from_the_command_line(tmp_path, data, monkeypatch, capsys):
    """The README's command on 2 CPU processes, as the gpu profile starts it: torchrun's
    variables, gloo, rank 0's files read back."""
    from correcteur.train import TrainConfig

    src = str(Path(__file__).parents[1] / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("CORRECTEUR_DIST_TIMEOUT", "30")
    monkeypatch.setattr(pipeline, "training_processes", lambda profile: 2)
    config = TrainConfig(model="gpt2-tiny", allow_scratch=True, device="cpu", data_dir=str(data),
                         out_dir=str(tmp_path / "runs"), prompt_style="short", batch_size=2, max_steps=2,
                         eval_freq=2, eval_iter=1)
    result = pipeline.train_profile(pipeline.get_profile("gpu"), config, None, None, {}, resume=False)
    assert (result.summary["steps"], result.summary["ranks"]) == (2, 2)
    assert [r["step"] for r in result.history] == [2]
    assert result.model.cfg["n_layers"] == 2 and not result.model.training  # best.pt, ready to correct
    assert capsys.readouterr().out.count("budget after 2 steps") == 1  # rank 0 alone reports
