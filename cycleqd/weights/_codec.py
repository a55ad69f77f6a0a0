"""The genome file format and content hash: safetensors bytes with a JSON header, no pickle.

A file holds a genome's lineage as a DAG of JSON nodes keyed by id (each merge-node ancestor
once, however many paths reach it), every node's tensors side by side. :func:`pack` writes one,
:func:`unpack` reads one back (parents before children, each node checked against its id) and
:func:`content_id` is the Merkle hash that ids are. :class:`cycleqd.weights.genome.Genome`
encodes and decodes the nodes themselves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from cycleqd.errors import CycleQDError

__all__ = ["FORMAT", "content_id", "pack", "unpack"]

FORMAT = "cycleqd.genome/1"


class _HasId(Protocol):
    """A decoded node: a :class:`cycleqd.Genome`."""

    @property
    def id(self) -> str: ...


_Node = TypeVar("_Node", bound=_HasId)


def content_id(space: str, header: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """The id of a node: a hash of its sorted JSON header, then each tensor's shape and bytes.

    ``header`` names its tensors ``t0``, ``t1``, … (keys of ``tensors``, fp32 on the CPU); a merge
    node's header names its parents by id, which makes the hash a Merkle hash.
    """
    h = hashlib.sha256(f"{FORMAT}|{space}|".encode())
    h.update(json.dumps(header, sort_keys=True).encode())
    for key in sorted(tensors, key=lambda k: int(k[1:])):
        h.update(f"|{key}{tuple(tensors[key].shape)}|".encode())
        h.update(tensors[key].numpy().tobytes())
    return h.hexdigest()[:20]


def pack(
    space: str, root: str, nodes: Mapping[str, Any], tensors: dict[str, torch.Tensor]
) -> bytes:
    """Safetensors bytes of a lineage: ``nodes`` (id → JSON header) and their ``tensors``."""
    header = {"root": root, "nodes": nodes}
    metadata = {
        "format": FORMAT,
        "space": space,
        "genome": json.dumps(header, sort_keys=True),
    }
    return canonical_header(st_save(tensors, metadata=metadata))


def canonical_header(data: bytes) -> bytes:
    """``data`` (safetensors bytes) with its JSON header's keys sorted: the same bytes every time.

    safetensors writes its ``__metadata__`` from a hash map, in an order that changes from one
    process to the next; tensor offsets count from the end of the header, so rewriting the
    header (padded with spaces to 8 bytes, as safetensors does) leaves the data as it is.
    """
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def unpack(
    data: bytes,
    decode: Callable[
        [Mapping[str, Any], Mapping[str, torch.Tensor], str, Mapping[str, _Node]], _Node
    ],
) -> _Node:
    """Inverse of :func:`pack`: the root node, each node built by ``decode`` after its parents.

    Args:
        data: the bytes.
        decode: ``(header, tensors, space, built)`` → node, ``built`` holding its parents by id.

    Raises:
        CycleQDError: the bytes are not a cycleqd genome (or are truncated or corrupt).
    """
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
        if metadata.get("format") != FORMAT:
            raise ValueError(f"format {metadata.get('format')!r}")
        header = json.loads(metadata["genome"])
        nodes, built = header["nodes"], {}
        stack = [header["root"]]
        while stack:  # parents before children, iteratively
            gid = stack[-1]
            missing = [p for p in nodes[gid].get("merge", {}).get("parents", []) if p not in built]
            if missing:
                stack.extend(missing)
                continue
            stack.pop()
            if gid not in built:
                built[gid] = decode(nodes[gid], tensors, metadata["space"], built)
                if built[gid].id != gid:
                    raise ValueError(f"node {gid} does not hash to its id (corrupt file)")
        return built[header["root"]]
    except Exception as exc:  # SafetensorError, truncated JSON, a missing key: all corrupt
        raise CycleQDError(
            f"not a cycleqd genome file ({type(exc).__name__}: {exc}); genomes are written "
            "by Genome.save / the run store"
        ) from exc
