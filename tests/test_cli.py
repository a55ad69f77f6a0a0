"""The command line: bad input gets a clear message, exit status 2, and nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import yaml
from conftest import digits_yaml
from typer.testing import CliRunner

from cycleqd.cli import app

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


@pytest.fixture
def config(tmp_path, digits_cache):
    return digits_yaml(tmp_path / "digits.yaml", digits_cache, generations=2, batch_size=2)


def edit(path, fn):
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data))
    return path


def test_help_imports_no_heavy_library():
    out = subprocess.run(
        [sys.executable, "-m", "cycleqd", "--help"], capture_output=True, text=True, check=True
    )
    assert "evolve" in out.stdout and "export" in out.stdout
    code = (
        "import sys, cycleqd.cli; print(sorted(m for m in ('torch', 'ribs', 'transformers',"
        " 'mergekit') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.write_text("name: x\ntasks: [a, b\n"), r"malformed YAML at line 3"),
        (
            lambda p: edit(p, lambda d: d["evolution"].update(generatons=3)),
            r"unknown key 'evolution.generatons'; did you mean 'generations'\?",
        ),
        (
            lambda p: edit(p, lambda d: d["evolution"].update(generations="ten")),
            r"evolution.generations: Input should be a valid integer.*'ten'",
        ),
        (lambda p: edit(p, lambda d: d.update(tasks=d["tasks"][:1])), r"at least 2 tasks"),
        (
            lambda p: edit(p, lambda d: d["tasks"][1].update(scorer="digit_accuracy")),
            r"unknown scorer 'digit_accuracy'. Did you mean 'digits_accuracy'\?",
        ),
        (
            lambda p: edit(p, lambda d: d["evolution"]["mutation"].update(name="svd")),
            r"unknown mutation 'svd'.*svd_expert",
        ),
        (
            lambda p: edit(
                p,
                lambda d: (
                    d["evolution"].update(racing={"enabled": True}),
                    d.update(evaluation={"schedule": "steady"}),
                ),
            ),
            r"evolution.racing needs the generational schedule",
        ),
        (
            lambda p: edit(p, lambda d: d["evolution"].update(racing={"stages": [40, 20]})),
            r"racing.stages must be increasing positive sizes",
        ),
    ],
)
def test_bad_config_is_explained_and_writes_nothing(config, tmp_path, mutate, message):
    mutate(config)
    code, output = invoke("evolve", config, "--run-dir", tmp_path / "run")
    assert code == 2
    assert pytest.importorskip("re").search(message, output.replace("\n", " ")), output
    assert not (tmp_path / "run").exists()


def test_bad_override_is_explained(config, tmp_path):
    code, output = invoke(
        "evolve", config, "--set", "evolution.generations", "--run-dir", tmp_path / "r"
    )
    assert code == 2 and "write overrides as key=value" in output


def test_existing_run_folder_needs_resume_and_resume_needs_a_run(config, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    code, output = invoke("evolve", config, "--run-dir", tmp_path / "taken")
    assert code == 2 and "already exists; pass --resume" in output
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["notes.txt"]
    code, output = invoke("evolve", "--resume", "--run-dir", tmp_path / "taken")
    assert code == 2 and "is not a cycleqd run folder" in output


def test_evolve_show_export_on_digits(config, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # the report's table on one line a row
    code, output = invoke("evolve", config, "--run-dir", tmp_path / "run")
    assert code == 0, output
    assert "cycleqd_final" in output and "task_arithmetic_best" in output
    code, output = invoke("evolve", config, "--run-dir", tmp_path / "run")
    assert code == 2 and "already exists" in output
    code, output = invoke("show", tmp_path / "run")
    assert code == 0 and "archive 'rotated'" in output and "cycleqd_final" in output
    # every score with its 95% interval over requests, and the final model's paired difference
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    low, high = summary["intervals"]["methods"]["base"]["rotated"]
    assert "95% intervals over requests" in output and f"[{low:.3f}, {high:.3f}]" in output
    point, low, high = summary["intervals"]["differences"]["base"]["average"]
    assert f"{point:+.3f} [{low:+.3f}, {high:+.3f}]" in output
    from cycleqd import load_run

    results = load_run(tmp_path / "run").results()
    row = results[(results.method == "base") & (results.column == "average")].iloc[0]
    assert (row.difference, row.difference_low, row.difference_high) == pytest.approx(
        (point, low, high)
    )
    code, output = invoke("export", tmp_path / "run", tmp_path / "out", "--final")
    assert code == 0 and (tmp_path / "out" / "model.safetensors").is_file()
    code, output = invoke("export", tmp_path / "run", tmp_path / "out", "--final")
    assert code == 2 and "already exists" in output
    code, output = invoke("export", tmp_path / "run", tmp_path / "o2", "--best", "sideways")
    assert code == 2 and "unknown task 'sideways'" in output
    code, output = invoke("export", tmp_path / "run", tmp_path / "o3", "--elite", "zzzz")
    assert code == 2 and "no genome of this run match" in output
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o")]


SCORER_MODULE = textwrap.dedent("""
    import torch

    class TokenProbability:
        '''Probability the model gives ``token`` after a fixed prompt: a score in [0, 1].'''

        def __init__(self, *, token: int):
            self.token = token
            self.prompt = torch.tensor([[1, 7, 3, 9, 4]])

        @torch.no_grad()
        def __call__(self, model, split):
            logits = model(self.prompt).logits[0, -1]
            shift = 1 if split == "test" else 0
            return float(torch.softmax(logits, -1)[self.token + shift])
