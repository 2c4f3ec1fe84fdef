"""`m3w train --config CONFIG`: train Flamingo on a weighted mix of M3W, pair and video shards.

One straight function (`train`), nanoGPT-style:

    setup (torchrun env -> process group; device; precision)
    model: frozen backbones (+ pretrained built-in LM weights) -> Flamingo; only the resampler,
           the gated cross-attention blocks and the new-token rows train
    optimizer: AdamW, two groups (see `param_groups`); warmup + cosine/linear/constant (LambdaLR)
    resume: strict, from the latest checkpoint (or a given one)
    data: one SourceLoader per source (model/data.py) -> Mixer (model/mixing.py)
    loop: plan = mixer.next_step()
          accumulate_gradients: every micro-batch of every source, loss sum / global target
              count * source weight, backward; then one all-reduce of the trainable gradients
          optimizer_step: clip the full accumulated gradient, AdamW step, schedule step
          log (terminal + metrics.jsonl), evaluate (loss, blind gap), checkpoint

Losses are normalised by the number of target tokens summed over every rank and micro-batch
of the step (one small all-reduce before backward), and gradients are summed across ranks, so
N processes on batches b_1..b_N apply exactly the update of one process on their union.

Data parallelism is the gradient all-reduce above, over the trainable parameters only: the
frozen backbones are never synchronised (identical by construction: built from the seed and
the same weight files), and a micro-batch of one source need not touch every parameter
(text-only sequences skip the cross-attention), which DistributedDataParallel's hooks would
reject. Launch with `torchrun --nproc-per-node N -m m3w train --config C` (gloo on CPU, nccl
on GPU).

Checkpoints (`OUT/checkpoints/step-NNNNNNNN/`, written to a temporary directory then renamed,
`OUT/checkpoints/latest` updated last): the model checkpoint of `model.checkpoint` (so
`m3w generate --checkpoint` reads it) plus `trainer_state.pt` (step, optimizer, scheduler,
every rank's loader/mixer state, RNG states, config). Resuming requires every one of these and
the same model, data and world size; anything missing or different is an error.

Resuming with changed optimizer settings (lr, weight_decay, betas, eps, warmup, schedule,
min_lr_ratio, grad_clip, run.steps): the config wins over the checkpoint; the changes made to the
loaded optimizer are printed (`apply_optim_config`).

Metrics (`OUT/metrics.jsonl`, one JSON object per log step / evaluation): loss and loss per
source, tokens/s and images/s, padding fraction, seconds the steps waited for data (`data_s`,
and `wait_s` per source), skipped samples and shards per source, tanh(gate) per layer
(attention and feed-forward), and at evaluations per held-out set the loss, the loss with the
visual input zeroed, and the blind gap (their difference, nats per text token). With N ranks,
tokens, media, frames, padding and skipped counts are summed over the ranks (one small
all-reduce per log line; ranks see different sequences), losses are over all ranks' targets,
and times are rank 0's. A held-out set's `batches` is per rank: N ranks evaluate on up to N x
`batches` batches, each rank on its share of the set.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from model.backbones import find_decoder_layers, load_language_model, load_vision_encoder
from model.checkpoint import BUILTIN_LM, BUILTIN_VISION, TRAINABLE, CheckpointError, load_trainable_state, read_manifest, save_checkpoint
from model.flamingo import IGNORE_INDEX, Flamingo, FlamingoLayer
from model.tokenizer import FlamingoTokenizer, load_tokenizer
from model.train.config import OptimConfig, TrainConfig
from model.train.data import COUNTERS, Batch, ImageSpec, SourceLoader, eval_batches
from model.train.mixing import Mixer, StepPlan

TRAINER_STATE = "trainer_state.pt"
STATE_FORMAT, STATE_VERSION = "m3w-train", 1
REQUIRED_STATE = ("format", "version", "step", "optimizer", "scheduler", "loader", "rng", "config", "world_size")


# --- model ---------------------------------------------------------------------------------


def build_model(cfg: TrainConfig) -> tuple[Flamingo, FlamingoTokenizer]:
    """`model.factory.build_flamingo`, with pretrained built-in backbone weights (run.lm_weights,
    run.vision_weights) loaded before the new-token rows are initialised from the LM's embeddings
    (same RNG stream as build_flamingo)."""
    from model.train.pretrain_lm import load_pretrained_lm
    from model.train.pretrain_vision import load_pretrained_vision

    mc = cfg.model
    if cfg.run.lm_weights is not None and mc.lm_path is not None:
        raise ValueError("run.lm_weights is for the built-in LM; with model.lm_path the weights come from there")
    if cfg.run.vision_weights is not None and mc.vision_path is not None:
        raise ValueError("run.vision_weights is for the built-in ViT; with model.vision_path the weights come from there")
    tokenizer = load_tokenizer(mc.tokenizer_path or mc.lm_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mc.seed)
        lm = load_language_model(mc.lm_path, mc.builtin_lm, mc.backbone_dtype)
        if cfg.run.lm_weights is not None:
            load_pretrained_lm(lm, cfg.run.lm_weights)  # type: ignore[arg-type]
        vision = load_vision_encoder(mc.vision_path, mc.builtin_vision, mc.backbone_dtype)
        if cfg.run.vision_weights is not None:
            load_pretrained_vision(vision, cfg.run.vision_weights, mc.builtin_vision)  # type: ignore[arg-type]
        model = Flamingo(mc, lm, vision, tokenizer.special)
    return model, tokenizer


def param_groups(model: Flamingo, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only (Linear/projection weights of the resampler and the
    cross-attention blocks). Not on biases and norms (scale parameters), the tanh gates (decay
    would pull them back to 0, i.e. to ignoring the images), the resampler's latents and time
    embeddings, or the new-token rows (embeddings, as in GPT-style LMs)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = name.startswith("new_token_") or name.endswith(("latents", "time_emb"))
        (decay if p.ndim >= 2 and not is_embedding else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of cfg.lr for the step about to run (0-based): linear warmup, then the schedule."""
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape
    return factor


