"""Content images, in place: recall, precision and order of `extract_page` and of trafilatura
(`include_images=True`) against hand-judged ground truth, with text F1 beside them.

    python benchmarks/bench_image_recall.py [--json] [--detail]

Ground truth is tests/data/content_images/truth.json (60 real pages of ../shared/corpus/html; how
it was judged is in the README next to it). Each truth image lists every URL the page gives for
it (src, srcset entries, lazy attributes, <picture> sources, noscript twin, linked full size). A
returned image matches a truth image when its URL, normalised (scheme and host lowercased,
spaces and non-ASCII percent-encoded as browsers send them, fragment dropped), equals one of the
truth image's candidates, also normalised. Each truth image can be matched once; a second
returned image for it (e.g. the lazy and the noscript URL of one picture) is a false positive.

* recall = matched truth images / truth images; precision = matched returned / returned,
  pooled over all pages; "per-page mean" averages the page values instead (pages with a truth
  image, resp. a returned image), so the 41-photo gallery page does not outweigh the others.
* order = pages whose matched images come out in truth order, over pages with >= 2 matches.
* text F1 as tests/extract/test_extract.py computes it (its functions, imported): bag-of-words
  token F1 against the article-extraction-benchmark body (aeb pages, mean over pages) and
  trafilatura's with/without snippet F1 (its eval pages, pooled). "ours" is the text nodes of
  `extract_page` joined; "trafilatura" is plain `trafilatura.extract(html, url=...)`.

--detail prints each page's misses and false positives (and, for ours, how many image elements
were left out for which reason); --json prints everything as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any, Callable, Optional
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "extract"))

import lxml.etree
import trafilatura
from test_extract import HTML_DIR, manifest, page_bytes, snippet_f1, token_f1

from m3w_pipeline.extract.page import extract_page

TRUTH = ROOT / "tests" / "data" / "content_images" / "truth.json"
# Characters left as they are when percent-encoding (everything URL syntax needs, and "%" so
# that already-encoded URLs stay the same).
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"


def normalise_url(url: str) -> str:
    """One spelling per URL: scheme/host lowercased, default port dropped, spaces and non-ASCII
    percent-encoded (IDNA host), fragment dropped. Idempotent."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        pass
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    port = parts.port if parts.port not in (None, default) else None
    netloc = host + (f":{port}" if port else "")
    path, query = (quote(p, safe=_URL_SAFE) for p in (parts.path or "/", parts.query))
    return urlunsplit((parts.scheme.lower(), netloc, path, query, ""))


def load_truth(path: Path = TRUTH) -> dict[str, dict[str, Any]]:
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- the two systems


@dataclass
class Run:
    """What one system returned for one page: image URLs in output order, and its text."""

    images: list[str]
    text: str
    dropped: dict[str, int] = field(default_factory=dict)  # image elements left out, by reason (ours only)


def run_ours(html: bytes, url: str) -> Run:
    page = extract_page(html, url)
    return Run([ref.url for ref in page.image_refs()], "\n".join(page.text_nodes()), dict(page.dropped_images))


def run_trafilatura(html: bytes, url: str) -> Run:
    """trafilatura as a user calls it; input decoded as tests/extract/test_extract.py does."""
    text = html.decode("utf-8", errors="replace")
    xml = trafilatura.extract(text, url=url, include_images=True, output_format="xml") or ""
    images: list[str] = []
    if xml:
        root = lxml.etree.fromstring(xml.encode("utf-8"))
        images = [urljoin(url, g.get("src")) for g in root.iter("graphic") if g.get("src")]
    return Run(images, trafilatura.extract(text, url=url) or "")


SYSTEMS: dict[str, Callable[[bytes, str], Run]] = {"ours": run_ours, "trafilatura": run_trafilatura}


# --------------------------------------------------------------------------- scoring


@dataclass
class PageScore:
    truth: int
    returned: int
    matched: int
    order_ok: Optional[bool]  # None when fewer than 2 images matched
    misses: list[int] = field(default_factory=list)  # indices into the page's truth images
    false_positives: list[str] = field(default_factory=list)
    text_f1: Optional[float] = None
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def recall(self) -> Optional[float]:
        return self.matched / self.truth if self.truth else None

    @property
    def precision(self) -> Optional[float]:
        return self.matched / self.returned if self.returned else None


def score_images(truth_images: list[dict[str, Any]], returned: list[str]) -> PageScore:
    """Match returned URLs to truth images (first unmatched truth image whose candidates hold the URL)."""
    candidates = [{normalise_url(c) for c in image["candidates"]} for image in truth_images]
    matched_truth: list[int] = []
    false_positives: list[str] = []
    for url in returned:
        norm = normalise_url(url)
        hit = next((i for i, cands in enumerate(candidates) if norm in cands and i not in matched_truth), None)
        if hit is None:
            false_positives.append(url)
        else:
            matched_truth.append(hit)
    order_ok = matched_truth == sorted(matched_truth) if len(matched_truth) >= 2 else None
    misses = [i for i in range(len(truth_images)) if i not in matched_truth]
    return PageScore(len(truth_images), len(returned), len(matched_truth), order_ok, misses, false_positives)


def text_truth() -> dict[str, tuple[str, Any]]:
    """Page file -> ("aeb", articleBody) or ("snippets", {"with": [...], "without": [...]})."""
    gt = HTML_DIR / "ground_truth"
    aeb = json.loads((gt / "aeb_ground-truth.subset.json").read_text(encoding="utf-8"))
    evaldata = json.loads((gt / "trafilatura_evaldata.subset.json").read_text(encoding="utf-8"))
    by_source = {entry["file"]: entry for entry in evaldata.values()}
    out: dict[str, tuple[str, Any]] = {}
    for name, row in manifest().items():
        source = Path(row["source_path"]).name
        if name.startswith("aeb__") and source.split(".")[0] in aeb:
            out[name] = ("aeb", aeb[source.split(".")[0]]["articleBody"])
        elif source in by_source:
            out[name] = ("snippets", by_source[source])
    return out


