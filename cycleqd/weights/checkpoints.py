"""Reading model weights from disk: Hugging Face model directories and plain state dicts.

Safetensors only, unless the caller opts into pickle: a ``.bin``/``.pt`` checkpoint runs code when
unpickled, so it is refused without ``allow_pickle=True`` (and then loaded with
``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from cycleqd.errors import ModelLoadError

__all__ = ["load_state_dict", "PICKLE_SUFFIXES"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_FORMAT_HINT = (
    "give a Hugging Face model directory (config.json + *.safetensors weights) or a "
    ".safetensors state-dict file"
)


def _refuse_pickle(what: str, files: list[Path]) -> None:
    raise ModelLoadError(
        f"{what}: {files[0]} is a pickle checkpoint, which can run arbitrary code when loaded. "
        "Convert it to safetensors, or set `allow_pickle: true` in the config if you trust it."
    )


def _load_pickles(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in files:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
        state.update(loaded.get("state_dict", loaded) if isinstance(loaded, dict) else {})
    return state


def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    return sorted(directory.glob("*.safetensors"))


#: The largest safetensors header cycleqd reads (the format's readers refuse larger ones too).
_MAX_HEADER = 100 << 20


def _read_safetensors(file: Path, what: str) -> dict[str, torch.Tensor]:
    """Every tensor of one ``.safetensors`` file, or an error naming the file and its damage."""
    fix = "re-export or re-download it"
    if not file.is_file():
        raise ModelLoadError(
            f"{what}: {file} is not a regular file (a device, a link to one?); {fix}"
        )
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
    if len(head) < 8:
        state = "empty" if size == 0 else f"truncated ({size} bytes)"
        raise ModelLoadError(f"{what}: {file} is {state}, not a safetensors file; {fix}")
    header = int.from_bytes(head, "little")
    if header > min(_MAX_HEADER, size - 8):
        raise ModelLoadError(
            f"{what}: {file} has a bad header: it claims {header} header bytes in a file of "
            f"{size} bytes (truncated or not a safetensors file); {fix}"
        )
    try:
        return load_file(file)
    except Exception as exc:  # safetensors' SafetensorError and friends: name the file
        raise ModelLoadError(
            f"{what}: {file} is not a readable safetensors file ({exc}); {fix}"
        ) from exc


def _check_hf_config(directory: Path, what: str) -> None:
    from transformers import AutoConfig  # seconds to import: only when a model directory is read

    try:
        AutoConfig.from_pretrained(directory, trust_remote_code=False, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"{what}: {directory}/config.json is not a config that transformers can read without "
            f"remote code ({exc}). Fix the config, or point at a .safetensors state-dict file."
        ) from exc


def load_state_dict(
    path: str | Path, *, what: str = "model", allow_pickle: bool = False
) -> dict[str, torch.Tensor]:
    """Load every tensor of a checkpoint onto the CPU.

    Args:
        path: a Hugging Face model directory (``config.json`` beside ``*.safetensors``, sharded or
            not), a directory of ``*.safetensors`` files, or one ``.safetensors`` file.
        what: how to name this checkpoint in errors (``"expert 'code'"``).
        allow_pickle: load ``.bin``/``.pt``/``.pth``/``.ckpt`` checkpoints too.

    Returns:
        Tensor name → tensor.

    Raises:
        ModelLoadError: the path is missing, holds no weights, holds only pickle weights without
            ``allow_pickle``, or its config needs remote code.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"{what}: path {path} does not exist; {_FORMAT_HINT}")
    if path.is_file():
        if path.suffix == ".safetensors":
            return _read_safetensors(path, what)
        if path.suffix in PICKLE_SUFFIXES:
            if not allow_pickle:
                _refuse_pickle(what, [path])
            return _load_pickles([path])
        raise ModelLoadError(f"{what}: {path} is not a weights file cycleqd reads; {_FORMAT_HINT}")
    if not path.is_dir():
        raise ModelLoadError(
            f"{what}: {path} is neither a file nor a directory (a device, a link to one?); "
            f"{_FORMAT_HINT}"
        )
    if (path / "config.json").is_file():
        _check_hf_config(path, what)
    files = _safetensors_files(path)
    if files:
        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(_read_safetensors(file, what))
        return state
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        if not allow_pickle:
            _refuse_pickle(what, pickles)
        return _load_pickles(pickles)
    raise ModelLoadError(f"{what}: {path} holds no weights; {_FORMAT_HINT}")
