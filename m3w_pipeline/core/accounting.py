"""Accounting: per-stage counts that must reconcile, and the manifest written next to the shards.

Each stage has one input counter (`in`) and outcomes. Every outcome is either
kept (flows to the next stage) or a named drop. A stage reconciles when
in == sum(outcomes); consecutive stages must also agree (what one keeps, the
next one reads). A manifest that does not reconcile is a bug, and the job says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

# stage -> outcomes that are not drops. Any other outcome of the stage is a drop reason.
KEPT_OUTCOMES: dict[str, tuple[str, ...]] = {
    "records": ("page", "media"),
    "pages": ("extracted",),
    "image_refs": ("resolved", "missing"),
    "media_records": ("used",),
    "documents": ("kept",),
    "fetch": ("ok",),
    # every image element of an extracted page: an image node, or left out by reason (extract/content_images)
    "page_images": ("image-node",),
    # node filters, dedup (m3w_pipeline.filter.filters, m3w_pipeline.filter.dedup)
    "text_nodes": ("kept",),
    "image_nodes": ("kept",),
    "images_in_document": ("kept",),
    "dedup_url": ("kept",),
    "dedup_text_exact": ("kept",),
    "dedup_text_near": ("kept",),
    "images_hot": ("kept",),
    "dedup_image_sets": ("kept",),
    "post_dedup": ("kept",),
    # pairs and video (m3w_pipeline.write.pairs, beam_jobs.pairs_video_stages)
    "media_kind": ("image", "video"),
    "pair_documents": ("with-candidates", "no-candidates"),
    "pair_candidates": ("kept-align", "kept-ltip"),
    "align_samples": ("written",),
    "ltip_samples": ("written",),
    "video_refs": ("candidate",),
    "video_media_records": ("used",),
    "video_unresolved": ("to-fetch",),  # video and track URLs no record holds (--fetch-media)
    "video_fetch": ("ok",),
    "video_candidates": ("kept",),
    "video_samples": ("written",),
}

# The stages in the order they run, each group under the corpus that runs it (the first group feeds every corpus):
# how the CLI's summary table and reports list them.
STAGE_ORDER: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("read, extract, images, assemble", ("records", "pages", "page_images", "media_kind", "fetch", "media_records",
                                         "image_refs", "text_nodes", "image_nodes", "documents")),
    ("m3w", ("images_in_document", "dedup_url", "dedup_text_exact", "dedup_text_near", "images_hot", "dedup_image_sets", "post_dedup")),
    ("pairs", ("pair_documents", "pair_candidates", "align_samples", "ltip_samples")),
    ("video", ("video_refs", "video_media_records", "video_unresolved", "video_fetch", "video_candidates", "video_samples")),
)

# (stage, kept outcome) -> the stage whose `in` it must equal, when that stage ran in this build.
STAGE_LINKS: tuple[tuple[str, str, str], ...] = (
    ("records", "page", "pages"),
    ("pages", "extracted", "documents"),
    ("documents", "kept", "dedup_url"),
    ("dedup_url", "kept", "dedup_text_exact"),
    ("dedup_text_exact", "kept", "dedup_text_near"),
    ("dedup_text_near", "kept", "dedup_image_sets"),
    ("dedup_image_sets", "kept", "post_dedup"),
    ("pages", "extracted", "pair_documents"),
    ("media_kind", "image", "media_records"),
    ("media_kind", "video", "video_media_records"),
    ("pair_candidates", "kept-align", "align_samples"),
    ("pair_candidates", "kept-ltip", "ltip_samples"),
    ("video_refs", "candidate", "video_candidates"),
    ("video_unresolved", "to-fetch", "video_fetch"),
    ("video_candidates", "kept", "video_samples"),
)

# corpus -> (stage.outcome that must equal the samples in its shards, shard name prefix or "" for all)
SAMPLE_CHECKS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "m3w": (("post_dedup", "kept", ""),),
    "pairs": (("align_samples", "written", "align"), ("ltip_samples", "written", "ltip")),
    "video": (("video_samples", "written", ""),),
}

IN = "in"
KEPT = "kept"

# Stages every M3W build reports, even at zero; optional ones (fetch, pairs, video) appear when used.
CORE_STAGES = ("records", "pages", "image_refs", "media_records", "documents")


@dataclass(frozen=True)
class Count:
    """One event for the accounting; Beam sums them per (stage, outcome)."""

    stage: str
    outcome: str
    n: int = 1


@dataclass(frozen=True)
class Reject:
    """One rejected document or node, for the sample written beside the output."""

    stage: str
    reason: str
    key: str  # document key
    url: str  # document URL (image URL for image rejects)
    detail: str = ""  # e.g. the kept duplicate's key, the score, the start of a text node


@dataclass
class Tally:
    """What a step did with its input: how many items ended under each (stage, outcome), and the rejects.

    Steps record outcomes only; `in` follows from them (every outcome is one more input), so
    in == sum(outcomes) holds by construction. The Beam wiring (beam_jobs/counting.py) turns a
    tally into metrics, `Count` elements and reject samples, so no step counts by hand.
    """

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)

    def add(self, stage: str, outcome: str, n: int = 1) -> None:
        """`n` inputs of `stage` ended as `outcome` (kept or a drop reason)."""
        if n:
            for key in ((stage, IN), (stage, outcome)):
                self.counts[key] = self.counts.get(key, 0) + n

    def add_all(self, stage: str, outcomes: Mapping[str, int]) -> None:
        for outcome, n in outcomes.items():
            self.add(stage, outcome, n)

    def drop(self, stage: str, reason: str, key: str, url: str, detail: str = "") -> None:
        """One input of `stage` dropped for `reason`, kept in the reject sample."""
        self.add(stage, reason)
        self.rejects.append(Reject(stage, reason, key, url, detail))


def counts_to_stages(counts: Mapping[tuple[str, str], int]) -> dict[str, dict[str, Any]]:
    """{(stage, outcome): n} -> {stage: {in, kept: {...}, dropped: {...}, reconciles}}."""
    stages: dict[str, dict[str, Any]] = {}
    for stage in sorted({s for s, _ in counts} | set(CORE_STAGES)):
        outcomes = {o: n for (s, o), n in counts.items() if s == stage and o != IN}
        n_in = counts.get((stage, IN), 0)
        kept_names = KEPT_OUTCOMES.get(stage, ())
        kept = {o: outcomes.get(o, 0) for o in kept_names}
        dropped = {o: n for o, n in sorted(outcomes.items()) if o not in kept_names}
        stages[stage] = {
            "in": n_in,
            "kept": kept,
            "dropped": dropped,
            "reconciles": n_in == sum(outcomes.values()),
        }
    return stages


def reconciliation_errors(stages: Mapping[str, Mapping[str, Any]], shards: list[Mapping[str, Any]], corpus: str = "m3w") -> list[str]:
    errors = []
    for stage, s in stages.items():
        total = sum(s["kept"].values()) + sum(s["dropped"].values())
        if s["in"] != total:
            errors.append(f"{stage}: in={s['in']} but kept+dropped={total}")
    links = list(STAGE_LINKS)
    # Without the media split, every media record goes to the image join.
    links.append(("records", "media", "media_kind" if "media_kind" in stages else "media_records"))
    if "dedup_url" not in stages:  # dedup off: the kept documents go straight to the final check
        links.append(("documents", "kept", "post_dedup"))
    for stage, outcome, next_stage in links:
        if next_stage not in stages or stage not in stages:
            continue
        a = stages[stage]["kept"].get(outcome, 0)
        b = stages[next_stage]["in"]
        if a != b:
            errors.append(f"{stage}.{outcome}={a} but {next_stage}.in={b}")
    for stage, outcome, prefix in SAMPLE_CHECKS.get(corpus, ()):
        expected = stages.get(stage, {}).get("kept", {}).get(outcome, 0)
        written = sum(s["samples"] for s in shards if s["name"].startswith(prefix))
        if expected != written:
            errors.append(f"{stage}.{outcome}={expected} but {prefix or corpus} shards hold {written} samples")
    return errors


def build_manifest(
    counts: Mapping[tuple[str, str], int],
    shards: Iterable[Mapping[str, Any]],
    broken_files: Iterable[Mapping[str, Any]],
    inputs: Iterable[str],
    config: Mapping[str, Any],
    corpus: str = "m3w",
) -> dict[str, Any]:
    """The manifest: deterministic (no timestamps), so equal builds give equal manifests."""
    shard_list = sorted((dict(s) for s in shards), key=lambda s: s["name"])
    stages = counts_to_stages(counts)
    samples = sum(s["samples"] for s in shard_list)
    errors = reconciliation_errors(stages, shard_list, corpus)
    return {
        "corpus": corpus,
        "inputs": sorted(inputs),
        "config": dict(config),
        "stages": stages,
        "reconciles": not errors,
        "reconciliation_errors": errors,
        "broken_files": sorted((dict(b) for b in broken_files), key=lambda b: (b["warc_file"], b["reason"])),
        "shards": shard_list,
        "totals": {
            "shards": len(shard_list),
            "samples": samples,
            "images_stored": sum(s.get("images", 0) for s in shard_list),  # in this corpus's tars (video: frames)
            "image_refs_resolved": stages.get("image_refs", {}).get("kept", {}).get("resolved", 0),  # the build's, every corpus alike
        },
    }
