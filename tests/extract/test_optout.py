"""Opt-out honoured before anything is taken: page headers and <meta> drop documents or images."""
from __future__ import annotations

import io

from conftest import build
from PIL import Image

from helpers.warc_builder import article, response, write_warc

PROSE = [
    "The river walk starts at the old mill and follows the water for three quiet miles past the meadows.",
    "Halfway along, a wooden bridge crosses to the island where herons nest every spring and summer.",
]


def jpeg(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (200, 150), colour).save(buf, "JPEG")
    return buf.getvalue()


def test_opted_out_pages_and_images_are_dropped_with_their_reason(tmp_path):
    pages = {
        "https://a.example/ok": ({}, ""),
        "https://a.example/header-noai": ({"X-Robots-Tag": "noai"}, ""),
        "https://a.example/header-tdm": ({"tdm-reservation": "1"}, ""),
        "https://a.example/meta-noai": ({}, '<meta name="robots" content="index, noai">'),
        "https://a.example/meta-tdm": ({}, '<meta name="tdm-reservation" content="1">'),
        "https://a.example/meta-noimageai": ({}, '<meta name="robots" content="noimageai">'),
    }
    records = []
    for i, (url, (headers, head)) in enumerate(pages.items()):
        img = f"https://img.example/{i}.jpg"
        records.append(response(url, article(f"Walk {i}", PROSE, [img], head), headers=headers))
        records.append(response(img, jpeg("red"), "image/jpeg"))
    warc = write_warc(tmp_path / "optout.warc.gz", records)
    m = build("m3w", [str(warc)], tmp_path / "out", "--min-words", "10")
    s = m["stages"]
    assert s["pages"]["dropped"] == {"opt-out-noai": 2, "opt-out-tdm": 2}
    assert s["image_refs"]["dropped"] == {"opt-out-noimageai": 1}
    assert s["documents"]["dropped"] == {"no-image": 1}  # the noimageai page lost its only image
    assert s["documents"]["kept"]["kept"] == 1 and m["reconciles"]
    assert s["media_records"]["dropped"]["unreferenced"] == 5  # opted-out pages' images never used
