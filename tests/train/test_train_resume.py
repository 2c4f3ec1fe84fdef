"""Checkpoints and resume (model/train/state.py, loop.py): bit-exact continuation in a new process, strictness, atomicity."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_data_shards import TINY_MODEL, tiny_corpus, tiny_train_dict

from model.checkpoint import CheckpointError, load_checkpoint
from model.config import FlamingoConfig
from model.factory import build_flamingo
from model.train.config import TrainConfig, dump_toml
from model.train.loop import train
from model.train.state import TRAINER_STATE, TrainState, latest_checkpoint
from model.train.step import build_optimizer, lr_lambda

ROOT = Path(__file__).resolve().parents[2]


def _m3w_train(config: Path, *overrides: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = [sys.executable, "-m", "m3w", "train", "--config", str(config)]
    for item in overrides:
        args += ["--set", item]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "loss" in r and "eval" not in r]


@pytest.mark.parametrize("mode, workers", [("accumulate", 2), pytest.param("sample", 1, marks=pytest.mark.slow)])
def test_resume_in_a_new_process_continues_bit_for_bit(tmp_path, mode, workers):
    corpus = tiny_corpus(tmp_path / "data")
    n = 3
    data = tiny_train_dict(tmp_path / "unused", corpus, steps=2 * n, checkpoint_every=n)
    data["data"].update(mode=mode, num_workers=workers)
    config = tmp_path / "train.toml"
    config.write_text(dump_toml(data))

    _m3w_train(config, f'run.out_dir="{tmp_path / "straight"}"')
    _m3w_train(config, f'run.out_dir="{tmp_path / "split"}"', f"run.stop_at={n}")
    assert (tmp_path / "split" / "checkpoints" / "latest").read_text() == f"step-{n:08d}"
    _m3w_train(config, f'run.out_dir="{tmp_path / "split"}"', 'run.resume="must"')

    straight, split = _losses(tmp_path / "straight"), _losses(tmp_path / "split")
    assert [s for s, _ in straight] == list(range(1, 2 * n + 1))
    assert split == straight  # floats from JSON: equal means bit for bit
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / f"step-{2 * n:08d}")[0]
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / f"step-{2 * n:08d}")[0]
    for (name, p), q in zip(a.trainable_parameters().items(), b.trainable_parameters().values()):
        assert torch.equal(p, q), name


def test_checkpoints_are_atomic_pruned_and_resume_is_strict(tmp_path):
    corpus = tiny_corpus(tmp_path / "data")
    data = tiny_train_dict(tmp_path / "run", corpus, steps=3, checkpoint_every=1, keep_checkpoints=2)
    data["eval"]["sets"] = []
    result = train(TrainConfig.from_dict(data))
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000002", "step-00000003"]  # no temporaries
    assert result.checkpoint == root / "step-00000003"
    model, _ = load_checkpoint(result.checkpoint)  # also a plain model checkpoint (m3w generate)
    assert model.trainable_parameters()

    def resume(**changes):
        d = json.loads(json.dumps(data))
        for path, value in changes.items():
            node = d
            *parents, last = path.split("__")
            for part in parents:
                node = node[int(part)] if part.isdigit() else node[part]
            node[last] = value
        return train(TrainConfig.from_dict(d))

    done = resume(run__steps=3)  # nothing left to do: loads and stops
    assert done.step == 3 and done.losses == []
    with pytest.raises(CheckpointError, match="data differs"):
        resume(run__steps=5, data__sources__0__batch_size=2)
    with pytest.raises(CheckpointError, match="model differs"):
        resume(run__steps=5, model__resampler__n_latents=8)
    state = torch.load(root / "step-00000003" / TRAINER_STATE, weights_only=True)
    del state["optimizer"]
    torch.save(state, root / "step-00000003" / TRAINER_STATE)
    with pytest.raises(CheckpointError, match=r"missing \['optimizer'\]"):
        resume(run__steps=5)
    (root / "step-00000003" / TRAINER_STATE).unlink()
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        resume(run__steps=5)
    (root / "step-00000002" / "trainable.safetensors").unlink()
    with pytest.raises(CheckpointError):
        resume(run__steps=5, run__resume=str(root / "step-00000002"))
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        resume(run__out_dir=str(tmp_path / "empty"), run__resume="must")


def test_resume_takes_the_optimizer_settings_from_the_config(tmp_path, capsys):
    """The checkpoint's lr, weight decay, betas and eps do not silently win over a changed config."""
    corpus = tiny_corpus(tmp_path / "data")
    data = tiny_train_dict(tmp_path / "run", corpus, steps=4, stop_at=2)  # lr 3e-3
    data["eval"]["sets"] = []
    train(TrainConfig.from_dict(data))
    capsys.readouterr()
    data["run"]["stop_at"] = 3
    data["optim"].update(lr=1e-3, weight_decay=0.05, betas=[0.8, 0.95], eps=1e-6)
    cfg = TrainConfig.from_dict(data)
    train(cfg)

    lines = [line for line in capsys.readouterr().err.splitlines() if "optimizer settings from the config" in line]
    assert lines == ["m3w train: optimizer settings from the config, not the checkpoint: lr 0.003 -> 0.001, "
                     "weight_decay 0.1 -> 0.05, betas (0.9, 0.999) -> (0.8, 0.95), eps 1e-08 -> 1e-06"]
    f = lr_lambda(cfg.optim, cfg.run.steps)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records] == [3e-3 * f(0), 3e-3 * f(1), 1e-3 * f(2)]  # step 3 ran with the new lr
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-00000003" / TRAINER_STATE, weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert [(g["initial_lr"], g["lr"], g["weight_decay"], tuple(g["betas"]), g["eps"]) for g in groups] == [
        (1e-3, 1e-3 * f(3), 0.05, (0.8, 0.95), 1e-6), (1e-3, 1e-3 * f(3), 0.0, (0.8, 0.95), 1e-6)]
    assert state["scheduler"]["base_lrs"] == [1e-3, 1e-3]


