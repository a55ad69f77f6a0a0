"""Model sources: where a run's base and experts come from, and how a child becomes a model.

A source (found by name in :data:`SOURCES`, extended through the ``cycleqd.sources`` entry-point
group) does three things:

* ``prepare(cache_dir)`` → ``(base path, {task: expert path})``, building them first if it is a
  builder (the digits demo trains its experts and caches them);
* ``make_model()`` → a torch module of the right architecture, into which evaluators load each
  child's weights in place;
* ``export(state_dict, out_dir)`` → a checkpoint a user can load: a Hugging Face directory (with
  the base's tokenizer) for transformers models, else a ``model.safetensors`` state dict.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import save_file

from cycleqd.errors import CycleQDError
from cycleqd.registry import Registry

__all__ = [
    "SOURCES",
    "ModelSource",
    "PathsSource",
    "TOKENIZER_FILES",
    "is_hub_id",
    "load_models",
    "resolve_model",
]

#: Files copied from the base model's directory into an exported checkpoint.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "generation_config.json",
)


#: What a run needs of a Hugging Face repository (no optimizer states, no duplicate formats).
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "tokenizer*"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(ref: str | Path) -> bool:
    """Whether ``ref`` reads as a Hugging Face repository id (``org/name``), not a local path."""
    text = str(ref)
    return not Path(text).expanduser().exists() and bool(_HUB_ID.match(text))


def resolve_model(ref: str | Path, *, download: bool = True) -> Path:
    """A model reference as a local path.

    A path that exists is returned as it is. An ``org/name`` Hugging Face id is looked up in the
    local hub cache (``HF_HUB_CACHE``); with ``download`` and the hub reachable (``HF_HUB_OFFLINE``
    unset) missing files are downloaded first: config, safetensors weights and tokenizer only.

    Raises:
        CycleQDError: a path that does not exist, or an id that is neither cached nor
            downloadable (the message says how to fetch it or point at a local copy).
    """
    path = Path(ref).expanduser()
    if path.exists():
        return path
    if not is_hub_id(ref):
        raise CycleQDError(
            f"model {str(ref)!r} does not exist: give a local path or an org/name id"
        )
    from huggingface_hub import snapshot_download

    offline = not download or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        return Path(
            snapshot_download(str(ref), allow_patterns=HUB_PATTERNS, local_files_only=offline)
        )
    except Exception as exc:  # offline miss, gated repo, no network: all need the same advice
        where = "is not in the local Hugging Face cache" if offline else "could not be downloaded"
        # (a mistyped relative path reads as an org/name id too: the message names both)
        raise CycleQDError(
            f"model {str(ref)!r} is no local path (none at {Path(ref).expanduser().resolve()}) "
            f"and as a Hugging Face id it {where} ({type(exc).__name__}). Fix the path, or "
            f"download the model where the hub is reachable (`hf download {ref}`) and copy the "
            "cache here (or point HF_HUB_CACHE at it)"
        ) from None


class ModelSource(Protocol):
    """Where base and experts come from; see the module docstring."""

    def prepare(self, cache_dir: Path) -> tuple[Path, dict[str, Path]]:
        """Base and expert paths, built first if needed."""

    def make_model(self) -> torch.nn.Module:
        """A module of the models' architecture."""

    def export(self, state_dict: Mapping[str, torch.Tensor], out_dir: Path) -> Path:
        """Write a loadable checkpoint of ``state_dict`` into ``out_dir``."""


#: Model sources by name.
SOURCES: Registry = Registry(kind="model source", entry_point_group="cycleqd.sources")