def build_optimizer(model: Flamingo, cfg: OptimConfig, total_steps: int
                    ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `param_groups`, with the warmup + schedule of `lr_lambda` over `total_steps`."""
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))


def apply_optim_config(model: Flamingo, optimizer: torch.optim.Optimizer, scheduler: Any,
                       cfg: OptimConfig) -> dict[str, tuple[Any, Any]]:
    """After loading a checkpoint's optimizer and scheduler state, make the config the truth again.

    `load_state_dict` brings back the saved lr, weight decay, betas and eps, so `--set optim.lr=...`
    on resume would be silently ignored (the schedule's shape already comes from the config: the
    lambdas are not saved). Re-applies them per group (weight decay as `param_groups` assigns it)
    and recomputes each group's current lr from the schedule at the resumed step; with an
    unchanged config every value is the one saved, bit for bit. Returns what changed,
    {key: (checkpoint value, config value)}."""
    changes: dict[str, tuple[Any, Any]] = {}
    for i, (group, want) in enumerate(zip(optimizer.param_groups, param_groups(model, cfg.weight_decay), strict=True)):
        new = {"lr": cfg.lr, "weight_decay": want["weight_decay"], "betas": tuple(cfg.betas), "eps": cfg.eps}
        old = {"lr": group["initial_lr"], "weight_decay": group["weight_decay"], "betas": tuple(group["betas"]),
               "eps": group["eps"]}
        for key, value in new.items():
            if old[key] != value:
                changes.setdefault(key, (old[key], value))
        group.update(initial_lr=cfg.lr, weight_decay=new["weight_decay"], betas=new["betas"], eps=cfg.eps)
        scheduler.base_lrs[i] = cfg.lr
        group["lr"] = scheduler.base_lrs[i] * scheduler.lr_lambdas[i](scheduler.last_epoch)  # as LambdaLR.get_lr
    return changes


def enable_activation_checkpointing(model: Flamingo) -> None:
    """Recompute each wrapped LM layer (gated cross-attention + frozen layer) in backward.

    The media context lives in a slot that `Flamingo.decode` clears when the forward ends, so
    each call captures the slot's value and restores it around the recomputation."""
    from torch.utils.checkpoint import checkpoint

    for layer in find_decoder_layers(model.lm):
        if not isinstance(layer, FlamingoLayer) or getattr(layer, "_m3w_checkpointed", False):
            continue
        inner = layer.forward

        def forward(*args: Any, _inner: Callable[..., Any] = inner, _layer: FlamingoLayer = layer, **kwargs: Any) -> Any:
            if not (torch.is_grad_enabled() and _layer.slot.active):
                return _inner(*args, **kwargs)
            active, value = _layer.slot.active, _layer.slot.value

            def run(*a: Any, **kw: Any) -> Any:
                saved = (_layer.slot.active, _layer.slot.value)
                _layer.slot.active, _layer.slot.value = active, value
                try:
                    return _inner(*a, **kw)
                finally:
                    _layer.slot.active, _layer.slot.value = saved

            return checkpoint(run, *args, use_reentrant=False, **kwargs)

        object.__setattr__(layer, "forward", forward)
        object.__setattr__(layer, "_m3w_checkpointed", True)


def gate_values(model: Flamingo) -> dict[str, list[float]]:
    return {"attn": [round(float(torch.tanh(b.attn_gate.detach()).item()), 5) for b in model.gated_xattn],
            "ff": [round(float(torch.tanh(b.ff_gate.detach()).item()), 5) for b in model.gated_xattn]}


# --- one step ------------------------------------------------------------------------------


@dataclass
class Runtime:
    """Where and how steps run."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast_dtype: torch.dtype | None = None  # torch.bfloat16: autocast; None: full precision
    distributed: bool = False

    def autocast(self) -> Any:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over target positions (`model.flamingo.next_token_loss` x count)."""
    logits, targets = logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
    valid = targets != IGNORE_INDEX
    return F.cross_entropy(logits[valid].float(), targets[valid], reduction="sum")


def forward_loss_sum(model: Flamingo, batch: Batch, rt: Runtime, blind: bool = False) -> torch.Tensor:
    b = batch.to(rt.device)
    media = b.media
    if blind and media is not None:  # the visual input zeroed, everything else identical
        media = torch.zeros_like(media) if isinstance(media, torch.Tensor) else [torch.zeros_like(m) for m in media]
    with rt.autocast():
        out = model(b.input_ids, b.attention_mask, media, b.media_batch_idx if media is not None else None)
    return loss_sum(out.logits, b.labels.to(rt.device))


def accumulate_gradients(model: Flamingo, plan: StepPlan, rt: Runtime) -> dict[str, Any]:
    """Backward over every micro-batch of the step; leaves sum_s w_s * dL_s/dtheta in .grad, where
    L_s is source s's mean loss over all its target tokens of this step on all ranks."""
    params = [p for p in model.parameters() if p.requires_grad]
    counts = torch.tensor([[float(sum(b.stats["targets"] for b in batches))] for _, _, batches in plan.parts],
                          dtype=torch.float64, device=rt.device)
    if rt.distributed:
        dist.all_reduce(counts)
    sums = torch.zeros(len(plan.parts), dtype=torch.float64, device=rt.device)
    for i, (_, weight, batches) in enumerate(plan.parts):
        scale = weight / max(1.0, float(counts[i, 0]))
        for batch in batches:
            total = forward_loss_sum(model, batch, rt)
            (total * scale).backward()
            sums[i] += total.detach().double()
    for p in params:  # unused this step (e.g. text-only batch): an explicit zero, the same on every rank
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if rt.distributed:
        sync_gradients(params)
        dist.all_reduce(sums)
    per_source = {name: float(sums[i] / max(1.0, float(counts[i, 0]))) for i, (name, _, _) in enumerate(plan.parts)}
    loss = sum(w * per_source[name] for name, w, _ in plan.parts)
    return {"loss": loss, "per_source": per_source, "targets": {n: int(counts[i, 0]) for i, (n, _, _) in enumerate(plan.parts)}}


def sync_gradients(params: list[nn.Parameter]) -> None:
    """Sum the trainable gradients over ranks, one flat all-reduce."""
    flat = torch.cat([p.grad.reshape(-1) for p in params])  # type: ignore[union-attr]
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p))  # type: ignore[union-attr]
        offset += n


