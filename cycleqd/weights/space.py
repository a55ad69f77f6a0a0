"""The weight space: a base model and the task vectors ``τ_k = θ_k − θ_base`` of K experts.

Held once per process, on one device, in one storage dtype. Tensors are stored in *banks*: every
floating tensor of one shape and dtype is a row of one ``[n, numel]`` matrix (the base) and of one
``[K, n, numel]`` tensor (the task vectors), so that materialising a child is one fused pass per
bank rather than one small call per tensor. Non-floating buffers are kept from the base as they are.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cycleqd.errors import CycleQDError, ModelLoadError
from cycleqd.weights.bank import Bank
from cycleqd.weights.checkpoints import load_state_dict

__all__ = ["Bank", "WeightSpace", "DEFAULT_SVD_EXCLUDE", "parse_dtype", "svd_target_names"]

#: Matrices factored per ``torch.linalg.svd`` call (bounds the transient memory of a bank's SVD).
SVD_CHUNK = 8

#: Matrices that SVD mutation leaves alone by default: embeddings and output heads, which are
#: large and carry vocabulary rather than skills. This is cycleqd's choice, not the reference
#: code's: the reference skips only parameters whose name contains "norm", so it mutates the
#: embeddings and the head too; ``exclude: null`` in the mutation's params follows it (norms are
#: 1-D, never a target here). Which choice serves a run better has not been measured yet.
DEFAULT_SVD_EXCLUDE = r"(embed|lm_head|wte|wpe|tok_embeddings|output\.weight$)"

_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bfloat16"`` → ``torch.bfloat16``; ``None`` keeps the checkpoint's dtypes.

    Raises:
        CycleQDError: an unknown dtype name (the accepted ones listed).
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise CycleQDError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}") from None


def _describe(tensor: torch.Tensor) -> str:
    return f"shape {tuple(tensor.shape)} dtype {str(tensor.dtype).removeprefix('torch.')}"


def sample_indices(numel: int, count: int) -> torch.Tensor:
    """``min(count, numel)`` evenly spaced indices into ``numel`` elements, first and last included.

    Exact integer arithmetic: a float ``linspace`` rounds past the end of large tensors.
    """
    count = min(count, numel)
    if count <= 1:
        return torch.zeros(count, dtype=torch.long)
    return torch.arange(count, dtype=torch.long) * (numel - 1) // (count - 1)


def _row_absmax(bank: torch.Tensor, names: list[str], what: str) -> torch.Tensor:
    """Largest ``|x|`` of each row in fp32; refuses NaN/Inf (naming the tensor)."""
    absmax = torch.stack([row.abs().max().float() for row in bank]).cpu()
    if not torch.isfinite(absmax).all():
        bad = names[int((~torch.isfinite(absmax)).nonzero()[0])]
        raise ModelLoadError(
            f"{what}: tensor {bad!r} holds NaN/Inf (or overflows the storage "
            "dtype); fix the checkpoint or choose a wider `dtype`"
        )
    return absmax


def _check_expert(
    name: str, expert: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor]
) -> None:
    for key, tensor in base.items():
        if key not in expert:
            raise ModelLoadError(
                f"expert {name!r} lacks tensor {key!r} that the base has; "
                "every expert must be fine-tuned from the same base architecture"
            )
        other = expert[key]
        if other.shape != tensor.shape or other.dtype != tensor.dtype:
            raise ModelLoadError(
                f"expert {name!r}: tensor {key!r} has {_describe(other)} but the base has "
                f"{_describe(tensor)}; experts must share the base's architecture and dtype "
                "(set `dtype:` in the config to cast both)"
            )
    extra = next((key for key in expert if key not in base), None)
    if extra is not None:
        raise ModelLoadError(
            f"expert {name!r} has tensor {extra!r} that the base lacks; "
            "every expert must be fine-tuned from the same base architecture"
        )


def svd_target_names(
    shapes: Mapping[str, Sequence[int]], include: str | None, exclude: str | None
) -> list[str]:
    """The tensors SVD mutation acts on, in ``shapes``' order.

    Matrices (both sides > 1) whose names match ``include`` (``None``: all) and not ``exclude``.
    :meth:`WeightSpace.svd_targets` and ``cycleqd plan`` (from shapes alone) both use it.
    """
    return [
        n
        for n, shape in shapes.items()
        if len(shape) == 2
        and min(shape) > 1
        and (include is None or re.search(include, n))
        and not (exclude and re.search(exclude, n))
    ]


class WeightSpace:
    """A base model and K expert task vectors, held once, batched into same-shape banks.

    Args:
        base: the base model's state dict.
        experts: expert name → state dict, or → a zero-argument callable returning one (experts are
            then loaded one at a time, so peak memory is the space plus one expert).
        device: where the banks live.
        dtype: storage dtype of base and task vectors (``None``: the base's own dtypes).
        cache_dir: where SVD factors of the task vectors are cached across processes (``None``:
            in memory only).

    Raises:
        ModelLoadError: fewer than one expert, or an expert whose tensor names, shapes or dtypes
            differ from the base's (the first mismatch named).
    """

    def __init__(
        self,
        *,
        base: Mapping[str, torch.Tensor],
        experts: Mapping[
            str, Mapping[str, torch.Tensor] | Callable[[], Mapping[str, torch.Tensor]]
        ],
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        if not experts:
            raise ModelLoadError("no experts given; a weight space needs at least one expert")
        self.device = torch.device(device)
        self.dtype = parse_dtype(dtype)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        #: where the base was loaded from (:meth:`from_paths`); ``None`` for tensors given
        self.base_path: Path | None = None
        self.expert_names: list[str] = list(experts)
        base = {name: self._cast(t) for name, t in base.items()}
        self.tensor_names: list[str] = [n for n, t in base.items() if t.is_floating_point()]
        self.buffers: dict[str, torch.Tensor] = {
            n: t.to(self.device) for n, t in base.items() if not t.is_floating_point()
        }
        self._index = {name: i for i, name in enumerate(self.tensor_names)}
        self.shapes = {n: tuple(base[n].shape) for n in self.tensor_names}
        self.banks: list[Bank] = []
        self._where: dict[str, tuple[int, int]] = {}
        groups: dict[tuple[tuple[int, ...], torch.dtype], list[str]] = {}
        for name in self.tensor_names:
            groups.setdefault((self.shapes[name], base[name].dtype), []).append(name)
        K = len(experts)
        for (shape, dt), names in groups.items():
            numel = math.prod(shape)
            bank_base = torch.empty(len(names), numel, dtype=dt, device=self.device)
            for row, name in enumerate(names):
                bank_base[row].copy_(base[name].reshape(-1))
                self._where[name] = (len(self.banks), row)
            rows = torch.tensor([self._index[n] for n in names], dtype=torch.long)
            taus = torch.empty(K, len(names), numel, dtype=dt, device=self.device)
            self.banks.append(Bank(shape, dt, names, rows, bank_base, taus))
        for k, (expert_name, source) in enumerate(experts.items()):
            expert = source() if callable(source) else source
            expert = {name: self._cast(t) for name, t in expert.items()}
            _check_expert(expert_name, expert, base)
            for bank in self.banks:
                for row, name in enumerate(bank.names):
                    theta = expert[name].to(self.device).reshape(-1).float()
                    bank.taus[k, row].copy_(theta - bank.base[row].float())
            del expert
        for bank in self.banks:
            bank.base_absmax = _row_absmax(bank.base, bank.names, "the base")
            bank.tau_absmax = torch.stack(
                [
                    _row_absmax(bank.taus[k], bank.names, f"expert {n!r} minus the base")
                    for k, n in enumerate(self.expert_names)
                ]
            )
        self._svd: dict[tuple[int, int | None], dict[str, tuple[torch.Tensor, ...]]] = {}
        self._digests: dict[int, str] = {}
        self._fingerprint: str | None = None

    def _cast(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.dtype is not None and tensor.is_floating_point():
            return tensor.to(self.dtype)
        return tensor

    @classmethod
    def from_paths(
        cls,
        *,
        base: str | Path,
        experts: Mapping[str, str | Path],
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        allow_pickle: bool = False,
        cache_dir: str | Path | None = None,
    ) -> WeightSpace:
        """Load a base and experts from Hugging Face model directories or safetensors files.

        Experts are read one at a time. Every path is checked to exist before any is loaded.

        Raises:
            ModelLoadError: a path is missing or unreadable, a pickle checkpoint without
                ``allow_pickle``, or an expert that does not match the base.
        """
        for what, path in [("base", base), *((f"expert {n!r}", p) for n, p in experts.items())]:
            if not Path(path).expanduser().exists():
                raise ModelLoadError(
                    f"{what}: path {path} does not exist; give a Hugging Face model directory "
                    "(config.json + *.safetensors weights) or a .safetensors state-dict file"
                )
        base_sd = load_state_dict(base, what="base", allow_pickle=allow_pickle)

        def loader(name: str, path: str | Path) -> Callable[[], dict[str, torch.Tensor]]:
            return lambda: load_state_dict(path, what=f"expert {name!r}", allow_pickle=allow_pickle)

        space = cls(
            base=base_sd,
            experts={n: loader(n, p) for n, p in experts.items()},
            device=device,
            dtype=dtype,
            cache_dir=cache_dir,
        )
        space.base_path = Path(base).expanduser()
        return space

    # --- views -------------------------------------------------------------------------------

    @property
    def num_experts(self) -> int:
        """K, the number of experts."""
        return len(self.expert_names)

    @property
    def num_parameters(self) -> int:
        """Floating parameters per model."""
        return sum(len(b.names) * b.numel for b in self.banks)

    @property
    def checkpoint_bytes(self) -> int:
        """Bytes of one full model checkpoint in the storage dtype(s)."""
        return sum(b.base.numel() * b.base.element_size() for b in self.banks) + sum(
            t.numel() * t.element_size() for t in self.buffers.values()
        )

    def index(self, name: str) -> int:
        """Position of tensor ``name`` in :attr:`tensor_names` (genome coefficient row)."""
        try:
            return self._index[name]
        except KeyError:
            raise CycleQDError(f"no floating tensor named {name!r} in this weight space") from None

    def base_tensor(self, name: str) -> torch.Tensor:
        """The base weight ``name`` (a view into its bank)."""
        bank, row = self._where[name]
        return self.banks[bank].base[row].view(self.shapes[name])

    def task_vector(self, k: int, name: str) -> torch.Tensor:
        """``τ_k`` of tensor ``name`` (a view into its bank)."""
        bank, row = self._where[name]
        return self.banks[bank].taus[k, row].view(self.shapes[name])

    def locate(self, name: str) -> tuple[int, int]:
        """``(bank index, row)`` of tensor ``name``."""
        return self._where[name]

    def fingerprint(self) -> str:
        """Hash of the space: tensor names, shapes, dtypes, expert names, and a sample of values.

        Genomes carry it, so that a genome is never replayed against a different space — also not
        against rebuilt experts with the same architecture. The values hashed are 64 evenly
        spaced elements of every base and task-vector row (hashing every byte of an 8 B model
        would cost a minute at each start); an accidental collision is out of reach.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            for name in self.tensor_names:
                bank, _ = self._where[name]
                h.update(f"{name}|{self.shapes[name]}|{self.banks[bank].dtype};".encode())
            h.update("|".join(self.expert_names).encode())
            for bank in self.banks:
                picks = sample_indices(bank.numel, 64).to(bank.base.device)
                h.update(bank.base[:, picks].float().cpu().numpy().tobytes())
                h.update(bank.taus[:, :, picks].float().cpu().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def layer_groups(self) -> list[int]:
        """Per tensor, the index of its layer group.

        Tensors whose names share the first integer component (``model.layers.7.…``) form a
        group; every other tensor is its own group.
        """
        groups: dict[str, int] = {}
        out = []
        for name in self.tensor_names:
            match = re.search(r"\.(\d+)\.", name)
            key = f"layer:{match.group(1)}" if match else f"tensor:{name}"
            out.append(groups.setdefault(key, len(groups)))
        return out

    def svd_targets(
        self, include: str | None = None, exclude: str | None = DEFAULT_SVD_EXCLUDE
    ) -> list[str]:
        """2-D tensors that SVD mutation acts on.

        Names matching ``include`` (default: all) and not ``exclude``.
        """
        return svd_target_names({n: self.shapes[n] for n in self.tensor_names}, include, exclude)

    # --- SVD factors of task vectors -----------------------------------------------------------

    def _tau_digest(self, k: int) -> str:
        if k in self._digests:
            return self._digests[k]
        h = hashlib.blake2b(digest_size=16)
        h.update(self.fingerprint().encode())
        for bank in self.banks:
            h.update(bank.taus[k].contiguous().cpu().view(torch.uint8).numpy().data)
        self._digests[k] = h.hexdigest()
        return self._digests[k]

    def svd_factors(
        self, k: int, names: Iterable[str], *, rank: int | None = None
    ) -> dict[str, tuple[torch.Tensor, ...]]:
        """``(U [m, r], S [r], V [n, r])`` in fp32 of ``τ_k`` for each named matrix.

        Computed once per matrix (batched over same-shape matrices, :data:`SVD_CHUNK` per
        ``linalg.svd`` call), then kept in memory and, with ``cache_dir``, on disk in one file per
        expert and rank, named by a digest of ``τ_k``'s bytes, so every process of a run replays
        mutations against identical factors.

        Args:
            k: expert index.
            names: 2-D tensor names.
            rank: keep the top ``rank`` singular triplets (``None``: full rank).

        Raises:
            CycleQDError: ``rank`` below 1.
        """
        if rank is not None and rank < 1:
            raise CycleQDError(f"SVD rank must be >= 1 (or None for full rank), got {rank}")
        names = list(dict.fromkeys(names))
        known = self._svd.setdefault((k, rank), {})
        path = None
        if self.cache_dir is not None:
            path = (
                self.cache_dir
                / f"svd-{self._tau_digest(k)}-rank{'full' if rank is None else rank}.safetensors"
            )
            if any(n not in known for n in names) and path.is_file():
                flat = load_file(path, device=str(self.device))
                for key in flat:
                    n = key.rsplit(".", 1)[0]
                    known.setdefault(n, (flat[f"{n}.U"], flat[f"{n}.S"], flat[f"{n}.V"]))
        missing = {n for n in names if n not in known}
        for bank in self.banks if missing else []:
            rows = [r for r, n in enumerate(bank.names) if n in missing]
            if not rows:
                continue
            # a few matrices per call: batching amortises the call, while the float32 copy and
            # the full thin factors of a whole bank (64 MLP matrices of an 8B model: ~39 GiB)
            # would not fit beside the weights
            for start in range(0, len(rows), SVD_CHUNK):
                chunk = rows[start : start + SVD_CHUNK]
                mats = bank.taus[k, chunk].float().view(len(chunk), *bank.shape)
                U, S, Vh = torch.linalg.svd(mats, full_matrices=False)
                r = S.shape[-1] if rank is None else min(rank, S.shape[-1])
                for i, row in enumerate(chunk):
                    known[bank.names[row]] = (
                        U[i, :, :r].clone(memory_format=torch.contiguous_format),
                        S[i, :r].clone(),
                        Vh[i, :r, :].T.contiguous(),
                    )
                del mats, U, S, Vh
        if missing and path is not None:
            if path.is_file():  # another process may have added factors since: keep them
                flat = load_file(path, device=str(self.device))
                for key in flat:
                    n = key.rsplit(".", 1)[0]
                    known.setdefault(n, (flat[f"{n}.U"], flat[f"{n}.S"], flat[f"{n}.V"]))
            path.parent.mkdir(parents=True, exist_ok=True)
            # unique per process and host: workers on several nodes may share cache_dir
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            save_file(
                {
                    f"{n}.{part}": t.cpu()
                    for n, f in known.items()
                    for part, t in zip("USV", f, strict=True)
                },
                tmp,
            )
            tmp.replace(path)
        return {n: known[n] for n in names}
