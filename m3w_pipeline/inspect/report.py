"""The corpus report: PNG plots (matplotlib, Agg) and one self-contained HTML page.

The page inlines every plot and thumbnail as a base64 data URI, so it can be mailed,
attached to an issue or opened from a bucket without its directory. It shows the counts,
the drop funnel from the manifest (log scale: a stage of 3 items stays visible next to one
of a million), a few rejects per drop reason (rejects.jsonl), the distributions, the
quality scores of the index with the build's limits marked, and a few samples rendered in
page order (text and image thumbnails). A `build all` root gets one page with a section
per corpus, each labelled in its own unit (documents, pairs, clips).
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, Sequence

from m3w_pipeline.inspect.corpus import (
    Corpus,
    Opener,
    RejectSample,
    group_samples,
    iter_m3w_documents,
    iter_tar_members,
    open_local,
    sample_rejects,
    split_member_name,
)
from m3w_pipeline.inspect.summary import FUNNEL_ORDER, shown_counts

PLOT_DIR = "plots"
HTML_NAME = "index.html"


@dataclass(frozen=True)
class ReportConfig:
    sample_documents: int = 5  # documents rendered at the end of the page
    max_text_chars: int = 700  # per text node in the rendered documents
    thumbnail_side: int = 240  # px, longest side of inlined thumbnails
    dpi: int = 100
    max_bars: int = 40  # distinct values drawn as bars; more become a histogram
    histogram_bins: int = 40
    score_columns: int = 4  # quality-score histograms per row of their grid
    rejects_per_reason: int = 3  # examples shown per (stage, reason)
    rejects_max_bytes: int = 4 << 20  # read of rejects.jsonl stops here


KEPT_COLOUR, DROPPED_COLOUR = "#2ca25f", "#de2d26"
SCORE_COLOUR, LIMIT_COLOUR = "#8172B3", "#d62728"


# ----------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    """matplotlib with the Agg backend (no display; safe in workers and CI)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    data = buf.getvalue()
    with open(path, "wb") as f:
        f.write(data)
    return data


def _weighted_hist(ax: Any, histogram: Sequence[Sequence[float]], config: ReportConfig, colour: str,
                   value_range: Optional[tuple[float, float]] = None) -> None:
    """An exact histogram ((value, count) pairs, as the summary keeps it) drawn in config.histogram_bins bins:
    the binned panels of the distributions and of the quality scores."""
    ax.hist([v for v, _ in histogram], weights=[c for _, c in histogram], bins=config.histogram_bins, range=value_range, color=colour)


def plot_distribution(dist: Mapping[str, Any], path: str, config: ReportConfig) -> bytes:
    """A distribution's exact histogram: bars per value when few, binned otherwise."""
    plt = _pyplot()
    values = [v for v, _ in dist["histogram"]]
    weights = [c for _, c in dist["histogram"]]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    integral = all(float(v).is_integer() for v in values)
    if integral and len(values) <= config.max_bars:
        # Unit-wide slots for a narrow range; for few values far apart, bars as wide as their closest gap allows.
        width = 0.8 if max(values) - min(values) < 60 else 0.8 * min(b - a for a, b in zip(values, values[1:]))
        ax.bar(values, weights, width=width, color="#4C72B0")
    else:
        _weighted_hist(ax, dist["histogram"], config, "#4C72B0")
    ax.axvline(dist["p50"], color="#C44E52", linestyle="--", linewidth=1, label=f"median {dist['p50']:g}")
    ax.set_xlabel(dist["label"])
    ax.set_ylabel("count")
    ax.set_title(f"{dist['label']} (n={dist['n']:,}, mean {dist['mean']:.2f})", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path, config.dpi)


def plot_top(rows: list[list[Any]], title: str, path: str, config: ReportConfig) -> bytes:
    """Horizontal bars for top-k lists (domains, languages)."""
    plt = _pyplot()
    labels = [str(k) or "(none)" for k, _ in rows][::-1]
    counts = [v for _, v in rows][::-1]
    fig, ax = plt.subplots(figsize=(6, max(1.6, 0.28 * len(rows) + 0.8)))
    ax.barh(labels, counts, color="#55A868")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("count")
    ax.tick_params(axis="y", labelsize=8)
    return _save(fig, path, config.dpi)


