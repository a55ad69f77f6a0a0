"""Damaged weight files: a message naming the file and the damage, exit 2, nothing written."""

from __future__ import annotations

import os

import pytest
import yaml
from conftest import REPO, save_safetensors_space
from typer.testing import CliRunner

from cycleqd import ModelLoadError, load_state_dict
from cycleqd.cli import app


def _damage(path, how):
    good = path.read_bytes()
    path.unlink()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif how == "short":
        path.write_bytes(good[:5])
    elif how == "bad header":
        body = b'{"w": oops'
        path.write_bytes(len(body).to_bytes(8, "little") + body)
    elif how == "terabyte header":
        path.write_bytes((1 << 40).to_bytes(8, "little") + good[8:])
    elif how == "device":
        os.symlink("/dev/zero", path)


CASES = {
    "empty": "is empty",
    "short": r"is truncated \(5 bytes\)",
    "truncated": "not a readable safetensors file",
    "bad header": "not a readable safetensors file",
    "terabyte header": r"bad header: it claims 1099511627776 header bytes",
    "device": "neither a file nor a directory",
}


@pytest.mark.parametrize("how", list(CASES))
def test_a_damaged_file_is_named_with_what_is_wrong(tmp_path, how):
    _, experts = save_safetensors_space(tmp_path)
    _damage(experts["sql"], how)
    with pytest.raises(ModelLoadError, match=rf"expert 'sql': .*sql.safetensors.*{CASES[how]}"):
        load_state_dict(experts["sql"], what="expert 'sql'")


@pytest.mark.parametrize("how", ["terabyte header", "device", "truncated"])
def test_evolve_with_a_damaged_expert_exits_2_and_writes_nothing(tmp_path, how):
    base, experts = save_safetensors_space(tmp_path / "models")
    _damage(experts["shell"], how)
    data = yaml.safe_load(open(REPO / "experiments" / "digits.yaml"))
    data["models"] = {"source": "paths", "base": str(base), "experts": {}}
    data["models"]["experts"] = {t["name"]: str(experts["code"]) for t in data["tasks"]}
    data["models"]["experts"][data["tasks"][1]["name"]] = str(experts["shell"])
    config = tmp_path / "damaged.yaml"
    config.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["evolve", str(config), "--run-dir", str(run)])
    assert result.exit_code == 2, result.output
    assert "shell.safetensors" in result.output and "Traceback" not in result.output
    assert not run.exists()
