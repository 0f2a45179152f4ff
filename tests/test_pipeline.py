"""The main job: the five notebooks run top to bottom on the tiny profile, without an error."""

import json

import nbformat
import pytest

from correcteur import pipeline


@pytest.mark.slow
def test_tiny_profile_runs_every_notebook(tmp_path, monkeypatch):
    for name in ("CORRECTEUR_PROFILE", "CORRECTEUR_PROFILE_JSON", "CORRECTEUR_RUN_DIR", "CORRECTEUR_HEADLESS", "MPLBACKEND"):
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
    expected_images = {"02_dataset": 1, "03_finetune": 1, "04_evaluate": 1}  # statistics, loss, error types
    for name in pipeline.NOTEBOOKS:
        assert images_in(run_dir / f"{name}.ipynb") == expected_images.get(name, 0), name
    assert "Corrigez le texte suivant.\n" in outputs_of(run_dir / "02_dataset.ipynb")  # one formatted prompt
    assert "-> -100" in outputs_of(run_dir / "03_finetune.ipynb")  # one collated batch, its masked targets


def images_in(path) -> int:
    notebook = nbformat.read(path, as_version=4)
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs)


def outputs_of(path) -> str:
    notebook = nbformat.read(path, as_version=4)
    return "".join(output.get("text", "") + output.get("data", {}).get("text/plain", "")
                   for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)


def test_the_finetuning_notebook_loads_the_base_model_once():
    notebook = nbformat.read(pipeline.PROJECT_ROOT / "notebooks" / "03_finetune.ipynb", as_version=4)
    code = "".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert code.count("load_base_model(") == 1 and "model=copy.deepcopy(base_model)" in code


def test_profiles_and_auto(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pipeline.get_profile("auto").name == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pipeline.get_profile("auto").name == "gpu"
    assert pipeline.get_profile("gpu").model == "gpt2-medium"
    assert pipeline.get_profile("quality").eval_limit == 400  # the README's numbers
    with pytest.raises(ValueError, match="unknown profile"):
        pipeline.get_profile("huge")
