"""Each shard's info counts the images its tar stores, and the manifest's totals say both numbers:
images stored in the corpus's tars, and image references the build resolved (every corpus alike)."""
from __future__ import annotations

import io
import tarfile

from PIL import Image

from m3w_pipeline.core.accounting import build_manifest
from m3w_pipeline.core.config import PairConfig
from m3w_pipeline.core.document import assemble_document
from m3w_pipeline.core.nodes import ExtractedPage, ImageRef, Node
from m3w_pipeline.core.web import Provenance
from m3w_pipeline.media.images import process_image
from m3w_pipeline.write.pair_shards import write_pair_shard
from m3w_pipeline.write.pairs import extract_pairs
from m3w_pipeline.write.shards import write_m3w_shard

PROV = Provenance("crawl-00000.warc.gz", 100, 2000, "<urn:uuid:1>", "2024-03-04T10:00:00Z")


def jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (300, 200), colour).save(out, "JPEG")
    return out.getvalue()


def document(key: str, results: dict):
    nodes = [Node("text", text="Cards on a table, photographed one by one for the catalogue.")]
    nodes += [Node("image", image=ImageRef(f"https://cdn.example/{key}/{i}.jpg", alt=f"A card, number {i}, on a white table")) for i in range(3)]
    doc, _ = assemble_document(key, ExtractedPage(f"https://cards.example/{key}", nodes, lang="en"), PROV, {i + 1: r for i, r in results.items()})
    return doc


def image_members(data: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return sum(1 for m in tar.getmembers() if m.name.endswith((".jpg", ".png", ".webp")))


def test_shards_count_the_images_they_store_and_the_manifest_says_both_totals():
    red, blue = process_image(jpeg((200, 30, 30))), process_image(jpeg((30, 30, 200)))
    docs = [document("a" * 24, {0: red, 1: blue}), document("b" * 24, {0: red})]  # image 2 missing: not stored
    m3w = io.BytesIO()
    info, _ = write_m3w_shard(docs, "m3w-00000", m3w)
    assert info.images == image_members(m3w.getvalue()) == 3
    pairs, _ = extract_pairs(docs[0], PairConfig(ltip=False))
    paired = io.BytesIO()
    pair_info, table = write_pair_shard(pairs, "align-00000", paired)
    assert pair_info.images == image_members(paired.getvalue()) == pair_info.samples == 2 < table.num_rows  # the failed row stores none
    counts = {("image_refs", "in"): 6, ("image_refs", "resolved"): 3, ("image_refs", "missing"): 3}
    manifest = build_manifest(counts, [vars(info)], [], ["x.warc.gz"], {})
    assert manifest["totals"] == {"shards": 1, "samples": 2, "images_stored": 3, "image_refs_resolved": 3}