def plot_funnel(funnel: list[dict[str, Any]], path: str, config: ReportConfig) -> bytes:
    """Per stage, a kept bar (green) over a dropped bar (red) on a log axis, so stages of a few
    items stay visible next to stages of millions; the largest drop reasons are written beside."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(funnel) + 1.4))
    widest = max((max(s["kept_total"], s["dropped_total"]) for s in funnel), default=1) or 1
    height = 0.38
    for y, stage in enumerate(reversed(funnel)):
        for offset, total, colour, text in (
            (height / 2, stage["kept_total"], KEPT_COLOUR, _outcomes("kept", stage["kept_total"], stage["kept"])),
            (-height / 2, stage["dropped_total"], DROPPED_COLOUR, _outcomes("dropped", stage["dropped_total"], stage["dropped"])),
        ):
            if total > 0:  # log axis: bars start at 0.5, so a single item is a visible bar
                ax.barh(y + offset, total - 0.5, left=0.5, height=height, color=colour, edgecolor="white")
                ax.text(total * 1.15, y + offset, text, va="center", fontsize=7)
    ax.set_xscale("log")
    ax.set_xlim(0.5, widest * 40)  # room for the labels right of the longest bar
    ax.set_yticks(range(len(funnel)), [f"{s['stage']} (in {s['in']:,})" for s in reversed(funnel)], fontsize=8)
    ax.set_xlabel("items (log scale; green: kept, red: dropped)")
    ax.set_title("drop funnel", fontsize=10)
    ax.grid(axis="x", which="major", alpha=0.3)
    return _save(fig, path, config.dpi)


def _outcomes(verb: str, total: int, by_name: Mapping[str, int], shown: int = 3) -> str:
    if list(by_name) == [verb]:
        return f"{verb} {total:,}"
    names = ", ".join(f"{k} {v:,}" for k, v in list(by_name.items())[:shown])
    more = f", +{len(by_name) - shown} more" if len(by_name) > shown else ""
    return f"{verb} {total:,}: {names}{more}"


def plot_quality_scores(scores: Mapping[str, Mapping[str, Any]], path: str, config: ReportConfig) -> bytes:
    """A grid of histograms, one per index score column, with the build's limit as a vertical line
    (red and the rejected side shaded when the filter is on; grey dashed when it is off)."""
    plt = _pyplot()
    cols = config.score_columns
    rows = math.ceil(len(scores) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat[len(scores) :]:
        ax.set_visible(False)
    for ax, (name, d) in zip(axes.flat, scores.items()):
        values = [v for v, _ in d["histogram"]]
        limit = d.get("threshold")
        ends = values + ([limit["value"]] if limit else [])
        lo, hi = min(ends), max(ends)
        pad = max(hi - lo, 0.02) * 0.05
        _weighted_hist(ax, d["histogram"], config, SCORE_COLOUR, (lo - pad, hi + pad))
        if limit:
            if limit["active"]:
                ax.axvline(limit["value"], color=LIMIT_COLOUR, linewidth=2)
                rejected = (limit["value"], hi + pad) if limit["keeps"] == "at most" else (lo - pad, limit["value"])
                ax.axvspan(*rejected, color=LIMIT_COLOUR, alpha=0.12)
            else:
                ax.axvline(limit["value"], color="#888888", linewidth=1, linestyle="--")
            ax.set_xlabel(f"limit: {limit['keeps']} {limit['value']:g}" + ("" if limit["active"] else " (off)"), fontsize=7)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle("quality scores of the kept documents (index); red: the build's limit", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, config.dpi)


@dataclass
class Plot:
    name: str
    title: str
    png: bytes


def write_plots(summary: Mapping[str, Any], out_dir: str, config: ReportConfig = ReportConfig(), prefix: str = "", funnel: bool = True) -> list[Plot]:
    """Every plot the summary supports, as DIR/plots/PREFIXNAME.png."""
    plot_dir = os.path.join(out_dir, PLOT_DIR)
    os.makedirs(plot_dir, exist_ok=True)

    def where(name: str) -> str:
        return os.path.join(plot_dir, f"{prefix}{name}.png")

    plots = []
    if summary["funnel"] and funnel:
        plots.append(Plot(f"{prefix}funnel", "Drop funnel", plot_funnel(summary["funnel"], where("funnel"), config)))
    if summary.get("quality_scores"):
        png = plot_quality_scores(summary["quality_scores"], where("quality_scores"), config)
        plots.append(Plot(f"{prefix}quality_scores", "Quality scores", png))
    for name, dist in summary["distributions"].items():
        plots.append(Plot(f"{prefix}{name}", dist["label"], plot_distribution(dist, where(name), config)))
    for name, title in (
        ("top_domains", "top domains"),
        ("languages", "languages"),
        ("identified_languages", "identified languages (index lang_id)"),
        ("image_formats", "original image formats"),
    ):
        if summary.get(name):
            plots.append(Plot(f"{prefix}{name}", title, plot_top(summary[name], title, where(name), config)))
    return plots


# ----------------------------------------------------------------------------- rendered documents


@dataclass
class RenderedDocument:
    title: str
    url: str
    blocks: list[tuple[str, str]] = field(default_factory=list)  # ("text", str) | ("image", data URI) | ("missing", url)
    captions: dict[int, str] = field(default_factory=dict)  # block index -> alt / caption


def thumbnail_uri(data: bytes, side: int) -> Optional[str]:
    """A small JPEG data URI of image bytes, or None when they do not decode."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            img.thumbnail((side, side))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=80)
    except Exception:  # noqa: BLE001 - a broken image is validate's business; the report just skips it
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def render_documents(corpus: Corpus, opener: Opener = open_local, config: ReportConfig = ReportConfig()) -> list[RenderedDocument]:
    """The first documents of the corpus, in page order, ready for HTML."""
    return list(_first_items(corpus, opener, config))


