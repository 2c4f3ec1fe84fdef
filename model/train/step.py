"""One optimizer step: the loss of a batch, the weighted sum over the step's micro-batches, the
gradient all-reduce, clipping and AdamW; and the optimizer with its learning-rate schedule.

Each source's summed loss is divided by its number of target tokens (`per_token`) or of
sequences (`per_sequence`, Flamingo's Eq. 2: sum_s w_s E[loss of a sequence of s]), counted over
every rank and micro-batch of the step (one small all-reduce before backward), and gradients are
summed across ranks, so N processes on batches b_1..b_N apply exactly the update of one process on
their union. Per token, a source of short sequences (pairs) weighs more against M3W's long ones
than under the paper's normalisation, for the same weights. Per sequence, losses and gradients are
about tokens-per-sequence times larger: AdamW does not mind a constant scale, `grad_clip` does.

Data parallelism is that gradient all-reduce, over the trainable parameters only: the frozen
backbones are never synchronised (identical by construction: built from the seed and the same
weight files), and a micro-batch of one source need not touch every parameter (text-only
sequences skip the cross-attention), which DistributedDataParallel's hooks would reject.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from model.flamingo import Flamingo, next_token_loss
from model.train.config import LossNormalisation, OptimConfig
from model.train.mixing import StepPlan
from model.train.samples import Batch


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


def forward_loss_sum(model: Flamingo, batch: Batch, rt: Runtime, blind: bool = False) -> torch.Tensor:
    """Summed next-token loss of a batch; `blind`: with the visual input zeroed, everything else identical."""
    b = batch.to(rt.device)
    media = b.media
    if blind and media is not None:
        media = torch.zeros_like(media) if isinstance(media, torch.Tensor) else [torch.zeros_like(m) for m in media]
    with rt.autocast():
        out = model(b.input_ids, b.attention_mask, media, b.media_batch_idx if media is not None else None)
    return next_token_loss(out.logits, b.labels, reduction="sum")


def accumulate_gradients(model: Flamingo, plan: StepPlan, rt: Runtime,
                         normalisation: LossNormalisation = "per_token") -> dict[str, Any]:
    """Backward over every micro-batch of the step; leaves sum_s w_s * dL_s/dtheta in .grad, where
    L_s is source s's loss summed over all its target tokens of this step on all ranks, divided by
    their number (per_token) or by the number of its sequences (per_sequence). The returned losses
    are per target token in both cases."""
    params = [p for p in model.parameters() if p.requires_grad]
    counts = torch.tensor([[float(sum(b.stats[k] for b in batches)) for k in ("targets", "sequences")]
                           for _, _, batches in plan.parts], dtype=torch.float64, device=rt.device)
    if rt.distributed:
        dist.all_reduce(counts)
    divide_by = 0 if normalisation == "per_token" else 1
    sums = torch.zeros(len(plan.parts), dtype=torch.float64, device=rt.device)
    for i, (_, weight, batches) in enumerate(plan.parts):
        scale = weight / max(1.0, float(counts[i, divide_by]))
        for batch in batches:
            total = forward_loss_sum(model, batch, rt)
            (total * scale).backward()
            sums[i] += total.detach().double()
    grads = [_grad_or_zero(p) for p in params]  # the same parameters on every rank, whatever the batch touched
    if rt.distributed:
        sync_gradients(grads)
        dist.all_reduce(sums)
    per_source = {name: float(sums[i] / max(1.0, float(counts[i, 0]))) for i, (name, _, _) in enumerate(plan.parts)}
    loss = sum(w * per_source[name] for name, w, _ in plan.parts)
    return {"loss": loss, "per_source": per_source, "targets": {n: int(counts[i, 0]) for i, (n, _, _) in enumerate(plan.parts)}}


def _grad_or_zero(p: nn.Parameter) -> torch.Tensor:
    """p's gradient; unused this step (e.g. a text-only batch): an explicit zero, so every rank
    holds and all-reduces the same tensors and AdamW sees the same thing either way."""
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    return p.grad


def sync_gradients(grads: list[torch.Tensor]) -> None:
    """Sum gradients over ranks in place, one flat all-reduce."""
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def optimizer_step(model: Flamingo, optimizer: torch.optim.Optimizer, grad_clip: float) -> float:
    """Clip the complete (accumulated, all-reduced) gradient, step, clear. Returns the pre-clip norm."""
    params = [p for p in model.parameters() if p.requires_grad]
    if grad_clip > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    else:
        norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


# --- the optimizer ---------------------------------------------------------------------------


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


def apply_optim_config(model: Flamingo, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
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
