"""Typed training configuration, read from TOML or YAML.

Why typed and strict: a misspelt key in a training config silently falling back to a default
costs a whole run, so unknown keys, missing required fields and wrong types are errors that
name the key. Sections (all keys are fields of the dataclasses below):

    [run]     output directory, steps, seed, device, precision, logging/checkpoint cadence, resume
    [model]   a `model.config.FlamingoConfig` (backbones, resampler, cross-attention)
    [optim]   AdamW, weight decay, warmup + schedule, gradient clipping
    [data]    mixing mode, loader workers, and one [[data.sources]] table per source
    [eval]    held-out sets ([[eval.sets]], same fields as a source) for loss and blind gap

`load_train_config(path, overrides)` reads a file; overrides are "section.key=value" strings
(values parsed as TOML scalars, e.g. `run.steps=10`, `optim.lr=3e-4`, `run.resume="never"`).
Relative paths in the config are relative to the working directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from m3w_pipeline.core.typed_config import apply_overrides, from_dict, read_config_file
from model.config import FlamingoConfig

SourceKind = Literal["m3w", "pairs", "video"]
Truncation = Literal["first_image", "head", "random"]
ResizeMode = Literal["crop", "pad"]
MixMode = Literal["accumulate", "sample"]
LossNormalisation = Literal["per_token", "per_sequence"]
Schedule = Literal["cosine", "linear", "constant"]
Precision = Literal["auto", "fp32", "bf16"]


@dataclass
class SourceConfig:
    """One corpus in the mix. `urls`: local paths, globs, brace patterns ("m3w-{00000..00009}.tar"),
    http(s)/gs/pipe: URLs (webdataset's gopen), or a list of them."""

    name: str
    kind: SourceKind
    urls: list[str]
    weight: float = 1.0  # accumulate: loss weight; sample: relative draw probability
    batch_size: int = 8
    max_tokens: int = 256  # tokens per sequence, after truncation (see model/train/samples.py)
    max_images: int = 5  # m3w: images per sequence (Flamingo: 5)
    min_images: int = 1  # m3w: sequences with fewer images are skipped (counted as no_media)
    max_frames: int = 8  # video: frames per clip, evenly spaced (Flamingo trains on 8)
    samples_per_sequence: int = 1  # pairs/video: pack this many `<image>caption<|endofchunk|>` per sequence
    truncation: Truncation = "first_image"  # m3w: where the max_tokens window starts
    lead_tokens: int = 32  # m3w first_image: text kept before the first image
    shuffle_buffer: int = 256  # samples, within a shard (0: no shuffling)
    shuffle_shards: bool = True
    resize: ResizeMode = "crop"  # to the encoder's square size: centre crop or letterbox pad
    accum_steps: int = 1  # accumulate mode: micro-batches of this source per optimizer step

    def __post_init__(self) -> None:
        if isinstance(self.urls, str):
            self.urls = [self.urls]
        if self.batch_size < 1 or self.max_tokens < 2 or self.accum_steps < 1 or self.samples_per_sequence < 1:
            raise ValueError(f"source {self.name}: batch_size, accum_steps, samples_per_sequence >= 1 and "
                             "max_tokens >= 2 required")
        if self.samples_per_sequence > 1 and self.kind == "m3w":
            raise ValueError(f"source {self.name}: samples_per_sequence is for pairs and video; M3W documents are whole")
        if self.weight < 0:
            raise ValueError(f"source {self.name}: weight must be >= 0")
        # limits under which no sample could ever be used (the loader would skip every one)
        if self.max_images < 1 or (self.kind == "m3w" and not 0 <= self.min_images <= self.max_images):
            raise ValueError(f"source {self.name}: need 0 <= min_images <= max_images and max_images >= 1")
        if self.kind == "m3w" and self.truncation == "first_image" and self.lead_tokens > self.max_tokens - 2:
            raise ValueError(f"source {self.name}: lead_tokens ({self.lead_tokens}) leaves no room in max_tokens "
                             f"({self.max_tokens}) for the first image and its text")
        if self.max_frames < 1:
            raise ValueError(f"source {self.name}: max_frames must be >= 1")


@dataclass
class DataConfig:
    sources: list[SourceConfig]
    mode: MixMode = "accumulate"  # Flamingo: every source every step, weighted loss sum
    # a source's summed loss of a step is divided by its target tokens (per_token: mean loss per token) or by its
    # sequences (per_sequence: Flamingo's Eq. 2, the expected loss of a sequence, for which the paper's weights
    # were chosen); see model/train/step.py. Logged losses are per token either way.
    loss_normalisation: LossNormalisation = "per_token"
    num_workers: int = 1  # loader processes per source and rank (0: in the training process)
    seed: int = 0  # shard order, shuffle buffers and truncation windows derive from it

    def __post_init__(self) -> None:
        names = [s.name for s in self.sources]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"data.sources: need at least one source and unique names, got {names}")
        if self.num_workers < 0:
            raise ValueError("data.num_workers must be >= 0")
        if not any(s.weight > 0 for s in self.sources):  # nothing would train (see model/train/mixing.py)
            raise ValueError(f"data.sources: every weight is 0 ({', '.join(names)}): at least one must be positive")