def _first_items(corpus: Corpus, opener: Opener, config: ReportConfig) -> Iterator[RenderedDocument]:
    produced = 0
    for shard in corpus.shards:
        items = _render_m3w(shard, opener, config) if corpus.kind == "m3w" else _render_media(shard, opener, config)
        for item in items:
            if produced >= config.sample_documents:
                return
            produced += 1
            yield item


def _render_m3w(shard: Any, opener: Opener, config: ReportConfig) -> Iterator[RenderedDocument]:
    for item in iter_m3w_documents(shard, opener):
        doc = item.doc
        r = RenderedDocument(doc.get("title") or doc.get("url", ""), doc.get("url", ""))
        for position, (text, im) in enumerate(zip(doc.get("texts", []), doc.get("images", []))):
            if text is not None:
                r.blocks.append(("text", text[: config.max_text_chars] + ("…" if len(text) > config.max_text_chars else "")))
                continue
            data = item.image_bytes(position)
            uri = thumbnail_uri(data, config.thumbnail_side) if data else None
            caption = (im or {}).get("caption") or (im or {}).get("alt") or ""
            if uri:
                r.captions[len(r.blocks)] = caption
                r.blocks.append(("image", uri))
            else:
                r.blocks.append(("missing", (im or {}).get("url", "")))
        yield r


def _render_media(shard: Any, opener: Opener, config: ReportConfig) -> Iterator[RenderedDocument]:
    """Pairs / video samples: the (first) image and the caption."""
    import json

    with opener(shard.tar) as f:
        for sample in group_samples(iter_tar_members(f)):
            meta, caption, uri = {}, "", None
            for m in sample.members:
                suffix = split_member_name(m.name)[1].lower()
                if suffix == "json" and m.data:
                    try:
                        meta = json.loads(m.data)
                    except ValueError:
                        meta = {}
                elif suffix == "txt" and m.data:
                    caption = m.data.decode("utf-8", "replace")
                elif uri is None and suffix.rsplit(".", 1)[-1] in ("jpg", "jpeg", "png", "webp") and m.data:
                    uri = thumbnail_uri(m.data, config.thumbnail_side)
            r = RenderedDocument(meta.get("url") or sample.key, meta.get("url") or "")
            if uri:
                r.blocks.append(("image", uri))
            r.blocks.append(("text", caption or meta.get("caption") or ""))
            yield r