def load_into(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """Make ``model``'s parameters *be* ``state_dict``'s tensors (``assign=True``).

    A materialiser writing into ``state_dict`` then updates the model in place. Only weights tied
    to others may be missing.

    Raises:
        CycleQDError: the state dict does not fit the architecture.
    """
    result = model.load_state_dict(dict(state_dict), strict=False, assign=True)
    tied = set()
    if hasattr(model, "_tied_weights_keys") and model._tied_weights_keys:
        keys = model._tied_weights_keys
        tied = set(keys if not isinstance(keys, dict) else keys)
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise CycleQDError(
            f"the weights do not fit the model architecture: missing "
            f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()


@SOURCES.register("paths")
class PathsSource:
    """Base and experts given as Hugging Face model directories or ``.safetensors`` files.

    A Hugging Face id (``meta-llama/Meta-Llama-3-8B-Instruct``) in place of a path is resolved
    through the local hub cache, downloading it where the hub is reachable.

    Args:
        base: the base model (path or id).
        experts: task name → expert (path or id).
        model: for plain state dicts, a dotted path ``package.module:factory`` of a callable
            returning the architecture as a torch module (transformers directories need none).
    """

    def __init__(
        self, *, base: str | Path, experts: Mapping[str, str | Path], model: str | None = None
    ) -> None:
        self.base = Path(base).expanduser()
        self.experts = {k: Path(v).expanduser() for k, v in experts.items()}
        self.model = model

    @property
    def is_transformers(self) -> bool:
        """Whether the base is a Hugging Face model directory."""
        return (self.base / "config.json").is_file()

    def prepare(self, cache_dir: Path) -> tuple[Path, dict[str, Path]]:
        """The configured paths, Hugging Face ids resolved through the hub cache.

        Local paths are checked for existence when the weight space loads them; an id is
        downloaded first where the hub is reachable (:func:`resolve_model`).
        """
        if is_hub_id(self.base):
            self.base = resolve_model(self.base)
        self.experts = {k: resolve_model(v) if is_hub_id(v) else v for k, v in self.experts.items()}
        return self.base, dict(self.experts)

    def make_model(self) -> torch.nn.Module:
        """The base's architecture, from its ``config.json`` (no remote code)."""
        if self.model is not None:
            factory: Callable[[], torch.nn.Module] = SOURCES.import_path(self.model)
            return factory()
        if not self.is_transformers:
            raise CycleQDError(
                f"{self.base} is a plain state dict: set models.params.model to "
                "a 'package.module:factory' that builds its architecture"
            )
        import transformers

        config = transformers.AutoConfig.from_pretrained(
            self.base, trust_remote_code=False, local_files_only=True
        )
        architecture = (config.architectures or ["AutoModelForCausalLM"])[0]
        cls = getattr(transformers, architecture, None)
        if cls is None:
            raise CycleQDError(f"{self.base}: transformers has no architecture {architecture!r}")
        # built on the CPU, not the meta device: non-persistent buffers (rotary frequencies) are
        # computed at construction and are not in the checkpoint
        model = cls._from_config(config)
        if (self.base / "generation_config.json").is_file():
            # an instruct model's end-of-turn tokens (Llama-3's <|eot_id|>) live here
            model.generation_config = transformers.GenerationConfig.from_pretrained(self.base)
        # its tokenizer and path reach scorers in the evaluator's ScoringContext, not on it
        return model

    def export(self, state_dict: Mapping[str, torch.Tensor], out_dir: Path) -> Path:
        """A Hugging Face directory (with the base's tokenizer files), or ``model.safetensors``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        if not self.is_transformers:
            save_file(
                {k: v.contiguous() for k, v in state_dict.items()}, out_dir / "model.safetensors"
            )
            return out_dir
        model = load_into(self.make_model(), {k: v.clone() for k, v in state_dict.items()})
        model.save_pretrained(out_dir)
        for name in TOKENIZER_FILES:
            if (self.base / name).is_file():
                shutil.copy2(self.base / name, out_dir / name)
        return out_dir


def load_models(config: Any) -> tuple[ModelSource, Any]:
    """The model source and weight space of a :class:`cycleqd.config.RunConfig`.

    Builds (or reuses) the source's base and experts, one expert per task in task order.

    Raises:
        CycleQDError: the source has no expert for a task; or loading fails (its message).
    """
    from cycleqd.weights.space import WeightSpace

    source = build_source(config.models)
    cache = Path(config.cache_dir).expanduser()
    base, experts = source.prepare(cache)
    missing = [t for t in config.task_names if t not in experts]
    if missing:
        raise CycleQDError(
            f"model source {config.models.source!r} has no expert for task(s) "
            f"{missing}; it provides {sorted(experts)}"
        )
    space = WeightSpace.from_paths(
        base=base,
        experts={t: experts[t] for t in config.task_names},
        dtype=config.models.dtype,
        device=config.models.device,
        allow_pickle=config.models.allow_pickle,
        cache_dir=cache / "svd",
    )
    return source, space


def build_source(models: Any) -> ModelSource:
    """The source that a :class:`cycleqd.config.ModelsConfig` describes."""
    if models.source == "paths":
        return PathsSource(base=models.base, experts=models.experts, **models.params)
    return SOURCES.build(models.source, **models.params)


#: The embedded suite's sources, imported only when a config names them.
_BUILTINS = {
    "digits": "cycleqd.suite.digits:DigitsSource",
    "tinylm": "cycleqd.suite.tinylm:TinyLMSource",
}


def _builtin(name: str) -> Any:
    return SOURCES.import_path(_BUILTINS[name])


SOURCES.add_provider(lambda: list(_BUILTINS), _builtin)
