"""What a run reports: `OUT/metrics.jsonl` (rank 0, one JSON object per log step and per
evaluation) and one terminal line for each.

A log record: loss and loss per source, lr, grad norm, tokens/s and images/s, padding fraction,
seconds the steps waited for data (`data_s`, and `wait_s` per source), skipped samples and shards
per source, tanh(gate) per layer (attention and feed-forward). With N ranks, tokens, media,
frames, padding and skipped counts are summed over the ranks (one small all-reduce per log line;
ranks see different sequences), losses are over all ranks' targets, and times are rank 0's.

An evaluation record: per held-out set the loss, the loss with the visual input zeroed, and the
blind gap (their difference, nats per text token, and summed per image: how many nats of the text
each image explains). A held-out set's `batches` is per rank: N ranks evaluate on up to
N x `batches` batches, each rank on its share of the set.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from model.flamingo import Flamingo
from model.train.config import SourceConfig
from model.train.data import COUNTERS, SourceLoader
from model.train.mixing import StepPlan
from model.train.samples import Batch
from model.train.step import Runtime, forward_loss_sum

SUMMED_STATS = ("tokens", "pad", "media", "frames")  # per source, summed over ranks at log time


class MetricsLog:
    """metrics.jsonl (rank 0) + one terminal line per record under the progress bar.

    Every step's records appear once: a run that starts at step k (0, or the checkpoint it resumes
    from) first drops the records of later steps, which a run that died after its last checkpoint
    had already written, and a last line torn by the crash (`start_at`)."""

    def __init__(self, path: Path, enabled: bool, bar: Any) -> None:
        self.path, self.enabled, self.bar = path, enabled, bar
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def start_at(self, step: int) -> int:
        """Keep only the records of steps <= `step` (rewritten atomically); returns how many lines went."""
        if not self.enabled or not self.path.is_file():
            return 0
        kept: list[str] = []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for line in lines:
            try:
                record_step = json.loads(line)["step"]
            except (ValueError, KeyError, TypeError):
                continue  # torn by a crash mid-write
            if isinstance(record_step, int) and record_step <= step:
                kept.append(line + "\n")
        if len(kept) < len(lines):
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(kept), encoding="utf-8")
            os.replace(tmp, self.path)
        return len(lines) - len(kept)

    def write(self, record: dict[str, Any], line: str | None = None) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if line:
            (self.bar.write if self.bar is not None else print)(line, file=sys.stderr)


def gate_values(model: Flamingo) -> dict[str, list[float]]:
    """tanh of every gated cross-attention block's gates: 0 ignores the images."""
    return {"attn": [round(float(torch.tanh(b.attn_gate.detach()).item()), 5) for b in model.gated_xattn],
            "ff": [round(float(torch.tanh(b.ff_gate.detach()).item()), 5) for b in model.gated_xattn]}


@torch.no_grad()
def evaluate(model: Flamingo, batches: list[Batch], rt: Runtime, blind_gap: bool = True) -> dict[str, float]:
    """Held-out loss per text token, and with the visual input zeroed (blind gap = blind - normal,
    per text token and summed per image: how many nats of the text each image explains)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=rt.device)  # loss, blind loss, targets, media
    for batch in batches:
        sums[0] += forward_loss_sum(model, batch, rt).double()
        if blind_gap:
            sums[1] += forward_loss_sum(model, batch, rt, blind=True).double()
        sums[2] += batch.stats["targets"]
        sums[3] += batch.stats["media"]
    if rt.distributed:
        dist.all_reduce(sums)
    model.train(was_training)
    n = max(1.0, float(sums[2]))
    out = {"loss": float(sums[0]) / n, "targets": int(sums[2]), "media": int(sums[3])}
    if blind_gap:
        out["blind_loss"] = float(sums[1]) / n
        out["blind_gap"] = out["blind_loss"] - out["loss"]  # nats per text token
        out["blind_gap_per_image"] = float(sums[1] - sums[0]) / max(1.0, float(sums[3]))  # nats per image
    return out


def sum_over_ranks(counts: dict[str, dict[str, float]], rt: Runtime) -> dict[str, dict[str, float]]:
    """Element-wise sum of {group: {key: count}} over ranks: one float64 all-reduce (exact for
    integer counts below 2**53); the same groups and keys, in the same order, on every rank.
    Single process: `counts` itself."""
    if not rt.distributed:
        return counts
    flat = torch.tensor([v for group in counts.values() for v in group.values()], dtype=torch.float64,
                        device=rt.device)
    dist.all_reduce(flat)
    values = iter(flat.tolist())
    return {name: {key: next(values) for key in group} for name, group in counts.items()}


def loader_counters(loader: SourceLoader) -> dict[str, float]:
    """The loader's counters (since the run began), keyed by data.COUNTERS: the same keys on every rank."""
    counters = loader.counters()
    return {k: float(counters.get(k, 0)) for k in COUNTERS}


