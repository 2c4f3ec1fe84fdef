"""Fuzzing in `make test`: a seconds-long smoke campaign per target, and every saved reproducer replayed.

The long campaigns are `make fuzz` (tests/helpers/fuzzing.py); what they find is saved as a recipe in
tests/fuzz/reproducers/ and becomes a regression test here.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers.fuzzing import REPRODUCERS, TARGETS, campaign, check, load_recipe

RECIPES = sorted(REPRODUCERS.glob("*.json")) if REPRODUCERS.exists() else []


@pytest.mark.parametrize("target", TARGETS)
def test_smoke_campaign_finds_nothing(target):
    summary = campaign(target, seconds=20, seed=1, save=False, log=lambda _: None, max_inputs=25)
    assert summary["inputs"] >= 5, summary  # it really ran
    assert summary["findings"] == [], summary["findings"]


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_saved_reproducer_is_fixed(path: Path):
    outcome = check(load_recipe(path))
    assert outcome.kind == "ok", f"{path.name}: {outcome.kind} {outcome.detail}"