def test_resume_with_the_same_config_restores_the_optimizer_exactly(tmp_path, capsys):
    corpus = tiny_corpus(tmp_path / "data")
    data = tiny_train_dict(tmp_path / "run", corpus, steps=2)
    data["eval"]["sets"] = []
    cfg = TrainConfig.from_dict(data)
    saved = torch.load(train(cfg).checkpoint / TRAINER_STATE, weights_only=True)

    model, tok = build_flamingo(cfg.model)
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.run.steps)
    path = latest_checkpoint(tmp_path / "run" / "checkpoints")
    state = TrainState(model, tok, optimizer, scheduler)
    assert state.load(path, cfg, world_size=1) == {}  # no optimizer setting differs
    assert state.step == 2
    loaded = optimizer.state_dict()
    assert loaded["param_groups"] == saved["optimizer"]["param_groups"]  # lr, initial_lr, betas, ...: exact floats
    assert loaded["state"].keys() == saved["optimizer"]["state"].keys()
    for i, tensors in saved["optimizer"]["state"].items():
        assert all(torch.equal(loaded["state"][i][k], v) for k, v in tensors.items()), i
    assert scheduler.state_dict() == saved["scheduler"]
    assert "optimizer settings" not in capsys.readouterr().err


def test_checkpoint_write_removes_stale_temporaries_and_makes_the_pointer_durable(tmp_path, monkeypatch):
    unused = {k: "unused.tar" for k in ("m3w", "pairs", "video", "heldout")}
    cfg = TrainConfig.from_dict(tiny_train_dict(tmp_path / "run", unused, steps=2))
    model, tok = build_flamingo(FlamingoConfig.from_dict(TINY_MODEL))
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.run.steps)
    root = tmp_path / "checkpoints"
    crashed = root / ".step-00000001.tmp-999999999"  # a writer that died mid-checkpoint
    (crashed / "half").mkdir(parents=True)
    (crashed / "half" / "trainable.safetensors").write_bytes(b"partial")
    mine = root / f".step-00000001.tmp-{os.getpid()}"
    mine.mkdir()
    (root / ".notes").mkdir()

    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), replace(a, b)))
    final = TrainState(model, tok, optimizer, scheduler, step=2, loader=[{}], rng=[{}]).save(root, cfg, keep=2)

    assert not crashed.exists() and mine.is_dir() and (root / ".notes").is_dir()  # only other pids' temporaries
    assert (root / "latest").read_text() == final.name
    latest = events.index(("replace", str(root / "latest")))
    assert ("fsync", str(root / ".latest.tmp")) in events[:latest]  # the pointer's content, before the rename
    assert ("fsync", str(root.resolve())) in events[latest + 1:]  # the rename itself


def test_resume_after_a_crash_logs_every_step_once(tmp_path, capsys):
    """Issue 11: a run killed after logging steps past its last checkpoint, then resumed: metrics.jsonl
    holds every step once, with the values of a run that never stopped."""
    corpus = tiny_corpus(tmp_path / "data")
    straight = tiny_train_dict(tmp_path / "straight", corpus, steps=6, checkpoint_every=3)  # log every step, eval every 2
    train(TrainConfig.from_dict(straight))
    data = tiny_train_dict(tmp_path / "run", corpus, steps=6, checkpoint_every=3, stop_at=5)
    train(TrainConfig.from_dict(data))
    root = tmp_path / "run" / "checkpoints"
    # the crash: steps 4 and 5 (and evaluations at 4 and 5) logged, the checkpoint at 5 never written,
    # and the last line torn mid-write
    shutil.rmtree(root / "step-00000005")
    (root / "latest").write_text("step-00000003")
    metrics = tmp_path / "run" / "metrics.jsonl"
    with open(metrics, "a", encoding="utf-8") as f:
        f.write('{"step": 6, "loss": 5.9')
    capsys.readouterr()
    del data["run"]["stop_at"]
    train(TrainConfig.from_dict(data))

    err = capsys.readouterr().err
    assert "dropped 5 lines of steps after 3" in err, err  # steps 4 and 5, evaluations at 4 and 5, the torn line
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records if "eval" not in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "eval" in r] == [2, 4, 6]
    assert _losses(tmp_path / "run") == _losses(tmp_path / "straight")  # and the values of the run that never stopped
