"""What `m3w stats` shows: the summary of merged statistics (counts, distributions, quality scores,
the manifest's funnel), labelled for the corpus kind, and the terminal table.

`stats` computes and merges; this module only presents, so the Beam job and the local path
share one summary.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Optional

from m3w_pipeline.inspect.corpus import Corpus
from m3w_pipeline.inspect.stats import DISTRIBUTIONS, QUALITY_SCORES, CorpusStats, StatsConfig, ValueCounts

# Funnel stages in the order a build runs them (m3w_pipeline.core.accounting lists what each
# keeps); stages another builder adds follow, sorted.
FUNNEL_ORDER = (
    "records", "media_kind", "pages", "page_images", "fetch", "image_refs", "media_records", "text_nodes", "image_nodes", "documents",
    "images_in_document", "dedup_url", "dedup_text_exact", "dedup_text_near", "images_hot", "dedup_image_sets",
    "post_dedup", "pair_documents", "pair_candidates", "align_samples", "ltip_samples", "video_refs",
    "video_media_records", "video_candidates", "video_samples",
)
SAMPLE_UNITS = {"m3w": "documents", "pairs": "pairs", "video": "clips"}
# What a distribution counts in pair and video corpora, where it differs from the M3W label.
KIND_LABELS: dict[str, dict[str, str]] = {
    "pairs": {
        "images_per_sample": "images per pair",
        "words_per_sample": "caption words per pair",
        "text_nodes_per_sample": "captions per pair",
        "tokens_per_sample": "caption tokens per pair",
        "caption_words": "caption length (words)",
    },
    "video": {
        "images_per_sample": "key frames per clip",
        "words_per_sample": "caption words per clip",
        "text_nodes_per_sample": "captions per clip",
        "tokens_per_sample": "caption tokens per clip",
        "image_width": "stored frame width (px)",
        "image_height": "stored frame height (px)",
        "original_width": "original video width (px)",
        "original_height": "original video height (px)",
        "aspect_ratio": "video aspect ratio (width / height)",
        "caption_words": "caption length (words)",
    },
}
# What each count holds, per kind (the JSON keeps the generic names; tables and the report show these);
# None: the count does not apply to the kind (it stays in the JSON, always 0 or a copy of another).
COUNT_LABELS: dict[str, dict[str, Optional[str]]] = {
    "m3w": {"samples": "documents"},
    "pairs": {"samples": "pairs", "text_nodes": "captions", "words": "caption words", "missing_images": None, "videos": None,
              "captioned_images": None},
    "video": {"samples": "clips", "images": "key frames", "text_nodes": "captions", "words": "caption words", "missing_images": None,
              "captioned_images": None},
}


def distribution_label(kind: str, name: str) -> str:
    return KIND_LABELS.get(kind, {}).get(name, DISTRIBUTIONS[name])


def count_label(kind: str, name: str) -> Optional[str]:
    """What the count `name` holds in a `kind` corpus; None where it does not apply."""
    return COUNT_LABELS.get(kind, {}).get(name, name)


def shown_counts(summary: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(label, value) of the counts that apply to the summary's kind and were measured."""
    labelled = ((count_label(summary["kind"], k), v) for k, v in summary["counts"].items() if v is not None)
    return [(label, v) for label, v in labelled if label is not None]


def funnel(manifest: Optional[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The manifest's stages in pipeline order: in, kept and dropped (by reason) per stage."""
    if not manifest or not manifest.get("stages"):
        return []
    stages = manifest["stages"]
    order = [s for s in FUNNEL_ORDER if s in stages] + sorted(s for s in stages if s not in FUNNEL_ORDER)
    rows = []
    for name in order:
        s = stages[name]
        kept, dropped = dict(s.get("kept", {})), dict(s.get("dropped", {}))
        rows.append(
            {
                "stage": name,
                "in": s.get("in", 0),
                "kept": kept,
                "dropped": dict(sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0]))),
                "kept_total": sum(kept.values()),
                "dropped_total": sum(dropped.values()),
            }
        )
    return rows


# Score column -> the filters setting that limits it, where the name does not say it (max_COLUMN / min_COLUMN).
_THRESHOLD_NAMES = {"lang_id_score": "min_language_score"}


