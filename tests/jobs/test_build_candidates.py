"""An archive holds the image variant the browser loaded, not always the one the page ranks best:
the build joins each image through every candidate URL (issue 11, a 2013 Wikipedia capture's shape)."""
from __future__ import annotations

import io
import json
import random
import tarfile

from conftest import build
from PIL import Image, ImageDraw

from helpers.warc_builder import response, write_warc

N = 11


def _jpeg(i: int) -> bytes:
    """A distinct picture per bridge (dedup drops near-identical images within a page)."""
    rng = random.Random(i)
    image = Image.new("RGB", (220, 165), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.randrange(200), rng.randrange(150)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.rectangle((x, y, x + rng.randrange(20, 90), y + rng.randrange(20, 70)), fill=colour)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _figure(i: int) -> str:
    base = f"//upload.wikimedia.org/wikipedia/commons/thumb/a/a{i}/Bridge_{i}.jpg"
    return (f'<div class="thumb"><img alt="Bridge {i}" src="{base}/220px-Bridge_{i}.jpg" width="220" height="165" '
            f'srcset="{base}/330px-Bridge_{i}.jpg 1.5x, {base}/440px-Bridge_{i}.jpg 2x">'
            f'<div class="thumbcaption">The bridge number {i} over the river, seen from the east bank.</div></div>'
            f"<p>{_prose(i)}</p>")


WORDS = ("stone timber arch river valley mason summer winter flood toll road cart village mill ferry oak iron rope "
         "builder bishop market harvest granite lime mortar span pier tower chapel meadow "
         "the the of of and and in to a was with for on by it is").split()


def _prose(i: int) -> str:
    rng = random.Random(1000 + i)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randrange(8, 14))).capitalize() + "." for _ in range(4)]
    return f"The bridge number {i} has its own story. " + " ".join(sentences)


def test_images_resolve_through_the_src_the_crawl_holds_when_srcset_ranks_higher(tmp_path):
    page = ("<html><head><title>Bridges of the valley</title></head><body><div id=content><h1>Bridges</h1>"
            + "".join(_figure(i) for i in range(N)) + "</div></body></html>").encode()
    records = [response("https://en.wikipedia.org/wiki/Bridges", page)]
    records += [response(f"https://upload.wikimedia.org/wikipedia/commons/thumb/a/a{i}/Bridge_{i}.jpg/220px-Bridge_{i}.jpg",
                         _jpeg(i), "image/jpeg") for i in range(N)]
    warc = write_warc(tmp_path / "wiki.warc.gz", records)
    manifest = build("m3w", [str(warc)], tmp_path / "out", "--min-words", "5")
    assert manifest["stages"]["image_refs"]["kept"].get("resolved") == N, manifest["stages"]["image_refs"]
    assert manifest["totals"]["samples"] == 1, manifest["stages"]
    with tarfile.open(next((tmp_path / "out").glob("*.tar"))) as tar:
        doc = json.loads(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith(".json"))).read())
    urls = [img["url"] for img in doc["images"] if img]
    assert urls == [f"https://upload.wikimedia.org/wikipedia/commons/thumb/a/a{i}/Bridge_{i}.jpg/220px-Bridge_{i}.jpg" for i in range(N)]
