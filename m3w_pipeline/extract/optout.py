"""Page-level opt-out: what a page (its HTTP headers and its own <meta>) says about AI use.

Checked before a page's content is used: `noai` or a TDMRep reservation drops the whole
document; `noimageai` keeps the text but none of the page's images. Media URLs are
checked separately, from their own response headers, by the fetcher.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from m3w_pipeline.core.nodes import ExtractedPage
from m3w_pipeline.media.fetch import opt_out_reason

AGENT_TOKEN = "m3w-bot"


@dataclass(frozen=True)
class PageOptOut:
    document: Optional[str] = None  # drop reason for the whole document, if any
    images: Optional[str] = None  # drop reason for every image of the page, if any


def page_opt_out(headers: Mapping[str, str], page: ExtractedPage, any_agent: bool = True) -> PageOptOut:
    header_reason = opt_out_reason(dict(headers), AGENT_TOKEN, any_agent)
    if header_reason.startswith("tdm") or page.tdm_reservation:
        return PageOptOut(document="opt-out-tdm")
    meta = set(page.robots)
    header_noai = header_reason and "noai" in header_reason.replace("noimageai", "")
    if header_noai or "noai" in meta:
        return PageOptOut(document="opt-out-noai")
    if header_reason or "noimageai" in meta:
        return PageOptOut(images="opt-out-noimageai")
    return PageOptOut()