# ----------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; border: 1px solid #eee; padding: 6px; background: #fafafa; }
figure img.plot { max-width: 520px; display: block; } figure.wide img.plot { max-width: 1000px; }
figcaption { font-size: 12px; color: #555; }
article.doc { border: 1px solid #ccc; border-radius: 6px; padding: 10px 16px; margin: 14px 0; }
article.doc h3 { font-size: 15px; margin: 4px 0; } article.doc .url { font-size: 11px; color: #777; word-break: break-all; }
article.doc p { font-size: 13px; line-height: 1.45; }
article.doc .image { margin: 8px 0; font-size: 11px; color: #555; } article.doc img.thumb { display: block; border: 1px solid #ddd; }
.missing { font-size: 11px; color: #a00; }
table.rejects td { vertical-align: top; } .reject { font-size: 11px; margin: 2px 0; word-break: break-all; }
"""


def _table(rows: list[tuple[str, Any]], header: Optional[tuple[str, str]] = None) -> str:
    out = ["<table>"]
    if header:
        out.append(f"<tr><th>{html.escape(header[0])}</th><th>{html.escape(header[1])}</th></tr>")
    for name, value in rows:
        shown = f"{value:,}" if isinstance(value, int) else html.escape(str(value))
        out.append(f"<tr><td>{html.escape(str(name))}</td><td class='n'>{shown}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _funnel_table(funnel: list[dict[str, Any]]) -> str:
    out = ["<table><tr><th>stage</th><th>in</th><th>kept</th><th>dropped (by reason)</th></tr>"]
    for s in funnel:
        kept = ", ".join(f"{html.escape(k)}={v:,}" for k, v in s["kept"].items())
        dropped = ", ".join(f"{html.escape(k)}={v:,}" for k, v in s["dropped"].items()) or "-"
        out.append(f"<tr><td>{html.escape(s['stage'])}</td><td class='n'>{s['in']:,}</td><td>{kept}</td><td>{dropped}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _distribution_table(dists: Mapping[str, Any]) -> str:
    cols = ("n", "mean", "min", "p50", "p90", "p99", "max")
    out = ["<table><tr><th>distribution</th>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"]
    for d in dists.values():
        cells = "".join(f"<td class='n'>{d[c]:,}</td>" if isinstance(d[c], int) else f"<td class='n'>{d[c]:,.2f}</td>" for c in cols)
        out.append(f"<tr><td>{html.escape(d['label'])}</td>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _document_html(doc: RenderedDocument) -> str:
    parts = [f"<article class='doc'><h3>{html.escape(doc.title)}</h3><div class='url'>{html.escape(doc.url)}</div>"]
    for i, (kind, value) in enumerate(doc.blocks):
        if kind == "text":
            parts.append(f"<p>{html.escape(value)}</p>")
        elif kind == "image":
            caption = html.escape(doc.captions.get(i, ""))
            parts.append(f"<div class='image'><img class='thumb' src='{value}' alt='{caption}'>{caption}</div>")
        else:
            parts.append(f"<div class='missing'>[image not stored: {html.escape(value)}]</div>")
    parts.append("</article>")
    return "\n".join(parts)


def _plot_figure(p: Plot, attrs: str = "") -> str:
    img = f"<img class='plot' id='plot-{p.name}' alt='{html.escape(p.title)}' src='{_png_uri(p.png)}'>"
    return f"<figure{attrs}>{img}<figcaption>{html.escape(p.title)}</figcaption></figure>"


def _quality_table(scores: Mapping[str, Any]) -> str:
    out = ["<table><tr><th>score</th><th>n</th><th>mean</th><th>p50</th><th>p90</th><th>max</th><th>the build's limit</th></tr>"]
    for name, d in scores.items():
        t = d.get("threshold")
        limit = f"{t['keeps']} {t['value']:g} ({t['setting']}{'' if t['active'] else ', off'})" if t else "-"
        cells = "".join(f"<td class='n'>{_fmt(d[c])}</td>" for c in ("n", "mean", "p50", "p90", "max"))
        out.append(f"<tr><td>{html.escape(name)}</td>{cells}<td>{html.escape(limit)}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _fmt(x: Any) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:.4g}"


def _rejects_table(rejects: RejectSample, funnel: Sequence[Mapping[str, Any]]) -> str:
    """Per (stage, reason), in funnel order: how many the manifest counts, and the first few rejects."""
    counted = {(s["stage"], reason): n for s in funnel for reason, n in s["dropped"].items()}
    rank = {stage: i for i, stage in enumerate(FUNNEL_ORDER)}
    order = sorted(rejects.by_reason, key=lambda sr: (rank.get(sr[0], len(rank)), sr[0], -counted.get(sr, 0), sr[1]))
    out = ["<table class='rejects'><tr><th>stage</th><th>reason</th><th>dropped</th><th>examples (url, key, detail)</th></tr>"]
    for stage, reason in order:
        examples = "".join(
            f"<div class='reject'><code>{html.escape(r['url'])}</code> {html.escape(r['key'])}"
            + (f" <i>{html.escape(r['detail'])}</i>" if r["detail"] else "")
            + "</div>"
            for r in rejects.by_reason[(stage, reason)]
        )
        n = counted.get((stage, reason), rejects.seen[(stage, reason)])
        out.append(f"<tr><td>{html.escape(stage)}</td><td>{html.escape(reason)}</td><td class='n'>{n:,}</td><td>{examples}</td></tr>")
    out.append("</table>")
    if not rejects.complete:
        out.append("<p><i>rejects.jsonl was read only up to the report's byte cap.</i></p>")
    return "\n".join(out)


@dataclass
class Section:
    """One corpus on the page: its summary, plots, rendered samples and rejects."""

    name: str  # "" for a single corpus; the kind in a build root (ids and plot names get it as prefix)
    summary: Mapping[str, Any]
    plots: list[Plot]
    documents: list[RenderedDocument]
    rejects: Optional[RejectSample] = None
    funnel_shared_with: Optional[str] = None  # the section whose funnel this one's equals (one run: shown once)
    repetition_min_words: Optional[int] = None


def _section_html(sec: Section) -> list[str]:
    summary, p = sec.summary, f"{sec.name}-" if sec.name else ""
    kind = summary["kind"]
    counts = shown_counts(summary)
    body = []
    if sec.name:
        body.append(f"<h1 id='{p}corpus'>{html.escape(sec.name)}: {html.escape(str(summary.get('root') or ''))}</h1>")
    body += [
        f"<p>kind <b>{html.escape(kind)}</b> ({html.escape(summary['sample_unit'])}); read from: {html.escape(str(summary['source']))}</p>",
        f"<h2 id='{p}counts'>Counts</h2>",
        _table(counts, ("count", "value")),
    ]
    plots = {pl.name: pl for pl in sec.plots}
    if summary["funnel"]:
        body.append(f"<h2 id='{p}funnel'>Drop funnel</h2>")
        if sec.funnel_shared_with:
            body.append(f"<p>The same funnel as {html.escape(sec.funnel_shared_with)}'s: the corpora come from one run.</p>")
        else:
            if f"{p}funnel" in plots:
                body.append(_plot_figure(plots[f"{p}funnel"], " class='wide'"))
            body.append(_funnel_table(summary["funnel"]))
    if sec.rejects is not None and sec.rejects.by_reason:
        body.append(f"<h2 id='{p}rejects'>Rejects, a few per reason</h2>")
        body.append(_rejects_table(sec.rejects, summary["funnel"]))
    if summary.get("broken_files") and not sec.funnel_shared_with:
        body.append("<h3>Broken input files</h3>")
        body.append(_table([(b.get("warc_file", ""), b.get("reason", "")) for b in summary["broken_files"]], ("file", "reason")))
    if summary.get("quality_scores"):
        body.append(f"<h2 id='{p}quality'>Quality scores</h2>")
        note = "Scores of the kept documents, from the Parquet index; the red line is the build's limit (manifest config), "
        note += "the shaded side is what it drops."
        if sec.repetition_min_words:
            note += f" Repetition limits apply to documents of at least {sec.repetition_min_words} words (filters.min_words_for_repetition_filters)."
        body.append(f"<p>{html.escape(note)}</p>")
        if f"{p}quality_scores" in plots:
            body.append(_plot_figure(plots[f"{p}quality_scores"], " class='wide'"))
        body.append(_quality_table(summary["quality_scores"]))
    body.append(f"<h2 id='{p}distributions'>Distributions</h2>")
    if summary["distributions"]:
        body.append(_distribution_table(summary["distributions"]))
    if not summary.get("image_level", True):
        body.append("<p><i>Read from the Parquet indexes only: image sizes, aspect ratios and captions are not included.</i></p>")
    body.append("<div class='plots'>")
    body += [_plot_figure(pl) for name, pl in plots.items() if name not in (f"{p}funnel", f"{p}quality_scores")]
    body.append("</div>")
    if sec.documents:
        body.append(f"<h2 id='{p}samples'>Sample {html.escape(summary['sample_unit'])}</h2>")
        body.extend(_document_html(d) for d in sec.documents)
    return body


def render_html(sections: Sequence[Section], title: str) -> str:
    """The whole page as one string: no external resources."""
    body = [f"<h1>{html.escape(title)}</h1>"] if len(sections) > 1 or not sections[0].name else []
    if len(sections) > 1:
        body.append("<p>" + " · ".join(f"<a href='#{s.name}-corpus'>{html.escape(s.name)}</a>" for s in sections) + "</p>")
    for sec in sections:
        body += _section_html(sec)
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def build_section(
    summary: Mapping[str, Any],
    out_dir: str,
    corpus: Optional[Corpus] = None,
    opener: Opener = open_local,
    config: ReportConfig = ReportConfig(),
    name: str = "",
    funnel_shared_with: Optional[str] = None,
) -> Section:
    """Plots (DIR/plots/), rendered samples and rejects of one corpus."""
    plots = write_plots(summary, out_dir, config, f"{name}-" if name else "", funnel=funnel_shared_with is None)
    documents = render_documents(corpus, opener, config) if corpus is not None and config.sample_documents > 0 else []
    rejects = sample_rejects(corpus.root, opener, config.rejects_per_reason, config.rejects_max_bytes) if corpus is not None else None
    filters = ((corpus.manifest or {}).get("config") or {}).get("filters") or {} if corpus is not None else {}
    return Section(name, summary, plots, documents, rejects, funnel_shared_with, filters.get("min_words_for_repetition_filters"))


def write_report(
    summary: Mapping[str, Any],
    out_dir: str,
    corpus: Optional[Corpus] = None,
    opener: Opener = open_local,
    config: ReportConfig = ReportConfig(),
) -> str:
    """Plots under DIR/plots/ and DIR/index.html; returns the HTML path. `out_dir` is local."""
    os.makedirs(out_dir, exist_ok=True)
    section = build_section(summary, out_dir, corpus, opener, config)
    return _write_page([section], f"m3w corpus report: {summary.get('root') or ''}", out_dir)


def write_root_report(
    corpora: Mapping[str, tuple[Mapping[str, Any], Optional[Corpus]]],
    out_dir: str,
    root: str,
    opener: Opener = open_local,
    config: ReportConfig = ReportConfig(),
) -> str:
    """One page for a `build all` root: a section per corpus (kind -> (summary, corpus)), the shared funnel once."""
    os.makedirs(out_dir, exist_ok=True)
    sections: list[Section] = []
    for name, (summary, corpus) in corpora.items():
        shared = next((s.name for s in sections if s.summary["funnel"] == summary["funnel"] and not s.funnel_shared_with), None)
        sections.append(build_section(summary, out_dir, corpus, opener, config, name, shared if summary["funnel"] else None))
    return _write_page(sections, f"m3w build report: {root}", out_dir)


def _write_page(sections: Sequence[Section], title: str, out_dir: str) -> str:
    path = os.path.join(out_dir, HTML_NAME)
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_html(sections, title))
    return path
