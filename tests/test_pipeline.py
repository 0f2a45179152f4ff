"""The main job: the five notebooks run top to bottom on the tiny profile, without an error."""

import json

import nbformat
import pytest

from correcteur import pipeline


@pytest.mark.slow
def test_tiny_profile_runs_every_notebook(tmp_path, monkeypatch):
    for name in ("CORRECTEUR_PROFILE", "CORRECTEUR_RUN_DIR", "CORRECTEUR_HEADLESS", "MPLBACKEND"):
        monkeypatch.setenv(name, "")  # the runner sets them; monkeypatch restores them afterwards
    monkeypatch.setenv("CORRECTEUR_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.chdir(tmp_path)  # notebook_run moves the kernel, not this process, to the repo root

    assert pipeline.main(["--profile", "tiny", "--runs-dir", str(tmp_path / "runs")]) == 0

    (run_dir,) = (tmp_path / "runs").iterdir()
    for name in pipeline.NOTEBOOKS:
        notebook = nbformat.read(run_dir / f"{name}.ipynb", as_version=4)
        outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
        assert outputs, f"{name} produced no output"
        assert not [o for o in outputs if o.output_type == "error"], name
    summary = (run_dir / "summary.md").read_text(encoding="utf-8")
    assert "profile: `tiny`" in summary and "error_reduction" in summary
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    assert report["baselines"]["copy"]["error_reduction"] == 0  # the do-nothing baseline, by definition
    assert (tmp_path / "checkpoints" / run_dir.name / "best.pt").is_file()
    assert (tmp_path / "checkpoints" / run_dir.name / "guard.json").is_file()
    assert '"image/png"' in (run_dir / "03_finetune.ipynb").read_text(encoding="utf-8")  # the loss plot inline


def test_profiles_and_auto(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pipeline.get_profile("auto").name == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pipeline.get_profile("auto").name == "gpu"
    assert pipeline.get_profile("gpu").model == "gpt2-medium"
    with pytest.raises(ValueError, match="unknown profile"):
        pipeline.get_profile("huge")
