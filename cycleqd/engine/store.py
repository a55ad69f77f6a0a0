"""The run folder, ``archives/<run>/``: everything a run writes, written so a crash loses nothing.

Layout (documented for users in ``archives/README.md``):

    config.yaml          the resolved config
    checkpoint.json      generation, RNG state, genome table, archives, log sizes (atomic)
    events.jsonl         one line per seeded expert, child and failure
    metrics.jsonl        one line per generation: coverage, QD score, best per archive
    genomes/<id>.genome  every genome that entered an archive
    final.genome         the final merged model
    final.json           how the final model was chosen (β, λ, validation scores)
    summary.json         the test-split table
    plots/*.png          archive heatmaps, coverage and QD-score curves

Checkpoints are written after the logs they cover; on resume the logs are truncated back to the
sizes the checkpoint recorded, so a run killed at any moment and resumed writes exactly what an
uninterrupted run writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from cycleqd.config import ConfigError, RunConfig, validate_config
from cycleqd.weights._io import atomic_write_json, atomic_write_text
from cycleqd.weights.genome import Genome

__all__ = ["RunStore", "LOGS"]

LOGS = ("events.jsonl", "metrics.jsonl")


class RunStore:
    """Reads and writes one run folder. Use :meth:`create` or :meth:`open`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def create(cls, root: str | Path, config: RunConfig) -> RunStore:
        """A new run folder holding ``config``.

        Raises:
            ConfigError: the folder exists and is not empty (a second run never overwrites a
                first): resume it or choose another folder.
        """
        root = Path(root)
        if root.exists() and any(root.iterdir()):
            raise ConfigError(
                f"run folder {root} already exists; pass --resume to continue "
                "that run, or --run-dir to start a new one elsewhere"
            )
        root.mkdir(parents=True, exist_ok=True)
        store = cls(root)
        atomic_write_text(
            root / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
        )
        return store

    @classmethod
    def open(cls, root: str | Path) -> RunStore:
        """An existing run folder.

        Raises:
            ConfigError: the folder is not a cycleqd run.
        """
        root = Path(root)
        if not (root / "config.yaml").is_file():
            raise ConfigError(
                f"{root} is not a cycleqd run folder (no config.yaml); give the "
                "folder that `cycleqd evolve` created"
            )
        return cls(root)

    def config(self) -> RunConfig:
        """The run's resolved config."""
        return validate_config(
            yaml.safe_load((self.root / "config.yaml").read_text()), str(self.root / "config.yaml")
        )

    # --- checkpoint and logs ---------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint, or ``None`` before the first one."""
        path = self.root / "checkpoint.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def write_checkpoint(self, state: dict[str, Any]) -> None:
        """Flush the logs, record their sizes in ``state``, and write it atomically."""
        state = dict(state)
        state["log_sizes"] = {name: self._size(name) for name in LOGS}
        atomic_write_json(self.root / "checkpoint.json", state)

    def _size(self, name: str) -> int:
        path = self.root / name
        return path.stat().st_size if path.exists() else 0

    def remove_temp_files(self) -> list[Path]:
        """Remove the temp files of atomic writes a killed run left (``.<name>.*.tmp``).

        Only for the run's own process, on resume: a live run's writes are in flight.
        """
        left = [p for p in self.root.rglob(".*.tmp") if p.is_file()]
        for path in left:
            path.unlink(missing_ok=True)
        return left

    def rewind_logs(self, sizes: dict[str, int]) -> None:
        """Cut the logs back to a checkpoint's sizes (drops lines written after it)."""
        for name in LOGS:
            path = self.root / name
            if path.exists():
                with open(path, "r+b") as fh:
                    fh.truncate(sizes.get(name, 0))

    def append(self, name: str, record: dict[str, Any]) -> None:
        """Append one JSON line to a log (flushed and fsynced)."""
        with open(self.root / name, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_log(self, name: str) -> list[dict[str, Any]]:
        """Every record of a log."""
        path = self.root / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # --- genomes and results ---------------------------------------------------------------

    def genome_path(self, genome_id: str) -> Path:
        """Where genome ``genome_id`` is stored."""
        return self.root / "genomes" / f"{genome_id}.genome"

    def save_genome(self, genome: Genome) -> Path:
        """Store ``genome`` (content-addressed: an existing file is the same genome)."""
        path = self.genome_path(genome.id)
        if not path.exists():
            genome.save(path)
        return path

    def load_genome(self, genome_id: str) -> Genome:
        """A stored genome."""
        return Genome.load(self.genome_path(genome_id))

    def write_final(self, final: Genome, info: dict[str, Any], summary: dict[str, Any]) -> None:
        """The final model (``final.genome``, also in ``genomes/``), ``final.json``, the report."""
        self.save_genome(final)
        final.save(self.root / "final.genome")
        info["final_genome"] = final.id
        self.write_json("final.json", info)
        self.write_json("summary.json", summary)

    def write_json(self, name: str, data: Any) -> None:
        """Write ``name`` atomically."""
        atomic_write_json(self.root / name, data)

    def read_json(self, name: str) -> Any:
        """Read ``name``, or ``None`` if it is not there."""
        path = self.root / name
        return json.loads(path.read_text()) if path.is_file() else None