def optimizer_step(model: Flamingo, optimizer: torch.optim.Optimizer, grad_clip: float) -> float:
    """Clip the complete (accumulated, all-reduced) gradient, step, clear. Returns the pre-clip norm."""
    params = [p for p in model.parameters() if p.requires_grad]
    if grad_clip > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    else:
        norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))  # type: ignore[union-attr]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


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


# --- checkpoints ---------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not path.is_dir():
        raise CheckpointError(f"{pointer} names {path.name}, which does not exist")
    return path


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


def save_training_state(root: Path, step: int, model: Flamingo, tokenizer: FlamingoTokenizer,
                        optimizer: torch.optim.Optimizer, scheduler: Any, loader_states: list[dict[str, Any]],
                        rng_states: list[dict[str, Any]], cfg: TrainConfig, keep: int) -> Path:
    """Write a checkpoint atomically: temporary directory, fsync, rename, then the `latest` pointer
    (written, fsynced, renamed; then the root fsynced so both renames survive a crash)."""
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root)
    final = root / checkpoint_name(step)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_checkpoint(model, tokenizer, tmp, extra={"step": step, "trainer_state": TRAINER_STATE})
    torch.save({
        "format": STATE_FORMAT, "version": STATE_VERSION, "step": step,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "loader": loader_states, "rng": rng_states, "config": cfg.to_dict(), "world_size": len(loader_states),
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


def _compatible(saved: dict[str, Any], cfg: TrainConfig, world_size: int, state_world: int) -> list[str]:
    current = cfg.to_dict()
    problems = [f"{section} differs: checkpoint {saved.get(section)} vs config {current[section]}"
                for section in ("model", "data") if saved.get(section) != current[section]]
    for key in ("lm_weights", "vision_weights"):
        if saved.get("run", {}).get(key) != getattr(cfg.run, key):
            problems.append(f"run.{key} differs: {saved.get('run', {}).get(key)} vs {getattr(cfg.run, key)}")
    if state_world != world_size:
        problems.append(f"world size differs: checkpoint {state_world} vs now {world_size}")
    return problems


def load_training_state(path: Path, model: Flamingo, optimizer: torch.optim.Optimizer, scheduler: Any,
                        cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """Strict: every piece must be there and match; returns the trainer state (step, loader, rng).

    The optimizer settings are the config's, not the checkpoint's (`apply_optim_config`); what
    differed is in the returned state's "optim_changes"."""
    from safetensors.torch import load_file, load_model

    if not (path / TRAINER_STATE).is_file():
        raise CheckpointError(f"{path}: no {TRAINER_STATE}: a model checkpoint, not a training checkpoint")
    read_manifest(path)
    missing_files = [name for name, needed in ((TRAINABLE, True), (BUILTIN_LM, cfg.model.lm_path is None),
                                               (BUILTIN_VISION, cfg.model.vision_path is None))
                     if needed and not (path / name).is_file()]
    if missing_files:
        raise CheckpointError(f"{path}: missing {missing_files}")
    state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)
    missing = [k for k in REQUIRED_STATE if k not in state]
    if missing:
        raise CheckpointError(f"{path / TRAINER_STATE}: missing {missing}")
    if (state["format"], state["version"]) != (STATE_FORMAT, STATE_VERSION):
        raise CheckpointError(f"{path}: trainer state {state['format']} v{state['version']} not supported")
    problems = _compatible(state["config"], cfg, world_size, int(state["world_size"]))
    if problems:
        raise CheckpointError(f"cannot resume from {path}: " + "; ".join(problems))
    for module, name, builtin in ((model.lm, BUILTIN_LM, cfg.model.lm_path is None),
                                  (model.vision, BUILTIN_VISION, cfg.model.vision_path is None)):
        if builtin:  # the frozen built-in backbones as they were trained with, from the checkpoint itself
            load_model(module, str(path / name), strict=True)
    load_trainable_state(model, load_file(str(path / TRAINABLE)))
    for key in ("state", "param_groups"):
        if key not in state["optimizer"]:
            raise CheckpointError(f"{path}: optimizer state without {key!r}")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    state["optim_changes"] = apply_optim_config(model, optimizer, scheduler, cfg.optim)
    if len(state["loader"]) != world_size or len(state["rng"]) != world_size:
        raise CheckpointError(f"{path}: loader/rng state for {len(state['loader'])} ranks, running {world_size}")
    return state


# --- metrics -------------------------------------------------------------------------------


class MetricsLog:
    """JSONL file (rank 0) + one terminal line per log step under the progress bar."""

    def __init__(self, path: Path, enabled: bool, bar: Any) -> None:
        self.path, self.enabled, self.bar = path, enabled, bar
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any], line: str | None = None) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if line:
            (self.bar.write if self.bar is not None else print)(line, file=sys.stderr)