def evaluate(systems: dict[str, Callable[[bytes, str], Run]] = SYSTEMS, truth: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Per-page and overall scores of each system (PageScore objects under ["systems"][name]["pages"])."""
    truth = load_truth() if truth is None else truth
    texts = text_truth()
    report: dict[str, Any] = {"pages": len(truth), "truth_images": sum(len(p["images"]) for p in truth.values()), "systems": {}}
    for system, run in systems.items():
        pages: dict[str, PageScore] = {}
        snippet_runs: list[tuple[str, Any]] = []
        for name, entry in truth.items():
            result = run(page_bytes(name), entry["url"])
            score = score_images(entry["images"], result.images)
            score.dropped = result.dropped
            kind, gold = texts.get(name, (None, None))
            if kind == "aeb":
                score.text_f1 = token_f1(result.text, gold)
            elif kind == "snippets":
                score.text_f1 = snippet_f1([result.text], [gold])
                snippet_runs.append((result.text, gold))
            pages[name] = score
        overall = _overall(pages.values())
        aeb = [p.text_f1 for n, p in pages.items() if texts.get(n, ("",))[0] == "aeb"]
        overall["aeb_token_f1"] = mean(aeb) if aeb else None
        overall["snippet_f1"] = snippet_f1(*map(list, zip(*snippet_runs))) if snippet_runs else None
        report["systems"][system] = {"overall": overall, "pages": pages}
    return report


def _overall(pages: Any) -> dict[str, Any]:
    pages = list(pages)
    truth_n, returned, matched = (sum(getattr(p, k) for p in pages) for k in ("truth", "returned", "matched"))
    ordered = [p.order_ok for p in pages if p.order_ok is not None]
    recalls = [p.recall for p in pages if p.recall is not None]
    precisions = [p.precision for p in pages if p.precision is not None]
    return {
        "truth": truth_n,
        "returned": returned,
        "matched": matched,
        "recall": matched / truth_n if truth_n else None,
        "precision": matched / returned if returned else None,
        "macro_recall": mean(recalls) if recalls else None,
        "macro_precision": mean(precisions) if precisions else None,
        "order_pages": len(ordered),
        "order_ok_pages": sum(ordered),
        "order_accuracy": sum(ordered) / len(ordered) if ordered else None,
    }


# --------------------------------------------------------------------------- output


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def _short(name: str) -> str:
    return name[:13] if name.startswith("aeb__") else name.removeprefix("trafilatura__")[:28]


def print_table(report: dict[str, Any], truth: dict[str, Any], detail: bool) -> None:
    systems = list(report["systems"])
    head = f"{'page':<28} {'truth':>5} " + " ".join(f"{s[:11]:>11} {'R':>4} {'P':>4} {'ord':>3} {'txt':>4}" for s in systems)
    print(head)
    print("-" * len(head))
    for name in truth:
        cells = []
        for s in systems:
            p: PageScore = report["systems"][s]["pages"][name]
            order = "-" if p.order_ok is None else ("ok" if p.order_ok else "NO")
            cells.append(f"{p.matched:>5}/{p.returned:<5} {_fmt(p.recall):>4} {_fmt(p.precision):>4} {order:>3} {_fmt(p.text_f1):>4}")
        first = report["systems"][systems[0]]["pages"][name]
        print(f"{_short(name):<28} {first.truth:>5} " + " ".join(cells))
    print("-" * len(head))
    print(f"{report['pages']} pages, {report['truth_images']} content images")
    for s in systems:
        o = report["systems"][s]["overall"]
        print(
            f"{s:<12} recall {_fmt(o['recall'])} ({o['matched']}/{o['truth']})  precision {_fmt(o['precision'])} ({o['matched']}/{o['returned']})"
            f"  per-page mean: recall {_fmt(o['macro_recall'])}, precision {_fmt(o['macro_precision'])}"
            f"  order {o['order_ok_pages']}/{o['order_pages']} pages"
            f"  text: aeb token F1 {_fmt(o['aeb_token_f1'])}, snippet F1 {_fmt(o['snippet_f1'])}"
        )
    if detail:
        for s in systems:
            print(f"\n== {s}: misses (truth image: note) and false positives (returned URL)")
            for name, entry in truth.items():
                p = report["systems"][s]["pages"][name]
                if not p.misses and not p.false_positives:
                    continue
                print(f"{name}" + (f"  (left out: {p.dropped})" if p.dropped else ""))
                for i in p.misses:
                    image = entry["images"][i]
                    print(f"  miss #{i}: {image['note']} | {image['candidates'][0]}")
                for url in p.false_positives:
                    print(f"  fp: {url}")


def to_json(report: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in report.items() if k != "systems"}
    out["systems"] = {}
    for s, r in report["systems"].items():
        pages = {n: {**asdict(p), "recall": p.recall, "precision": p.precision} for n, p in r["pages"].items()}
        out["systems"][s] = {"overall": r["overall"], "pages": pages}
    return out


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    parser.add_argument("--detail", action="store_true", help="also list each page's misses and false positives")
    args = parser.parse_args(argv)
    truth = load_truth()
    report = evaluate(SYSTEMS, truth)
    if args.json:
        print(json.dumps(to_json(report), indent=1, ensure_ascii=False))
    else:
        print_table(report, truth, args.detail)
    return report


if __name__ == "__main__":
    main()