def quality_thresholds(manifest: Optional[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Score column -> the build's limit on it (manifest `config.filters`), as `filter.filters` applies it:
    a `max_` limit is active below 1, a `min_` limit above 0."""
    filters = ((manifest or {}).get("config") or {}).get("filters") or {}
    out = {}
    for column in QUALITY_SCORES:
        names = [_THRESHOLD_NAMES[column]] if column in _THRESHOLD_NAMES else [f"max_{column}", f"min_{column}"]
        for name in names:
            value = filters.get(name)
            if isinstance(value, (int, float)):
                upper = name.startswith("max_")
                out[column] = {"setting": f"filters.{name}", "value": value, "keeps": "at most" if upper else "at least",
                               "active": value < 1.0 if upper else value > 0.0}
    return out


def summarize(
    stats: CorpusStats,
    corpus: Optional[Corpus] = None,
    config: StatsConfig = StatsConfig(),
    source: Optional[str] = None,
) -> dict[str, Any]:
    """The report: counts, distribution summaries (and histograms), top domains, languages, funnel."""
    manifest = corpus.manifest if corpus is not None else None
    dists = {}
    for name in DISTRIBUTIONS:
        vc = stats.dists.get(name, ValueCounts())
        if vc.n == 0:
            continue
        dists[name] = {"label": distribution_label(stats.kind, name), **vc.summary(), "histogram": vc.to_pairs()}
    return {
        "root": corpus.root if corpus is not None else None,
        "kind": stats.kind,
        "sample_unit": SAMPLE_UNITS[stats.kind],
        "source": source or config.source,
        "image_level": stats.image_level,
        "counts": {
            "shards": stats.shards,
            "samples": stats.samples,
            "images": stats.images,
            "missing_images": stats.missing_images,
            "videos": stats.videos,
            "words": stats.words,
            "text_nodes": stats.text_nodes,
            "tokens": stats.tokens if stats.dists["tokens_per_sample"].n else None,
            "captioned_images": stats.captioned_images if stats.image_level else None,
        },
        "distributions": dists,
        "top_domains": _top(stats.domains, config.top_n),
        "n_domains": len(stats.domains),
        "languages": _top(stats.languages, config.top_n),
        "image_formats": _top(stats.image_formats, config.top_n) if stats.image_level else [],
        "quality_scores": _quality_scores(stats, manifest),
        "identified_languages": _top(stats.identified_languages, config.top_n),
        "funnel": funnel(manifest),
        "broken_files": list((manifest or {}).get("broken_files", [])),
        "manifest_totals": (manifest or {}).get("totals"),
    }


def _quality_scores(stats: CorpusStats, manifest: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    thresholds = quality_thresholds(manifest)
    out = {}
    for name in QUALITY_SCORES:
        vc = stats.scores.get(name, ValueCounts())
        if vc.n:
            out[name] = {"label": name.replace("_", " "), **vc.summary(), "histogram": vc.to_pairs(), "threshold": thresholds.get(name)}
    return out


def _top(counter: Counter, n: int) -> list[list[Any]]:
    return [[k, v] for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))[:n]]


# ----------------------------------------------------------------------------- terminal table


def format_root_table(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """One section per corpus of a `build all` root; a funnel the corpora share (one run) is printed once."""
    sections, shown = [], None
    for kind, summary in summaries.items():
        same = shown is not None and summary["funnel"] == shown[1]
        text = format_table(summary, funnel=not same)
        if same:
            text += f"\n\nfunnel: the same as {shown[0]}'s (one run)"
        shown = shown or (kind, summary["funnel"])
        sections.append(f"=== {kind} ===\n{text}")
    return "\n\n".join(sections)


def format_table(summary: Mapping[str, Any], funnel: bool = True) -> str:
    """A plain-text report for the terminal."""
    lines = [f"corpus {summary['root'] or ''} ({summary['kind']}, read from: {summary['source']})", ""]
    lines.append("counts")
    lines += [f"  {label:<18} {value:>12,}" for label, value in shown_counts(summary)]
    if summary["distributions"]:
        lines += ["", "distributions"]
        lines.append(f"  {'':<36} {'n':>8} {'mean':>9} {'min':>8} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
        for d in summary["distributions"].values():
            lines.append(
                f"  {d['label']:<36} {d['n']:>8} {d['mean']:>9.2f} {_fmt(d['min']):>8} {_fmt(d['p50']):>8} "
                f"{_fmt(d['p90']):>8} {_fmt(d['p99']):>8} {_fmt(d['max']):>8}"
            )
    if not summary["image_level"]:
        lines.append("  (index only: image sizes, aspect ratios and captions need --source auto or tar)")
    if summary.get("quality_scores"):
        lines += ["", "quality scores (index)", f"  {'':<26} {'n':>8} {'mean':>7} {'p50':>7} {'p90':>7} {'max':>7}  build's limit"]
        for name, d in summary["quality_scores"].items():
            t = d["threshold"]
            limit = f"{t['keeps']} {t['value']:g} ({t['setting']})" + ("" if t["active"] else ", off") if t else "-"
            lines.append(f"  {name:<26} {d['n']:>8} {d['mean']:>7.3f} {_fmt(d['p50']):>7} {_fmt(d['p90']):>7} {_fmt(d['max']):>7}  {limit}")
    for title, rows in (("top domains", summary["top_domains"]), ("languages", summary["languages"]),
                        ("identified languages (index lang_id)", summary.get("identified_languages")), ("image formats", summary["image_formats"])):
        if rows:
            lines += ["", title]
            lines += [f"  {k or '(none)':<40} {v:>10,}" for k, v in rows]
    if summary["funnel"] and funnel:
        lines += ["", "funnel (manifest)"]
        for s in summary["funnel"]:
            kept = ", ".join(f"{k}={v}" for k, v in s["kept"].items())
            dropped = ", ".join(f"{k}={v}" for k, v in s["dropped"].items()) or "-"
            lines.append(f"  {s['stage']:<14} in={s['in']:<8} kept: {kept}; dropped: {dropped}")
    for b in summary["broken_files"] if funnel else ():
        lines.append(f"  broken file {b.get('warc_file')}: {b.get('reason')}")
    return "\n".join(lines)


def _fmt(x: Any) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else str(x)