@dataclass
class EvalSetConfig(SourceConfig):
    """A held-out set: same fields as a source (weight unused), read in order without shuffling."""

    batches: int = 8  # batches per evaluation and rank (N ranks: up to N x batches; fewer if the set is smaller)
    shuffle_buffer: int = 0
    shuffle_shards: bool = False


@dataclass
class EvalConfig:
    sets: list[EvalSetConfig] = field(default_factory=list)
    every: int = 0  # steps between evaluations; 0: only after the last step
    blind_gap: bool = True  # also evaluate with the visual input zeroed


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.1  # on weight matrices only; see model/train/step.py `param_groups`
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 100  # linear from 0
    schedule: Schedule = "cosine"  # after warmup, down to min_lr_ratio * lr at the last step
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # global norm after accumulation and all-reduce; 0 disables


@dataclass
class RunConfig:
    out_dir: str
    steps: int  # optimizer steps (also the schedule's length)
    seed: int = 0
    device: str = "auto"  # auto: cuda:LOCAL_RANK when available, else cpu
    precision: Precision = "auto"  # auto: bf16 autocast on devices that support it, else fp32
    activation_checkpointing: bool = False  # recompute LM layers (+ cross-attention) in backward
    lm_weights: str | None = None  # built-in LM weights from `model.train.pretrain_lm` (frozen)
    vision_weights: str | None = None  # built-in ViT weights from `model.train.pretrain_vision` (frozen)
    log_every: int = 10
    checkpoint_every: int = 0  # 0: only after the last step
    keep_checkpoints: int = 2
    resume: str = "auto"  # auto: latest in out_dir if any | never | must | a checkpoint directory
    stop_at: int | None = None  # stop after this step (checkpointed); the schedule still spans `steps`
    progress: bool = True  # tqdm bar on rank 0
    threads: int = 0  # torch CPU threads; 0: torch's default


@dataclass
class TrainConfig:
    run: RunConfig
    data: DataConfig
    model: FlamingoConfig = field(default_factory=FlamingoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        learned = self.model.resampler.max_frames
        for s in [*self.data.sources, *self.eval.sets]:
            if s.kind == "video" and s.max_frames > learned:  # its clips would train stretched time embeddings
                raise ValueError(f"source {s.name}: max_frames {s.max_frames} exceeds model.resampler.max_frames "
                                 f"{learned}, the time embeddings the model learns")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return from_dict(cls, data)


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    return TrainConfig.from_dict(apply_overrides(read_config_file(path), overrides or []))


def dump_toml(data: dict[str, Any]) -> str:
    """Minimal TOML writer for configs (tables, arrays of tables, scalars, arrays); None is omitted."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    def table(prefix: str, d: dict[str, Any], header: str | None) -> None:
        simple = {k: v for k, v in d.items() if v is not None and not isinstance(v, dict)
                  and not (isinstance(v, list) and v and isinstance(v[0], dict))}
        if header is not None:
            lines.append("")
            lines.append(header)
        lines.extend(f"{k} = {scalar(v)}" for k, v in simple.items())
        for k, v in d.items():
            name = f"{prefix}{k}"
            if isinstance(v, dict):
                table(f"{name}.", v, f"[{name}]")
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    table(f"{name}.", item, f"[[{name}]]")

    table("", data, None)
    return "\n".join(lines).strip() + "\n"
