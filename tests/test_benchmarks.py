"""Every benchmark script still imports against the package (they run outside the test suite)."""

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.stem for p in BENCHMARKS.glob("*.py")))
def test_benchmark_imports(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module(script)
    assert script == "results" or callable(module.main)
    sys.modules.pop(script, None)


def test_gpu_check_says_so_without_a_gpu(monkeypatch, capsys):
    """The one path of benchmarks/gpu_check.py the suite runs, on any machine: CUDA hidden."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    gpu_check = importlib.import_module("gpu_check")
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    results = (BENCHMARKS / "RESULTS.md").read_bytes()
    assert gpu_check.main([]) == 2
    assert capsys.readouterr().err.strip() == gpu_check.no_cuda_message()
    assert "no CUDA device is visible" in gpu_check.no_cuda_message()
    assert (BENCHMARKS / "RESULTS.md").read_bytes() == results  # nothing measured, nothing written
    sys.modules.pop("gpu_check", None)
