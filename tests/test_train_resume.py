"""Checkpoints and resume (model/train.py): bit-exact continuation in a new process, strictness, atomicity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.checkpoint import CheckpointError, load_checkpoint
from model.train import TRAINER_STATE, train
from model.train_config import TrainConfig, dump_toml
from test_data_shards import tiny_corpus, tiny_train_dict

ROOT = Path(__file__).resolve().parents[1]


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
