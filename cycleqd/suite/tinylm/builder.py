"""The builder: train (or reuse from the cache) the models, record and check their weights.

A build trains under :func:`cycleqd.suite.tinylm.training.build_threads` (a fixed thread count,
deterministic kernels) and records a SHA-256 of its weights: the same recipe gives the same
weights on any machine of a kind. Builds are cached by the recipe's hash, in a private folder
renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from cycleqd.engine.progress import progress
from cycleqd.suite.skills.problems import SKILLS
from cycleqd.suite.tinylm.corpus import _skill_examples
from cycleqd.suite.tinylm.recipe import TinyLMRecipe
from cycleqd.suite.tinylm.training import (
    _encode,
    _train,
    build_threads,
    train_base,
    train_expert,
    train_jointly,
)

__all__ = ["build", "build_info", "build_multitask", "weights_hash"]


def build(cache_dir: Path, recipe: TinyLMRecipe | None = None) -> tuple[Path, dict[str, Path]]:
    """Train (or reuse from the cache) the base and one expert per skill.

    Returns:
        The base's Hugging Face directory and each skill's expert directory (each with the
        tokenizer).
    """
    from transformers.utils import logging as hf_logging

    recipe = recipe or TinyLMRecipe()
    root = Path(cache_dir).expanduser() / f"tinylm-{recipe.key()}"
    paths = {s: root / f"expert-{s}" for s in SKILLS}
    if (root / "done").is_file():
        return root / "base", paths
    # built in a private folder renamed into place at the end: an interrupted build leaves no
    # half-built models under the cache key
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our own bar shows progress; not one per saved file
    try:
        _build(tmp, recipe)
        if (root / "done").is_file():  # another process built the same recipe meanwhile
            shutil.rmtree(tmp)
        else:
            if root.exists():  # a folder an older version left without its "done" marker
                shutil.rmtree(root)
            tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return root / "base", paths


def _build(root: Path, recipe: TinyLMRecipe) -> None:
    start = time.perf_counter()
    with build_threads():
        train_base(root / "base", recipe)
        for i, skill in enumerate(SKILLS):
            train_expert(root / f"expert-{skill}", root / "base", recipe, skill, i)
        if recipe.expert_joint_steps:
            train_jointly(root, recipe)
    seconds = round(time.perf_counter() - start, 1)
    digest = weights_hash(root)
    progress(f"models built in {seconds:.0f} s: weights sha256 {digest}")
    info = {"recipe": asdict(recipe), "weights_sha256": digest, "build_s": seconds}
    (root / "done").write_text(json.dumps(info))


def build_info(base: Path) -> dict[str, Any]:
    """What the build of the models beside ``base`` recorded: recipe, weights hash, seconds."""
    return json.loads((Path(base).parent / "done").read_text())


def weights_hash(root: Path) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) of the models under ``root``.

    Independent of file layout and metadata: two builds with equal hashes hold equal weights.
    """
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for path in sorted(Path(root).glob("*/model.safetensors")):
        digest.update(path.parent.name.encode())
        tensors = load_file(path)
        for name in sorted(tensors):
            tensor = tensors[name].contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def build_multitask(cache_dir: Path, recipe: TinyLMRecipe | None = None, seed: int = 0) -> Path:
    """The multi-task fine-tuning baseline: the base trained on every skill's data at once.

    It takes as many steps as all experts together (``len(SKILLS) × expert_steps``) at the
    experts' learning rate, on the union of their training examples; ``seed`` seeds the batches.
    Cached beside the experts (built in a private folder, renamed into place).

    Returns:
        The fine-tuned model's Hugging Face directory (with the tokenizer).
    """
    from transformers import AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    recipe = recipe or TinyLMRecipe()
    base, _ = build(cache_dir, recipe)
    out = base.parent / f"multitask-{seed}"
    if (out / "config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(base)
    examples = [
        _encode(tokenizer, p, a, recipe.max_len)
        for s in SKILLS
        for p, a in _skill_examples(s, recipe.train_problems, recipe.seed)
    ]
    model = LlamaForCausalLM.from_pretrained(base)
    steps = len(SKILLS) * recipe.expert_steps
    pad = tokenizer.pad_token_id
    with build_threads():
        _train(model, examples, steps, recipe.expert_lr, recipe, pad, 1000 + seed, "multi-task")
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if not (out / "config.json").is_file():
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bars:
            hf_logging.enable_progress_bar()
    return out