def _fmt_gates(g: list[float]) -> str:
    return " ".join(f"{v:+.3f}" for v in g)


# --- the script ----------------------------------------------------------------------------


@dataclass
class TrainResult:
    step: int
    losses: list[tuple[int, float]]  # (step, training loss) for every step this run
    evals: list[dict[str, Any]]  # evaluation records
    gates: dict[str, list[float]]
    checkpoint: Path | None
    counters: dict[str, dict[str, int]]
    seconds: float


def _setup_distributed(cfg: TrainConfig) -> tuple[int, int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    want = cfg.run.device
    if want == "auto":
        want = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(want)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, local_rank, device


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None  # CPU: bf16 autocast is usually slower than fp32 there


def _gather(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def train(cfg: TrainConfig) -> TrainResult:
    t_start = time.perf_counter()
    # --- setup
    rank, world, _, device = _setup_distributed(cfg)
    master = rank == 0
    rt = Runtime(device, _autocast_dtype(cfg.run.precision, device), world > 1)
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed + rank)
    out_dir = Path(cfg.run.out_dir)
    ckpt_root = out_dir / "checkpoints"

    # --- model and optimizer
    model, tokenizer = build_model(cfg)
    model.to(device).train()
    if cfg.run.activation_checkpointing:
        enable_activation_checkpointing(model)
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.run.steps)

    # --- resume (strict)
    resume_from: Path | None = None
    if cfg.run.resume in ("auto", "must"):
        resume_from = latest_checkpoint(ckpt_root)
        if resume_from is None and cfg.run.resume == "must":
            raise CheckpointError(f"run.resume = 'must' but {ckpt_root} holds no checkpoint")
    elif cfg.run.resume != "never":
        resume_from = Path(cfg.run.resume)
    step, loader_state = 0, None
    if resume_from is not None:
        state = load_training_state(resume_from, model, optimizer, scheduler, cfg, world)
        step, loader_state = int(state["step"]), state["loader"][rank]
        torch.set_rng_state(state["rng"][rank]["torch"])
        random.setstate(_tuple_state(state["rng"][rank]["python"]))
        if master:
            print(f"m3w train: resumed from {resume_from} at step {step}", file=sys.stderr)
            if state["optim_changes"]:
                print("m3w train: optimizer settings from the config, not the checkpoint: "
                      + ", ".join(f"{k} {old} -> {new}" for k, (old, new) in state["optim_changes"].items()),
                      file=sys.stderr)
    elif world > 1:  # identical by seeding; make sure
        for p in model.trainable_parameters().values():
            dist.broadcast(p.data, src=0)

    # --- data
    image = ImageSpec.for_encoder(model.vision)
    loaders = {s.name: SourceLoader(s, tokenizer, image, seed=cfg.data.seed, rank=rank, world_size=world,
                                    num_workers=cfg.data.num_workers,
                                    state=loader_state["loaders"][s.name] if loader_state else None)
               for s in cfg.data.sources}
    mixer = Mixer(loaders, {s.name: s.weight for s in cfg.data.sources}, cfg.data.mode, cfg.data.seed,
                  state=loader_state)
    eval_sets = {es.name: eval_batches(es, tokenizer, image, seed=cfg.data.seed, n_batches=es.batches,
                                       rank=rank, world_size=world) for es in cfg.eval.sets}

    # --- loop
    from tqdm import tqdm

    last = min(cfg.run.steps, cfg.run.stop_at or cfg.run.steps)
    bar = tqdm(total=cfg.run.steps, initial=step, disable=not (master and cfg.run.progress), file=sys.stderr,
               dynamic_ncols=True, desc="train", mininterval=2.0)
    log = MetricsLog(out_dir / "metrics.jsonl", master, bar if master and cfg.run.progress else None)
    losses: list[tuple[int, float]] = []
    evals: list[dict[str, Any]] = []
    window = _Window(cfg.data.sources)
    checkpoint: Path | None = None
    while step < last:
        t0 = time.perf_counter()
        plan = mixer.next_step()
        t_data = time.perf_counter()
        out = accumulate_gradients(model, plan, rt)
        lr = optimizer.param_groups[0]["lr"]  # this step's (after a resume, recomputed from the config)
        grad_norm = optimizer_step(model, optimizer, cfg.optim.grad_clip)
        scheduler.step()
        step += 1
        losses.append((step, out["loss"]))
        window.add(plan, out, time.perf_counter() - t0, t_data - t0)
        bar.update(1)
        bar.set_postfix(loss=f"{out['loss']:.3f}", refresh=False)

        if step % cfg.run.log_every == 0 or step == last:
            record = window.record(step, lr, grad_norm, gate_values(model), loaders, rt)
            log.write(record, _log_line(record))
            window = _Window(cfg.data.sources)
        if cfg.eval.sets and ((cfg.eval.every and step % cfg.eval.every == 0) or step == last):
            rec: dict[str, Any] = {"step": step, "eval": {}}
            for name, batches in eval_sets.items():
                rec["eval"][name] = evaluate(model, batches, rt, cfg.eval.blind_gap)
            rec["gates"] = gate_values(model)
            evals.append(rec)
            log.write(rec, _eval_line(rec))
        if (cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0) or step == last:
            loader_states = _gather(mixer.state_dict(), world)
            rng_states = _gather({"torch": torch.get_rng_state(), "python": random.getstate()}, world)
            checkpoint = save_on_rank0(lambda: save_training_state(
                ckpt_root, step, model, tokenizer, optimizer, scheduler, loader_states, rng_states, cfg,
                cfg.run.keep_checkpoints), rank, rt)
    bar.close()
    counters = {n: {k: int(v) for k, v in c.items()} for n, c in
                sum_over_ranks({n: _skipped(loader) for n, loader in loaders.items()}, rt).items()}
    mixer.close()
    return TrainResult(step, losses, evals, gate_values(model), checkpoint or latest_checkpoint(ckpt_root),
                       counters, time.perf_counter() - t_start)


