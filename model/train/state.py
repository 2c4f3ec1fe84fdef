"""Training checkpoints: one `TrainState` (weights, optimizer, scheduler, step, every rank's
loader and RNG state), written atomically and read back strictly.

Layout: `OUT/checkpoints/step-NNNNNNNN/` holds the model checkpoint of `model.checkpoint` (so
`m3w generate --checkpoint` reads it) plus `trainer_state.pt`; `OUT/checkpoints/latest` names
the newest. A checkpoint is written to a temporary directory, fsynced and renamed, and only then
does `latest` move (written, fsynced, renamed, the directory fsynced): a crash at any point leaves
the previous checkpoint as `latest`.

Resuming requires every piece and the same model, data and world size; anything missing or
different is a `CheckpointError` that names it. The optimizer settings (lr, weight_decay, betas,
eps, and the schedule) are the config's, not the checkpoint's (`step.apply_optim_config`).
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model

from model.checkpoint import BUILTIN_LM, BUILTIN_VISION, TRAINABLE, CheckpointError, load_trainable_state, read_manifest, save_checkpoint
from model.flamingo import Flamingo
from model.tokenizer import FlamingoTokenizer
from model.train.config import TrainConfig
from model.train.mixing import random_state
from model.train.step import apply_optim_config

TRAINER_STATE = "trainer_state.pt"
STATE_FORMAT, STATE_VERSION = "m3w-train", 2  # 2: loader state by worker and reader (model/train/data.py)
REQUIRED_STATE = ("format", "version", "step", "optimizer", "scheduler", "loader", "rng", "config", "world_size")


@dataclass
class TrainState:
    """Everything a run continues from. `loader` and `rng` hold one entry per rank (rank 0 writes
    the checkpoint for all): the mixer's state with its loaders' (`Mixer.state_dict`) and the
    torch and Python RNG states (`rng_state`)."""

    model: Flamingo
    tokenizer: FlamingoTokenizer
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int = 0
    loader: list[dict[str, Any]] = field(default_factory=list)
    rng: list[dict[str, Any]] = field(default_factory=list)

    def save(self, root: Path, cfg: TrainConfig, keep: int) -> Path:
        """Write `root/step-NNNNNNNN` atomically, point `latest` at it, keep the newest `keep`."""
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(root)
        final = root / checkpoint_name(self.step)
        tmp = root / f".{final.name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        save_checkpoint(self.model, self.tokenizer, tmp, extra={"step": self.step, "trainer_state": TRAINER_STATE})
        torch.save({
            "format": STATE_FORMAT, "version": STATE_VERSION, "step": self.step,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "loader": self.loader, "rng": self.rng, "config": cfg.to_dict(), "world_size": len(self.loader),
        }, tmp / TRAINER_STATE)
        _fsync_tree(tmp)
        if final.exists():  # re-running a step (e.g. after a crash before `latest` moved): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = root / ".latest.tmp"
        with open(pointer, "w", encoding="utf-8") as f:
            f.write(final.name)
            f.flush()
            os.fsync(f.fileno())
        os.replace(pointer, root / "latest")
        _fsync_dir(root)
        old = sorted(p for p in root.glob("step-*") if p.is_dir() and p != final)
        for p in old[: max(0, len(old) - (keep - 1))] if keep > 0 else []:
            shutil.rmtree(p, ignore_errors=True)
        return final

    def load(self, path: Path, cfg: TrainConfig, world_size: int) -> dict[str, tuple[Any, Any]]:
        """Restore everything from checkpoint `path` (strict). The optimizer settings are then
        the config's; returns what differed from the checkpoint, {key: (checkpoint, config)}."""
        if not (path / TRAINER_STATE).is_file():
            raise CheckpointError(f"{path}: no {TRAINER_STATE}: a model checkpoint, not a training checkpoint")
        read_manifest(path)
        builtin = {BUILTIN_LM: cfg.model.lm_path is None, BUILTIN_VISION: cfg.model.vision_path is None}
        missing_files = [name for name, needed in ((TRAINABLE, True), *builtin.items()) if needed and not (path / name).is_file()]
        if missing_files:
            raise CheckpointError(f"{path}: missing {missing_files}")
        state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)
        missing = [k for k in REQUIRED_STATE if k not in state]
        if missing:
            raise CheckpointError(f"{path / TRAINER_STATE}: missing {missing}")
        if (state["format"], state["version"]) != (STATE_FORMAT, STATE_VERSION):
            raise CheckpointError(f"{path}: trainer state {state['format']} v{state['version']} not supported")
        problems = _incompatibilities(state["config"], cfg, world_size, int(state["world_size"]))
        if problems:
            raise CheckpointError(f"cannot resume from {path}: " + "; ".join(problems))
        for module, name in ((self.model.lm, BUILTIN_LM), (self.model.vision, BUILTIN_VISION)):
            if builtin[name]:  # the frozen built-in backbones as they were trained with, from the checkpoint itself
                load_model(module, str(path / name), strict=True)
        load_trainable_state(self.model, load_file(str(path / TRAINABLE)))
        for key in ("state", "param_groups"):
            if key not in state["optimizer"]:
                raise CheckpointError(f"{path}: optimizer state without {key!r}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if len(state["loader"]) != world_size or len(state["rng"]) != world_size:
            raise CheckpointError(f"{path}: loader/rng state for {len(state['loader'])} ranks, running {world_size}")
        self.step, self.loader, self.rng = int(state["step"]), state["loader"], state["rng"]
        return apply_optim_config(self.model, self.optimizer, self.scheduler, cfg.optim)


def rng_state() -> dict[str, Any]:
    """This process's torch (CPU) and Python RNG states."""
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(random_state(state["python"]))


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint `root/latest` names; None when there is none yet."""
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not path.is_dir():
        raise CheckpointError(f"{pointer} names {path.name}, which does not exist")
    return path


def _incompatibilities(saved: dict[str, Any], cfg: TrainConfig, world_size: int, state_world: int) -> list[str]:
    current = cfg.to_dict()
    problems = [f"{section} differs: checkpoint {saved.get(section)} vs config {current[section]}"
                for section in ("model", "data") if saved.get(section) != current[section]]
    for key in ("lm_weights", "vision_weights"):
        if saved.get("run", {}).get(key) != getattr(cfg.run, key):
            problems.append(f"run.{key} differs: {saved.get('run', {}).get(key)} vs {getattr(cfg.run, key)}")
    if state_world != world_size:
        problems.append(f"world size differs: checkpoint {state_world} vs now {world_size}")
    return problems


def _fsync_dir(path: Path) -> None:
    """Make the directory's entries (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for f in sorted(path.iterdir()):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def _remove_stale_temporaries(root: Path) -> None:
    """Delete `.step-*.tmp-PID` directories of writers that crashed mid-checkpoint (another pid:
    only this process writes checkpoints of this run now)."""
    mine = f".tmp-{os.getpid()}"
    for p in root.glob(".step-*.tmp-*"):
        if p.is_dir() and not p.name.endswith(mine):
            shutil.rmtree(p, ignore_errors=True)