""")


def test_transformers_run_with_a_plugin_scorer_exports_a_loadable_model(
    tiny_llama_dirs, tmp_path, monkeypatch
):
    import torch
    from transformers import AutoModelForCausalLM

    from cycleqd import load_run

    (tmp_path / "my_scorers.py").write_text(SCORER_MODULE)
    dist = tmp_path / "my_scorers-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-scorers\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[cycleqd.scorers]\ntoken_probability = my_scorers:TokenProbability\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    base, experts = tiny_llama_dirs
    tasks = list(experts)
    config = {
        "name": "llama",
        "cache_dir": str(tmp_path / "cache"),
        "models": {"base": str(base), "experts": {t: str(p) for t, p in experts.items()}},
        "tasks": [
            {
                "name": t,
                "params": {"token": 10 + i},
                # one by entry point, the others by dotted path
                "scorer": "token_probability" if i == 0 else "my_scorers:TokenProbability",
            }
            for i, t in enumerate(tasks)
        ],
        "evolution": {"generations": 3, "batch_size": 2},
    }
    (tmp_path / "llama.yaml").write_text(yaml.safe_dump(config))
    code, output = invoke("evolve", tmp_path / "llama.yaml", "--run-dir", tmp_path / "run")
    assert code == 0, output
    run = load_run(tmp_path / "run")
    best = run.best(tasks[1])
    code, output = invoke("export", tmp_path / "run", tmp_path / "hf", "--best", tasks[1])
    assert code == 0, output
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ours = run.model(best)
    tokens = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        assert torch.equal(exported(tokens).logits, ours(tokens).logits)
    weights = run.materialize(best)
    assert all(torch.equal(exported.state_dict()[n], weights[n]) for n in weights)


def test_a_run_that_fails_before_seeding_leaves_nothing(config, tmp_path):
    edit(
        config,
        lambda d: d["models"].update(
            source="paths",
            base=str(tmp_path / "none"),
            experts={t["name"]: str(tmp_path / "none") for t in d["tasks"]},
            params={},
        ),
    )
    code, output = invoke("evolve", config, "--run-dir", tmp_path / "run")
    assert code == 2 and "does not exist" in output
    assert not (tmp_path / "run").exists()


def test_resume_refuses_overrides_without_the_config(config, tmp_path):
    code, output = invoke("evolve", config, "--run-dir", tmp_path / "run")
    assert code == 0, output
    mode = (tmp_path / "run" / "config.yaml").stat().st_mode & 0o777
    assert mode & 0o044 == 0o044 & ~__import__("os").umask(0o022)  # readable as the umask says
    code, output = invoke(
        "evolve", "--resume", "--run-dir", tmp_path / "run", "--set", "evolution.generations=9"
    )
    assert code == 2 and "a resumed run keeps the config" in output
