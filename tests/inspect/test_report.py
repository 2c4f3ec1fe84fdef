"""The HTML report of a `build all` root: one section per corpus in its own unit, a log-scale funnel
(shown once: one run), quality-score histograms with the build's limits, rejects per reason; rendered
in headless Chromium and checked on the screenshot's pixels."""
from __future__ import annotations

import io
import json
import re
import shutil
from collections import Counter

import numpy as np
import pytest
from build_root import build_root, manifests
from PIL import Image
from test_stats import ARTIFACTS, PROBE, chromium, ensure_chromium

from m3w.cli import main


def _colour_bands(png: bytes, rgb: tuple[int, int, int], tolerance: int = 30) -> list[int]:
    """Widths (px) of the horizontal runs of `rgb`, one per band of rows that holds it (one per bar)."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    mask = np.abs(pixels - rgb).sum(axis=2) < tolerance
    per_row = mask.sum(axis=1)
    bands, current = [], 0
    for n in per_row:
        if n:
            current = max(current, int(n))
        elif current:
            bands.append(current)
            current = 0
    return bands + ([current] if current else [])


def test_funnel_is_log_scale_so_small_stages_stay_visible(tmp_path):
    from m3w_pipeline.inspect.report import KEPT_COLOUR, ReportConfig, plot_funnel

    def stage(name: str, n: int, dropped: int) -> dict:
        return {"stage": name, "in": n + dropped, "kept": {"kept": n}, "dropped": {"too-small": dropped} if dropped else {},
                "kept_total": n, "dropped_total": dropped}

    png = plot_funnel([stage("records", 1_000_000, 0), stage("video_samples", 3, 1)], str(tmp_path / "f.png"), ReportConfig())
    green = tuple(int(KEPT_COLOUR[i : i + 2], 16) for i in (1, 3, 5))
    big, small = _colour_bands(png, green)
    assert small / big > 0.05, (small, big)  # a linear axis would draw 3 of 1,000,000 as 3e-6 of the bar: nothing
    red = _colour_bands(png, (0xDE, 0x2D, 0x26))
    assert len(red) == 1 and red[0] >= 5  # the single dropped item is a visible bar too


@pytest.mark.slow
def test_root_report_sections_render_in_headless_chromium(request, tmp_path, capsys):
    from m3w_pipeline.inspect.report import LIMIT_COLOUR, SCORE_COLOUR

    root = build_root(request)
    truth = manifests(root)
    out = tmp_path / "report"
    capsys.readouterr()
    assert main(["stats", str(root), "--report", str(out), "--no-progress", "--report-samples", "3"]) == 0
    assert capsys.readouterr().err.strip().endswith(f"report: {out / 'index.html'}")
    html = (out / "index.html").read_text()

    # one section per corpus, each in its own unit
    sections = dict(zip(("m3w", "pairs", "video"), re.split(r"<h1 id='(?:m3w|pairs|video)-corpus'>", html)[1:]))
    assert list(sections) == ["m3w", "pairs", "video"]
    assert "images per document" in sections["m3w"]
    assert "caption words per pair" in sections["pairs"] and "Sample pairs" in sections["pairs"]
    assert "key frames per clip" in sections["video"] and "Sample clips" in sections["video"]
    assert not re.search(r"per document|Sample documents", sections["pairs"] + sections["video"])
    n_clips = truth["video"]["totals"]["samples"]
    assert f"<td>clips</td><td class='n'>{n_clips:,}</td>" in sections["video"]
    for kind in ("m3w", "pairs", "video"):
        assert sections[kind].count("<article class='doc'>") == min(3, truth[kind]["totals"]["samples"])

    # the funnel: drawn once (the corpora share one run), its table lists every stage
    assert re.findall(r"id='plot-([\w-]*funnel)'", html) == ["m3w-funnel"]
    assert "The same funnel as m3w's" in sections["pairs"] and "The same funnel as m3w's" in sections["video"]
    stages = truth["m3w"]["stages"]
    assert all(f"<td>{stage}</td>" in sections["m3w"] for stage in stages)

    # quality scores: M3W only, one row per score with the build's limit
    assert re.findall(r"id='plot-([\w-]*quality_scores)'", html) == ["m3w-quality_scores"]
    filters = truth["m3w"]["config"]["filters"]
    assert f"at most {filters['max_dup_5gram_char_fraction']:g} (filters.max_dup_5gram_char_fraction)" in sections["m3w"]
    assert len(re.findall(r"<td>at (?:most|least) [\d.e-]+ \(filters\.\w+(?:, off)?\)</td>", sections["m3w"])) == 16

    # rejects: every (stage, reason) of rejects.jsonl, at most 3 examples each, with the manifest's count
    rejects = [json.loads(line) for line in (root / "m3w" / "rejects.jsonl").read_text().splitlines()]
    per_reason = Counter((r["stage"], r["reason"]) for r in rejects)
    table = sections["m3w"].split("<table class='rejects'>")[1].split("</table>")[0]
    rows = re.findall(r"<tr><td>([\w-]+)</td><td>([\w-]+)</td><td class='n'>([\d,]+)</td><td>(.*?)</td></tr>", table)
    assert {(s, r) for s, r, _, _ in rows} == set(per_reason)
    for stage, reason, n, examples in rows:
        assert int(n.replace(",", "")) == stages[stage]["dropped"][reason]
        assert examples.count("<div class='reject'>") == min(3, per_reason[(stage, reason)])
    first = next(r for r in rejects if (r["stage"], r["reason"]) == (rows[0][0], rows[0][1]))
    assert first["key"] in rows[0][3]

    # self-contained
    assert not re.search(r"""(href|src)=['"]?(https?:|//|file:)""", html)

    reason = ensure_chromium()
    if reason:
        pytest.skip(reason)
    probe = out / "probe.html"
    probe.write_text(html.replace("</body>", PROBE + "</body>"))
    dom = chromium(tmp_path, "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stderr[-2000:]
    images = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    plots = {id_: (w, h) for cls, id_, w, h in images if cls == "plot"}
    assert len(plots) == len(list((out / "plots").glob("*.png")))
    assert all(w > 100 and h > 50 for w, h in plots.values()), plots
    assert plots["plot-m3w-quality_scores"][0] == Image.open(out / "plots" / "m3w-quality_scores.png").width

    # the screenshot: the top of the page holds the m3w funnel, rejects and quality scores
    shot = tmp_path / "report-root.png"
    run = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,5200", (out / "index.html").as_uri())
    assert shot.exists(), run.stderr[-2000:]
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "report-root.png")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int).reshape(-1, 3)

    def share(hex_colour: str) -> float:
        rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
        return float((np.abs(pixels - rgb).sum(axis=1) < 30).mean())

    assert share("#2ca25f") > 0.002 and share("#de2d26") > 0.0005  # funnel bars, kept and dropped
    assert share(SCORE_COLOUR) > 0.002  # the score histograms
    assert share(LIMIT_COLOUR) > 0.0002  # the limits' lines
