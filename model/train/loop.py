"""`m3w train --config CONFIG`: train Flamingo on a weighted mix of M3W, pair and video shards.

One straight function (`train`), nanoGPT-style:

    setup (torchrun env -> process group; device; precision)
    model: frozen backbones (+ pretrained built-in LM/ViT weights) -> Flamingo; only the
           resampler, the gated cross-attention blocks and the new-token rows train
    optimizer: AdamW, two groups; warmup + cosine/linear/constant (step.py)
    resume: strict, from the latest checkpoint or a given one (state.py)
    data: one SourceLoader per source (data.py) -> Mixer (mixing.py)
    loop: plan = mixer.next_step()
          accumulate_gradients: every micro-batch of every source, its loss normalised per
              token or per sequence and weighted, backward; one all-reduce
          optimizer_step: clip the full accumulated gradient, AdamW step, schedule step
          log (metrics.py), evaluate (loss, blind gap), checkpoint (state.py)

Launch with `torchrun --nproc-per-node N -m m3w train --config C` (gloo on CPU, nccl on GPU);
step.py says why N processes give exactly the update of one process on their union.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from model.checkpoint import CheckpointError
from model.factory import build_flamingo
from model.train.config import TrainConfig
from model.train.data import SourceLoader, eval_batches
from model.train.metrics import MetricsLog, Window, eval_line, evaluate, gate_values, loader_counters, log_line, sum_over_ranks
from model.train.mixing import Mixer
from model.train.samples import ImageSpec
from model.train.state import TrainState, latest_checkpoint, restore_rng, rng_state
from model.train.step import Runtime, accumulate_gradients, build_optimizer, optimizer_step


@dataclass
class TrainResult:
    step: int
    losses: list[tuple[int, float]]  # (step, training loss) for every step this run
    evals: list[dict[str, Any]]  # evaluation records
    gates: dict[str, list[float]]
    checkpoint: Path | None
    counters: dict[str, dict[str, int]]
    seconds: float


def train(cfg: TrainConfig) -> TrainResult:
    t_start = time.perf_counter()
    # --- setup
    rank, world, device = _setup_distributed(cfg)
    master = rank == 0
    rt = Runtime(device, _autocast_dtype(cfg.run.precision, device), world > 1)
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed + rank)
    out_dir = Path(cfg.run.out_dir)
    ckpt_root = out_dir / "checkpoints"

    # --- model and optimizer
    model, tokenizer = build_flamingo(cfg.model, lm_weights=cfg.run.lm_weights, vision_weights=cfg.run.vision_weights)
    model.to(device).train()
    model.enable_activation_checkpointing(cfg.run.activation_checkpointing)
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.run.steps)
    state = TrainState(model, tokenizer, optimizer, scheduler)

    # --- resume (strict)
    resume_from: Path | None = None
    if cfg.run.resume in ("auto", "must"):
        resume_from = latest_checkpoint(ckpt_root)
        if resume_from is None and cfg.run.resume == "must":
            raise CheckpointError(f"run.resume = 'must' but {ckpt_root} holds no checkpoint")
    elif cfg.run.resume != "never":
        resume_from = Path(cfg.run.resume)
    loader_state = None
    if resume_from is not None:
        optim_changes = state.load(resume_from, cfg, world)
        loader_state = state.loader[rank]
        restore_rng(state.rng[rank])
        if master:
            print(f"m3w train: resumed from {resume_from} at step {state.step}", file=sys.stderr)
            if optim_changes:
                print("m3w train: optimizer settings from the config, not the checkpoint: "
                      + ", ".join(f"{k} {old} -> {new}" for k, (old, new) in optim_changes.items()),
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
    bar = tqdm(total=cfg.run.steps, initial=state.step, disable=not (master and cfg.run.progress), file=sys.stderr,
               dynamic_ncols=True, desc="train", mininterval=2.0)
    log = MetricsLog(out_dir / "metrics.jsonl", master, bar if master and cfg.run.progress else None)
    dropped = log.start_at(state.step)
    if dropped:
        print(f"m3w train: {log.path}: dropped {dropped} lines of steps after {state.step} (an earlier run's, past "
              "the checkpoint this run starts from)", file=sys.stderr)
    losses: list[tuple[int, float]] = []
    evals: list[dict[str, Any]] = []
    window = Window(cfg.data.sources)
    checkpoint: Path | None = None
    try:
        while state.step < last:
            t0 = time.perf_counter()
            plan = mixer.next_step()
            t_data = time.perf_counter()
            out = accumulate_gradients(model, plan, rt, cfg.data.loss_normalisation)
            lr = optimizer.param_groups[0]["lr"]  # this step's (after a resume, recomputed from the config)
            grad_norm = optimizer_step(model, optimizer, cfg.optim.grad_clip)
            scheduler.step()
            state.step += 1
            step = state.step
            losses.append((step, out["loss"]))
            window.add(plan, out, time.perf_counter() - t0, t_data - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{out['loss']:.3f}", refresh=False)

            if step % cfg.run.log_every == 0 or step == last:
                record = window.record(step, lr, grad_norm, gate_values(model), loaders, rt)
                log.write(record, log_line(record))
                window = Window(cfg.data.sources)
            if cfg.eval.sets and ((cfg.eval.every and step % cfg.eval.every == 0) or step == last):
                rec: dict[str, Any] = {"step": step, "eval": {}}
                for name, batches in eval_sets.items():
                    rec["eval"][name] = evaluate(model, batches, rt, cfg.eval.blind_gap)
                rec["gates"] = gate_values(model)
                evals.append(rec)
                log.write(rec, eval_line(rec))
            if (cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0) or step == last:
                state.loader, state.rng = _gather(mixer.state_dict(), world), _gather(rng_state(), world)
                checkpoint = save_on_rank0(lambda: state.save(ckpt_root, cfg, cfg.run.keep_checkpoints), rank, rt)
        bar.close()
        counters = {n: {k: int(v) for k, v in c.items()} for n, c in
                    sum_over_ranks({n: loader_counters(loader) for n, loader in loaders.items()}, rt).items()}
    finally:  # loader processes end with the run, also when a step or a checkpoint write fails
        mixer.close()
    return TrainResult(state.step, losses, evals, gate_values(model), checkpoint or latest_checkpoint(ckpt_root),
                       counters, time.perf_counter() - t_start)


def _setup_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; joins the process group."""
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
    return rank, world, device


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