class Window:
    """Sums between two log lines (this rank's; `record` sums the counts over ranks).

    Times are this rank's (rank 0 logs): `data_s` is the time the steps waited for their batches
    from all loaders (`Mixer.next_step`), per-source `wait_s` the same split by source."""

    def __init__(self, sources: list[SourceConfig]) -> None:
        self.steps, self.seconds, self.data_s = 0, 0.0, 0.0
        self.loss = 0.0
        self.src: dict[str, dict[str, float]] = {
            s.name: dict.fromkeys(("loss", "steps", "tokens", "pad", "media", "frames", "sequences"), 0.0)
            for s in sources}

    def add(self, plan: StepPlan, out: dict[str, Any], seconds: float, data_s: float) -> None:
        self.steps += 1
        self.seconds += seconds
        self.data_s += data_s
        self.loss += out["loss"]
        for name, _, batches in plan.parts:
            s = self.src[name]
            s["loss"] += out["per_source"][name]
            s["steps"] += 1
            for b in batches:
                for k in ("tokens", "pad", "media", "frames", "sequences"):
                    s[k] += b.stats[k]

    def record(self, step: int, lr: float, grad_norm: float, gates: dict[str, list[float]],
               loaders: dict[str, SourceLoader], rt: Runtime) -> dict[str, Any]:
        """The log record; distributed, a collective (every rank calls it at the same steps)."""
        local = {name: {**{k: s[k] for k in SUMMED_STATS},
                        **{f"skipped.{k}": v for k, v in loader_counters(loaders[name]).items()}}
                 for name, s in self.src.items()}
        total = sum_over_ranks(local, rt)  # ranks see different sequences, so different counts
        tokens = sum(total[name]["tokens"] for name in self.src)
        frames = sum(total[name]["frames"] for name in self.src)
        rec: dict[str, Any] = {
            "step": step, "loss": self.loss / max(1, self.steps), "lr": lr, "grad_norm": grad_norm,
            "tokens_per_s": tokens / max(1e-9, self.seconds), "images_per_s": frames / max(1e-9, self.seconds),
            "step_s": self.seconds / max(1, self.steps), "data_s": round(self.data_s, 4), "gates": gates,
            "sources": {},
        }
        for name, s in self.src.items():
            t, loader = total[name], loaders[name]
            rec["sources"][name] = {
                "loss": s["loss"] / s["steps"] if s["steps"] else None, "steps": int(s["steps"]),
                "tokens": int(t["tokens"]), "media": int(t["media"]), "frames": int(t["frames"]),
                "pad_frac": t["pad"] / max(1.0, t["pad"] + t["tokens"]),
                "wait_s": round(loader.wait_s, 4),
                "skipped": {k.removeprefix("skipped."): int(v) for k, v in t.items() if k.startswith("skipped.")},
            }
            loader.wait_s = 0.0
        return rec


def log_line(r: dict[str, Any]) -> str:
    """The terminal line of a log record."""
    per = " ".join(f"{n} {s['loss']:.3f}" for n, s in r["sources"].items() if s["loss"] is not None)
    skipped = sum(s["skipped"]["corrupt_samples"] + s["skipped"]["corrupt_shards"] for s in r["sources"].values())
    return (f"step {r['step']:6d} | loss {r['loss']:.4f} ({per}) | lr {r['lr']:.2e} | "
            f"{r['tokens_per_s']:.0f} tok/s {r['images_per_s']:.1f} img/s | wait {r['data_s']:.2f}s | "
            f"tanh(attn gate) {_fmt_gates(r['gates']['attn'])}" + (f" | skipped {skipped}" if skipped else ""))


def eval_line(r: dict[str, Any]) -> str:
    """The terminal line of an evaluation record."""
    parts = []
    for name, e in r["eval"].items():
        gap = (f", blind {e['blind_loss']:.4f}, blind gap {e['blind_gap']:+.4f}/token "
               f"{e['blind_gap_per_image']:+.2f}/image") if "blind_gap" in e else ""
        parts.append(f"{name}: loss {e['loss']:.4f}{gap}")
    return f"eval step {r['step']:6d} | " + " | ".join(parts)


def _fmt_gates(g: list[float]) -> str:
    return " ".join(f"{v:+.3f}" for v in g)
