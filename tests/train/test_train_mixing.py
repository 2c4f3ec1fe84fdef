"""Mixing (model/train/mixing.py) and the accumulate step (model/train/step.py): gradients, clipping, sampling."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from test_data_shards import TINY_MODEL, tiny_corpus

from model.config import FlamingoConfig
from model.factory import build_flamingo
from model.train.config import SourceConfig
from model.train.data import SourceLoader
from model.train.mixing import Mixer, StepPlan
from model.train.samples import ImageSpec
from model.train.step import Runtime, accumulate_gradients, forward_loss_sum, optimizer_step


def _setup(tmp_path, weights, accum=None):
    corpus = tiny_corpus(tmp_path)
    model, tok = build_flamingo(FlamingoConfig.from_dict(TINY_MODEL))
    spec = ImageSpec.for_encoder(model.vision)
    cfgs = [SourceConfig(name="m3w", kind="m3w", urls=[corpus["m3w"]], batch_size=3, max_tokens=40,
                         accum_steps=(accum or {}).get("m3w", 1)),
            SourceConfig(name="align", kind="pairs", urls=[corpus["pairs"]], batch_size=4,
                         accum_steps=(accum or {}).get("align", 1)),
            SourceConfig(name="vtp", kind="video", urls=[corpus["video"]], batch_size=2, max_frames=2)]
    loaders = {c.name: SourceLoader(c, tok, spec, seed=0) for c in cfgs}
    return model, loaders


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _open_gates(model):
    """Non-zero gates, so every trainable parameter has a gradient (at 0 only the gates would)."""
    with torch.no_grad():
        for block in model.gated_xattn:
            block.attn_gate.fill_(0.5)
            block.ff_gate.fill_(-0.3)


def test_accumulate_applies_the_weighted_sum_of_per_source_gradients(tmp_path):
    weights = {"m3w": 1.0, "align": 0.2, "vtp": 0.03}
    model, loaders = _setup(tmp_path, weights, accum={"align": 2})
    _open_gates(model)
    plan = Mixer(loaders, weights, "accumulate", seed=0).next_step()
    assert [(n, w, len(b)) for n, w, b in plan.parts] == [("m3w", 1.0, 1), ("align", 0.2, 2), ("vtp", 0.03, 1)]
    stats = accumulate_gradients(model, plan, Runtime())
    applied = _grads(model)

    expected = {n: torch.zeros_like(g) for n, g in applied.items()}
    for name, weight, batches in plan.parts:  # each source alone: its mean loss over all its micro-batches
        model.zero_grad(set_to_none=True)
        total = sum(forward_loss_sum(model, b, Runtime()) for b in batches)
        n_targets = sum(b.stats["targets"] for b in batches)
        (total / n_targets).backward()
        for n, p in model.named_parameters():
            if p.requires_grad and p.grad is not None:
                expected[n] += weight * p.grad
        assert abs(stats["per_source"][name] - float(total.detach() / n_targets)) < 1e-5
    for n in applied:
        torch.testing.assert_close(applied[n], expected[n], rtol=1e-5, atol=1e-7, msg=n)
    assert abs(stats["loss"] - sum(w * stats["per_source"][n] for n, w, _ in plan.parts)) < 1e-9

    # clipping acts on the complete accumulated gradient, once
    class Recorder(torch.optim.SGD):
        def step(self, closure=None):
            self.seen = [p.grad.clone() for g in self.param_groups for p in g["params"]]

    model.zero_grad(set_to_none=True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for n, p in model.named_parameters():
        if p.requires_grad:
            p.grad = applied[n].clone()
    norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in applied.values()])))
    recorder = Recorder([p for p in model.parameters() if p.requires_grad], lr=1.0)
    assert abs(optimizer_step(model, recorder, grad_clip=0.01) - norm) < 1e-4 * norm
    for n, g in zip(names, recorder.seen):
        torch.testing.assert_close(g, applied[n] * (0.01 / norm), rtol=1e-4, atol=1e-9)
    assert all(p.grad is None for p in model.parameters())  # cleared for the next step


@pytest.mark.parametrize("normalisation, count", [("per_token", "targets"), ("per_sequence", "sequences")])
def test_each_source_s_share_of_the_gradient_follows_the_loss_normalisation(tmp_path, normalisation, count):
    """per_token: w_s x (summed loss / target tokens of s); per_sequence (Flamingo's Eq. 2): w_s x (summed
    loss / sequences of s). An M3W sequence here holds ~2.6x the targets of a pair's: the two
    normalisations give the sources clearly different shares."""
    weights = {"m3w": 1.0, "align": 0.2}
    model, loaders = _setup(tmp_path, weights, accum={"align": 2})
    _open_gates(model)
    plan = Mixer({n: loaders[n] for n in weights}, weights, "accumulate", seed=0).next_step()
    per_source = {}  # each source alone: the gradient of its summed loss, and its counts
    for name, _, batches in plan.parts:
        model.zero_grad(set_to_none=True)
        total = sum(forward_loss_sum(model, b, Runtime()) for b in batches)
        total.backward()
        per_source[name] = ({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                            sum(b.stats[count] for b in batches), float(total.detach()) / sum(b.stats["targets"] for b in batches))
    model.zero_grad(set_to_none=True)
    stats = accumulate_gradients(model, plan, Runtime(), normalisation)
    applied = _grads(model)
    shares = {name: weights[name] / n for name, (_, n, _) in per_source.items()}
    for n in applied:
        expected = sum(shares[name] * g[n] for name, (g, _, _) in per_source.items() if n in g)
        torch.testing.assert_close(applied[n], expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()), msg=n)
    # the logged losses are per target token whatever the normalisation
    assert stats["per_source"] == pytest.approx({name: mean for name, (_, _, mean) in per_source.items()}, rel=1e-5)
    targets = {name: sum(b.stats["targets"] for b in batches) for name, _, batches in plan.parts}
    sequences = {name: sum(b.stats["sequences"] for b in batches) for name, _, batches in plan.parts}
    assert sequences == {"m3w": 3, "align": 8}
    assert targets["m3w"] / sequences["m3w"] > 2 * targets["align"] / sequences["align"]


def test_text_only_micro_batches_give_explicit_zero_gradients(tmp_path):
    """Parameters a step does not touch get a zero gradient (same on every rank, same AdamW behaviour)."""
    model, loaders = _setup(tmp_path, {"m3w": 1.0})
    batch = next(loaders["m3w"])
    text_only = batch.__class__(**{**batch.__dict__, "media": None,
                                   "input_ids": batch.input_ids.masked_fill(batch.input_ids == 256, 32),
                                   "media_batch_idx": batch.media_batch_idx[:0]})
    accumulate_gradients(model, StepPlan([("m3w", 1.0, [text_only])]), Runtime())
    grads = _grads(model)
    assert all(float(g.abs().sum()) == 0 for n, g in grads.items() if n.startswith("resampler."))


class Fake:
    """A loader whose batches are its name."""

    def __init__(self, name):
        self.name, self.cfg = name, SourceConfig(name=name, kind="pairs", urls=["x"])

    def __next__(self):
        return self.name

    def state_dict(self):
        return {}

    def close(self):
        pass


def test_sample_mode_draws_by_weight_and_resumes_the_same_draws(tmp_path):
    loaders = {"a": Fake("a"), "b": Fake("b"), "c": Fake("c")}
    mixer = Mixer(loaders, {"a": 3.0, "b": 1.0, "c": 0.0}, "sample", seed=5)
    draws = [mixer.next_step().parts[0] for _ in range(2000)]
    counts = Counter(name for name, _, _ in draws)
    assert counts["c"] == 0 and 0.70 < counts["a"] / 2000 < 0.80
    assert all(weight == 1.0 and batches == [name] for name, weight, batches in draws)
    state = mixer.state_dict()
    ahead = [mixer.next_step().parts[0][0] for _ in range(50)]
    resumed = Mixer(loaders, {"a": 3.0, "b": 1.0, "c": 0.0}, "sample", seed=5, state=state)
    assert [resumed.next_step().parts[0][0] for _ in range(50)] == ahead
    again = Mixer(loaders, {"a": 3.0, "b": 1.0, "c": 0.0}, "sample", seed=5)
    assert [again.next_step().parts[0][0] for _ in range(2000)] == [n for n, _, _ in draws]


@pytest.mark.parametrize("mode", ["accumulate", "sample"])
def test_all_zero_weights_are_an_error_naming_the_sources(mode):
    loaders = {"m3w": Fake("m3w"), "align": Fake("align")}
    with pytest.raises(ValueError, match=r"every source has weight 0 \(m3w, align\)"):
        Mixer(loaders, {"m3w": 0.0, "align": 0.0}, mode, seed=0)
    assert Mixer(loaders, {"m3w": 0.0, "align": 0.2}, mode, seed=0).next_step().parts[0][0] == "align"


def test_the_trainer_uses_the_configured_normalisation(tmp_path):
    """data.loss_normalisation reaches the step: the same first step, per sequence, has a gradient
    about tokens-per-sequence times larger (every sequence here holds several targets)."""
    from test_data_shards import tiny_train_dict

    from model.train.config import TrainConfig
    from model.train.loop import train

    corpus = tiny_corpus(tmp_path / "data")
    norms = {}
    for normalisation in ("per_token", "per_sequence"):
        data = tiny_train_dict(tmp_path / normalisation, corpus, steps=1)
        data["eval"]["sets"] = []
        data["data"]["loss_normalisation"] = normalisation
        result = train(TrainConfig.from_dict(data))
        records = [json.loads(line) for line in (tmp_path / normalisation / "metrics.jsonl").read_text().splitlines()]
        norms[normalisation] = (records[0]["grad_norm"], result.losses)
    assert norms["per_sequence"][0] > 5 * norms["per_token"][0]
    assert norms["per_sequence"][1] == norms["per_token"][1]  # the logged loss is per token either way
