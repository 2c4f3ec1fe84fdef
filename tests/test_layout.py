"""The import rules of docs/ARCHITECTURE.md, checked on every module (imports at any depth).

A folder may import itself, the folders listed for it, and third-party packages; Beam only in
beam_jobs/ (and the CLI), torch only in model/ (and the CLI's model commands). The few imports
that still cross a rule are listed in KNOWN_EXCEPTIONS with why; a new crossing fails here.
"""
from __future__ import annotations

from pathlib import Path

from helpers.imports import module_imports

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ("core", "read", "extract", "media", "filter", "write", "inspect", "sample")

# folder -> the m3w folders it may import (besides itself)
ALLOWED = {
    "m3w_pipeline/core": set(),
    "m3w_pipeline/read": {"m3w_pipeline/core", "m3w_pipeline/media"},  # media: magic-byte sniffing classifies payloads
    "m3w_pipeline/extract": {"m3w_pipeline/core", "m3w_pipeline/read"},
    "m3w_pipeline/media": {"m3w_pipeline/core"},
    "m3w_pipeline/filter": {"m3w_pipeline/core", "m3w_pipeline/extract"},  # extract: language id
    "m3w_pipeline/write": {"m3w_pipeline/core", "m3w_pipeline/extract", "m3w_pipeline/filter", "m3w_pipeline/media"},
    "m3w_pipeline/inspect": {"m3w_pipeline/core", "m3w_pipeline/write"},
    "m3w_pipeline/sample": {"m3w_pipeline/core"},
    "beam_jobs": {"beam_jobs", *(f"m3w_pipeline/{f}" for f in PIPELINE)},
    "model": {"model", "m3w_pipeline/core"},  # only core/typed_config, checked in tests/model/test_model_imports.py
    "schemas": set(),
    "m3w": {"m3w", "beam_jobs", "model", *(f"m3w_pipeline/{f}" for f in PIPELINE)},
}
THIRD_PARTY_ONLY_IN = {"apache_beam": {"beam_jobs", "m3w"}, "torch": {"model", "m3w"}, "transformers": {"model"}}

# (importing folder, imported folder): why it is still here. Remove a line when its import goes.
KNOWN_EXCEPTIONS = {
    ("m3w_pipeline/core", "m3w_pipeline/media"): "Document holds ImageResult/ProcessedImage, defined beside process_image",
    ("m3w_pipeline/extract", "m3w_pipeline/media"): "optout.py shares the header opt-out rule with the fetcher (media/fetch)",
}


def _folder(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "m3w_pipeline" and len(parts) > 1 and parts[1] in PIPELINE:
        return f"m3w_pipeline/{parts[1]}"
    if parts[0] == "model" and len(parts) > 1 and parts[1] == "train":
        return "model"
    return parts[0] if parts[0] in ("beam_jobs", "model", "schemas", "m3w") else None




def _modules() -> list[tuple[str, Path]]:
    found = []
    for top in ("m3w_pipeline", "beam_jobs", "model", "schemas", "m3w"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).parts
            folder = f"m3w_pipeline/{rel[1]}" if top == "m3w_pipeline" and len(rel) > 2 else top
            found.append((folder, path))
    return found


def test_every_import_follows_the_folder_rules():
    crossings: dict[tuple[str, str], list[str]] = {}
    modules = _modules()
    assert len(modules) > 60
    for folder, path in modules:
        for name in module_imports(path):
            target = _folder(name)
            if target in (None, folder, "schemas") or target in ALLOWED.get(folder, set()):  # every folder may read the formats
                continue
            crossings.setdefault((folder, target), []).append(f"{path.relative_to(ROOT)}: {name}")
    new = {k: v for k, v in crossings.items() if k not in KNOWN_EXCEPTIONS}
    assert new == {}
    stale = set(KNOWN_EXCEPTIONS) - set(crossings)
    assert not stale, f"these exceptions no longer happen; remove them: {stale}"


def test_heavy_frameworks_stay_in_their_folders():
    bad = [f"{path.relative_to(ROOT)}: {name}" for folder, path in _modules() for name in module_imports(path)
           if name.split(".")[0] in THIRD_PARTY_ONLY_IN and folder.split("/")[0] not in THIRD_PARTY_ONLY_IN[name.split(".")[0]]]
    assert bad == []


def test_the_pipeline_never_imports_beam_the_model_or_the_cli():
    bad = [f"{path.relative_to(ROOT)}: {name}" for folder, path in _modules() if folder.startswith("m3w_pipeline")
           for name in module_imports(path) if name.split(".")[0] in ("apache_beam", "beam_jobs", "model", "m3w", "torch")]
    assert bad == []
