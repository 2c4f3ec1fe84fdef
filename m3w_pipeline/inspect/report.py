"""The corpus report: PNG plots (matplotlib, Agg) and one self-contained HTML page.

The page inlines every plot and thumbnail as a base64 data URI, so it can be mailed,
attached to an issue or opened from a bucket without its directory. It shows the counts,
the drop funnel from the manifest, the distributions, and a few documents rendered in
page order (text and image thumbnails).
"""
from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional

from m3w_pipeline.inspect.corpus import Corpus, Opener, group_samples, iter_m3w_documents, iter_tar_members, open_local, split_member_name

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
        ax.hist(values, weights=weights, bins=config.histogram_bins, color="#4C72B0")
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
    """One stacked bar per stage: kept outcomes in greens, drop reasons in reds, labelled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.7 * len(funnel) + 1.2))
    greens = ["#2ca25f", "#66c2a4", "#99d8c9"]
    reds = ["#de2d26", "#fb6a4a", "#fc9272", "#fcbba1", "#a50f15", "#ef3b2c", "#cb181d", "#fee0d2"]
    widest = max((s["in"] for s in funnel), default=0) or 1  # labels only where a segment has room
    for y, stage in enumerate(reversed(funnel)):
        left = 0
        segments = [(k, v, greens[i % len(greens)]) for i, (k, v) in enumerate(stage["kept"].items())]
        segments += [(k, v, reds[i % len(reds)]) for i, (k, v) in enumerate(stage["dropped"].items())]
        for name, value, color in segments:
            if value <= 0:
                continue
            ax.barh(y, value, left=left, color=color, edgecolor="white")
            if value / widest > 0.08:
                ax.text(left + value / 2, y, f"{name}\n{value:,}", ha="center", va="center", fontsize=7)
            left += value
    ax.set_yticks(range(len(funnel)), [f"{s['stage']} (in {s['in']:,})" for s in reversed(funnel)], fontsize=8)
    ax.set_xlabel("items (green: kept, red: dropped by reason)")
    ax.set_title("drop funnel", fontsize=10)
    return _save(fig, path, config.dpi)


@dataclass
class Plot:
    name: str
    title: str
    png: bytes


def write_plots(summary: Mapping[str, Any], out_dir: str, config: ReportConfig = ReportConfig()) -> list[Plot]:
    """Every plot the summary supports, as DIR/plots/NAME.png."""
    plot_dir = os.path.join(out_dir, PLOT_DIR)
    os.makedirs(plot_dir, exist_ok=True)
    plots = []
    if summary["funnel"]:
        plots.append(Plot("funnel", "Drop funnel", plot_funnel(summary["funnel"], os.path.join(plot_dir, "funnel.png"), config)))
    for name, dist in summary["distributions"].items():
        plots.append(Plot(name, dist["label"], plot_distribution(dist, os.path.join(plot_dir, f"{name}.png"), config)))
    for name, title in (("top_domains", "top domains"), ("languages", "languages"), ("image_formats", "original image formats")):
        if summary.get(name):
            plots.append(Plot(name, title, plot_top(summary[name], title, os.path.join(plot_dir, f"{name}.png"), config)))
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


def render_html(summary: Mapping[str, Any], plots: list[Plot], documents: list[RenderedDocument]) -> str:
    """The whole page as one string: no external resources."""
    counts = [(k, v) for k, v in summary["counts"].items() if v is not None]
    title = f"m3w corpus report: {summary.get('root') or ''}"
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>kind <b>{html.escape(summary['kind'])}</b> ({html.escape(summary['sample_unit'])}); "
        f"read from: {html.escape(str(summary['source']))}</p>",
        "<h2 id='counts'>Counts</h2>",
        _table(counts, ("count", "value")),
    ]
    funnel_plot = [p for p in plots if p.name == "funnel"]
    if summary["funnel"]:
        body.append("<h2 id='funnel'>Drop funnel</h2>")
        for p in funnel_plot:
            body.append(_plot_figure(p, " class='wide'"))
        body.append(_funnel_table(summary["funnel"]))
    if summary.get("broken_files"):
        body.append("<h3>Broken input files</h3>")
        body.append(_table([(b.get("warc_file", ""), b.get("reason", "")) for b in summary["broken_files"]], ("file", "reason")))
    body.append("<h2 id='distributions'>Distributions</h2>")
    if summary["distributions"]:
        body.append(_distribution_table(summary["distributions"]))
    if not summary.get("image_level", True):
        body.append("<p><i>Read from the Parquet indexes only: image sizes, aspect ratios and captions are not included.</i></p>")
    body.append("<div class='plots'>")
    for p in plots:
        if p.name != "funnel":
            body.append(_plot_figure(p))
    body.append("</div>")
    if documents:
        body.append(f"<h2 id='samples'>Sample {html.escape(summary['sample_unit'])}</h2>")
        body.extend(_document_html(d) for d in documents)
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(
    summary: Mapping[str, Any],
    out_dir: str,
    corpus: Optional[Corpus] = None,
    opener: Opener = open_local,
    config: ReportConfig = ReportConfig(),
) -> str:
    """Plots under DIR/plots/ and DIR/index.html; returns the HTML path. `out_dir` is local."""
    os.makedirs(out_dir, exist_ok=True)
    plots = write_plots(summary, out_dir, config)
    documents = render_documents(corpus, opener, config) if corpus is not None and config.sample_documents > 0 else []
    path = os.path.join(out_dir, HTML_NAME)
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_html(summary, plots, documents))
    return path
