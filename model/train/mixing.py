"""Multi-source mixing: which batches make up one optimizer step, and with what loss weight.

    accumulate  every source every step: `accum_steps` batches of each source, loss
                sum_s weight_s * loss_s (Flamingo: M3W 1.0, ALIGN 0.2, LTIP 0.2, VTP 0.03;
                its ablation found this far better than round-robin)
    sample      one source per step, drawn with probability weight_s / sum(weights) from a
                seeded RNG whose state is checkpointed; its loss has weight 1

Each source keeps its own batch size, sequence length and media limits (its SourceConfig);
the mixer only decides the schedule, so per-source statistics stay separable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from model.train.config import MixMode
from model.train.data import SourceLoader
from model.train.samples import Batch


@dataclass
class StepPlan:
    """The batches of one optimizer step, grouped by source, with each source's loss weight."""

    parts: list[tuple[str, float, list[Batch]]]  # (source, weight, micro-batches)


class Mixer:
    def __init__(self, loaders: dict[str, SourceLoader], weights: dict[str, float], mode: MixMode,
                 seed: int, state: dict[str, Any] | None = None) -> None:
        if mode not in ("accumulate", "sample"):
            raise ValueError(f"unknown mixing mode {mode!r}")
        if not any(w > 0 for w in weights.values()):  # accumulate: an empty step; sample: nothing to draw
            raise ValueError(f"every source has weight 0 ({', '.join(weights)}): at least one must be positive")
        self.loaders, self.weights, self.mode = loaders, weights, mode
        self.names = list(loaders)
        self.rng = random.Random(f"{seed}/mixer")
        if state is not None:
            if state["mode"] != mode or state["sources"] != self.names:
                raise ValueError(f"mixer state is for {state['mode']} over {state['sources']}, "
                                 f"config is {mode} over {self.names}")
            self.rng.setstate(random_state(state["rng"]))

    def next_step(self) -> StepPlan:
        if self.mode == "accumulate":
            return StepPlan([(n, self.weights[n], [next(self.loaders[n]) for _ in range(self.loaders[n].cfg.accum_steps)])
                             for n in self.names if self.weights[n] > 0])
        name = self.rng.choices(self.names, weights=[self.weights[n] for n in self.names])[0]
        return StepPlan([(name, 1.0, [next(self.loaders[name])])])

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "sources": self.names, "rng": self.rng.getstate(),
                "loaders": {n: loader.state_dict() for n, loader in self.loaders.items()}}

    def close(self) -> None:
        for loader in self.loaders.values():
            loader.close()


def random_state(state: Any) -> tuple[Any, ...]:
    """A `random.Random().getstate()` as `setstate` wants it, also after a serialisation round trip
    that turned its tuples into lists (JSON, some pickle-free formats)."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