def save_on_rank0(save: Callable[[], Path], rank: int, rt: Runtime) -> Path | None:
    """Rank 0 runs `save` (returns its path; None on other ranks). Distributed, rank 0 then
    broadcasts whether it worked: every rank waits for the write as a barrier would, and when it
    failed the other ranks raise too, instead of waiting in a barrier until the timeout."""
    failure: BaseException | None = None
    path: Path | None = None
    if rank == 0:
        try:
            path = save()
        except Exception as err:  # noqa: BLE001 - re-raised below, after the other ranks are told
            failure = err
    if rt.distributed:
        ok = torch.tensor([1.0 if failure is None else 0.0], device=rt.device)
        dist.broadcast(ok, src=0)
        if rank != 0 and float(ok) != 1.0:
            raise CheckpointError("rank 0 failed to write the checkpoint (its error is in rank 0's output)")
    if failure is not None:
        raise failure
    return path


def _tuple_state(state: Any) -> Any:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


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


def _skipped(loader: SourceLoader) -> dict[str, float]:
    """The loader's counters (since the run began), keyed by data.COUNTERS: the same keys on every rank."""
    counters = loader.counters()
    return {k: float(counters.get(k, 0)) for k in COUNTERS}


SUMMED_STATS = ("tokens", "pad", "media", "frames")  # per source, summed over ranks at log time


