"""Dedup inside `m3w build m3w`: planted URL, exact and near duplicates, and a logo on every page."""
from __future__ import annotations

import io
import json
import random

import webdataset as wds
from conftest import build
from PIL import Image

from helpers.warc_builder import article, response, write_warc

SUBJ = ["The old lighthouse keeper", "A group of students", "Our neighbour Maria", "The city council", "Two young engineers",
        "The village baker", "A retired teacher", "The museum curator", "Local fishermen", "The night nurse"]
VERB = ["repaired", "painted", "described", "photographed", "rebuilt", "measured", "cleaned", "mapped", "restored", "visited"]
OBJ = ["the broken clock tower", "a forgotten stone bridge", "three wooden boats", "the northern orchard",
       "an abandoned railway station", "the harbour walls", "a collection of old maps", "the tiny chapel"]
WHEN = ["last spring", "after the storm", "during a long winter", "before the festival", "on a rainy Tuesday", "in early autumn"]
LOGO = "https://cdn.example/brand/x91.png"


def paragraphs(rng: random.Random) -> list[str]:
    return [" ".join(f"{rng.choice(SUBJ)} {rng.choice(VERB)} {rng.choice(OBJ)} {rng.choice(WHEN)}." for _ in range(5)) for _ in range(3)]


def image(seed: int) -> bytes:
    """A distinct picture per seed (different perceptual hashes, not just different noise)."""
    rng = random.Random(seed)
    im = Image.new("RGB", (240, 180), tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(6):
        x, y = rng.randrange(200), rng.randrange(140)
        im.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + rng.randrange(20, 80), y + rng.randrange(20, 60)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def page(texts: list[str], photo: str) -> bytes:
    return article("Town notes", texts, [photo, LOGO, photo + "?second"])


def test_planted_duplicates_and_a_logo_on_every_page(tmp_path):
    rng = random.Random(3)
    texts = [paragraphs(rng) for _ in range(12)]
    records = [response(LOGO, image(99), "image/jpeg")]
    for i, t in enumerate(texts):
        photo, data = f"https://img.example/photo{i}.jpg", image(i)
        records += [response(f"https://blog.example/p{i}", page(t, photo)), response(photo, data, "image/jpeg"),
                    response(photo + "?second", data, "image/jpeg")]  # same picture twice in one page
    records.append(response("https://mirror.example/p0", page(texts[0], "https://img.example/photo0.jpg")))  # exact copy
    edited = [texts[1][0], texts[1][1], texts[1][2] + " A visiting choir sang in the square."]
    records.append(response("https://other.example/p1-copy", page(edited, "https://img.example/photo1.jpg")))  # near copy
    records.append(response("https://blog.example/p2", page(texts[2], "https://img.example/photo2.jpg")))  # re-capture
    crawl = write_warc(tmp_path / "dups.warc.gz", records)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"filters": {"min_words_for_repetition_filters": 100000}}))
    m = build("m3w", [str(crawl)], tmp_path / "out", "--config", str(config), "--min-words", "10")

    s = m["stages"]
    assert s["documents"]["kept"]["kept"] == 15
    assert s["dedup_url"]["dropped"] == {"duplicate-url": 1}
    assert s["dedup_text_exact"]["dropped"] == {"duplicate-text": 1}
    assert s["dedup_text_near"]["dropped"] == {"near-duplicate-text": 1}
    assert s["images_in_document"]["dropped"] == {"duplicate-sha256": 15}  # the ?second copy, in every page
    assert sum(s["images_hot"]["dropped"].values()) == 12  # the logo, from each of the 12 survivors
    assert m["totals"]["samples"] == 12 and m["reconciles"]
    samples = list(wds.WebDataset([str(p) for p in sorted((tmp_path / "out").glob("*.tar"))], shardshuffle=False))
    urls = sorted(json.loads(x["json"])["url"] for x in samples)
    # each cluster keeps its most recent capture (records later in the WARC are captured later)
    expected = ["https://mirror.example/p0", "https://other.example/p1-copy"] + [f"https://blog.example/p{i}" for i in range(2, 12)]
    assert urls == sorted(expected)
    for x in samples:
        doc = json.loads(x["json"])
        kept = [im["url"] for im in doc["images"] if im]
        assert LOGO not in kept and len(kept) == 1
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert {(r["stage"], r["reason"]) for r in rejects} >= {("dedup_text_exact", "duplicate-text"), ("dedup_url", "duplicate-url")}
