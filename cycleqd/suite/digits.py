"""The model-agnostic demo: an MLP on scikit-learn's bundled handwritten digits, three experts.

The paper's non-LLM case in miniature. The base MLP learns clean 8×8 digits; three experts are
fine-tuned from it on three input domains — digits rotated by 90°, digits under heavy pixel
noise, and inverted digits — and each task's metric is accuracy on its domain. Everything is
deterministic from a seed and cached: the data ships with scikit-learn, training takes seconds.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from cycleqd.errors import CycleQDError
from cycleqd.scorers import TaskShape
from cycleqd.stats import Score

__all__ = ["DOMAINS", "DigitsAccuracy", "DigitsConfig", "DigitsMLP", "DigitsSource", "digits_split"]

DOMAINS = ("rotated", "noisy", "inverted")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DigitsConfig:
    """The demo's model and training recipe."""

    hidden: int = 64
    base_steps: int = 600
    expert_steps: int = 300
    lr: float = 3e-3
    expert_lr: float = 2e-3
    batch_size: int = 128
    noise: float = 0.3
    base_domain_share: float = 0.1
    seed: int = 0


class DigitsMLP(nn.Module):
    """64 pixels → hidden → hidden → 10 classes."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x`` (``[B, 64]`` pixels in [0, 1])."""
        return self.layers(x)


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(1234).permutation(len(y))
    n_train, n_val = int(0.6 * len(y)), int(0.2 * len(y))
    parts = {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    return x, y, parts


def _view(domain: str, x: np.ndarray, noise: float, split: str) -> np.ndarray:
    if domain == "clean":
        return x
    if domain == "rotated":
        return np.rot90(x.reshape(-1, 8, 8), k=1, axes=(1, 2)).reshape(-1, 64).copy()
    if domain == "inverted":
        return 1.0 - x
    if domain == "noisy":
        # a fixed draw per split, so every evaluation sees the same noisy images
        rng = np.random.default_rng(SPLITS.index(split) + 17)
        return np.clip(x + rng.normal(0.0, noise, x.shape), 0.0, 1.0).astype(np.float32)
    raise CycleQDError(f"unknown digits domain {domain!r}; use one of {', '.join(DOMAINS)}")


def digits_split(
    domain: str, split: str, noise: float = DigitsConfig.noise
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``[N, 64]`` and labels ``[N]`` of one domain's split (60 / 20 / 20 %)."""
    if split not in SPLITS:
        raise CycleQDError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    x, y, parts = _digits()
    idx = parts[split]
    return torch.from_numpy(_view(domain, x[idx], noise, split)), torch.from_numpy(y[idx])


def _training_set(domains: dict[str, float], cfg: DigitsConfig) -> tuple[torch.Tensor, ...]:
    """Train-split examples: for each domain, its first ``share`` of the split."""
    xs, ys = [], []
    for domain, share in domains.items():
        x, y = digits_split(domain, "train", cfg.noise)
        n = int(round(share * len(y)))
        xs.append(x[:n])
        ys.append(y[:n])
    return torch.cat(xs), torch.cat(ys)


def _train(
    model: DigitsMLP, domains: dict[str, float], steps: int, lr: float, cfg: DigitsConfig, seed: int
) -> None:
    x, y = _training_set(domains, cfg)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        batch = torch.randint(len(y), (cfg.batch_size,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


class DigitsSource:
    """Builds (once, then from the cache) the digits base and one expert per domain.

    Args:
        **recipe: fields of :class:`DigitsConfig`.
    """

    def __init__(self, **recipe: object) -> None:
        try:
            self.cfg = DigitsConfig(**recipe)  # type: ignore[arg-type]
        except TypeError as exc:
            raise CycleQDError(
                f"digits source: {exc}; accepted: {', '.join(DigitsConfig.__dataclass_fields__)}"
            ) from None

    def prepare(self, cache_dir: Path) -> tuple[Path, dict[str, Path]]:
        """Train and cache the base and experts (keyed by the recipe), or reuse the cache."""
        key = hashlib.sha256(json.dumps(asdict(self.cfg), sort_keys=True).encode()).hexdigest()
        root = Path(cache_dir).expanduser() / f"digits-{key[:12]}"
        paths = {d: root / f"{d}.safetensors" for d in DOMAINS}
        if not (root / "done").is_file():
            root.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(self.cfg.seed)
            base = DigitsMLP(self.cfg.hidden)
            # a base that has seen a little of every domain: experts fine-tuned from a base that
            # knows none of their domain drift so far apart that no merge holds two skills
            share = self.cfg.base_domain_share
            _train(
                base,
                {"clean": 1.0} | {d: share for d in DOMAINS},
                self.cfg.base_steps,
                self.cfg.lr,
                self.cfg,
                self.cfg.seed,
            )
            _save(base.state_dict(), root / "base.safetensors")
            for i, domain in enumerate(DOMAINS):
                expert = DigitsMLP(self.cfg.hidden)
                expert.load_state_dict(load_file(root / "base.safetensors"))
                _train(
                    expert,
                    {domain: 1.0},
                    self.cfg.expert_steps,
                    self.cfg.expert_lr,
                    self.cfg,
                    self.cfg.seed + 1 + i,
                )
                _save(expert.state_dict(), paths[domain])
            (root / "done").write_text(json.dumps(asdict(self.cfg)))
        return root / "base.safetensors", paths

    def make_model(self) -> torch.nn.Module:
        """A fresh :class:`DigitsMLP`."""
        return DigitsMLP(self.cfg.hidden)

    def export(self, state_dict, out_dir: Path) -> Path:
        """``model.safetensors`` beside a ``config.json`` holding the recipe."""
        out_dir.mkdir(parents=True, exist_ok=True)
        _save(dict(state_dict), out_dir / "model.safetensors")
        (out_dir / "config.json").write_text(
            json.dumps({"model": "DigitsMLP", **asdict(self.cfg)}, indent=2)
        )
        return out_dir


def _save(state: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous() for k, v in state.items()}, tmp)
    tmp.replace(path)


class DigitsAccuracy:
    """Accuracy of a :class:`DigitsMLP` on one domain's split.

    Args:
        domain: ``rotated``, ``noisy``, ``inverted`` (or ``clean``).
        noise: the noisy domain's pixel noise (must match the source's).
    """

    @staticmethod
    def plan_shape(params: dict[str, object]) -> TaskShape:
        """No generation: an MLP's forward pass (the planning hook of :mod:`cycleqd.scorers`)."""
        return TaskShape(problems=0, turns=0, prompt_tokens=0, new_tokens=0)

    def __init__(self, *, domain: str, noise: float = DigitsConfig.noise) -> None:
        if domain not in (*DOMAINS, "clean"):
            raise CycleQDError(f"unknown digits domain {domain!r}; use one of {', '.join(DOMAINS)}")
        self.domain, self.noise = domain, noise

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, split: str) -> Score:
        """Fraction of the split classified correctly (each image's verdict kept)."""
        x, y = digits_split(self.domain, split, self.noise)
        return Score((model(x).argmax(dim=1) == y).tolist())