class _Window:
    """Sums between two log lines (this rank's; `record` sums the counts over ranks).

    Times are this rank's (rank 0 logs): `data_s` is the time the steps waited for their batches
    from all loaders (`Mixer.next_step`), per-source `wait_s` the same split by source."""

    def __init__(self, sources: list[Any]) -> None:
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
                        **{f"skipped.{k}": v for k, v in _skipped(loaders[name]).items()}}
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


def _log_line(r: dict[str, Any]) -> str:
    per = " ".join(f"{n} {s['loss']:.3f}" for n, s in r["sources"].items() if s["loss"] is not None)
    skipped = sum(s["skipped"]["corrupt_samples"] + s["skipped"]["corrupt_shards"] for s in r["sources"].values())
    return (f"step {r['step']:6d} | loss {r['loss']:.4f} ({per}) | lr {r['lr']:.2e} | "
            f"{r['tokens_per_s']:.0f} tok/s {r['images_per_s']:.1f} img/s | wait {r['data_s']:.2f}s | "
            f"tanh(attn gate) {_fmt_gates(r['gates']['attn'])}" + (f" | skipped {skipped}" if skipped else ""))


def _eval_line(r: dict[str, Any]) -> str:
    parts = []
    for name, e in r["eval"].items():
        gap = (f", blind {e['blind_loss']:.4f}, blind gap {e['blind_gap']:+.4f}/token "
               f"{e['blind_gap_per_image']:+.2f}/image") if "blind_gap" in e else ""
        parts.append(f"{name}: loss {e['loss']:.4f}{gap}")
    return f"eval step {r['step']:6d} | " + " | ".join(parts)


def train_from_file(path: str, overrides: list[str] | None = None) -> TrainResult:
    from model.train.config import load_train_config

    return train(load_train_config(path, overrides))
