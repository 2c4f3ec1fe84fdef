"""Image bytes through the build's ship-bytes joins (beam_jobs/image_bytes.py) on a real crawl: the
2014 Heritrix capture of gov.uk pages in ../shared/corpus. Documents travel with image metadata only
and the bytes meet them again in the shard writer; every image member of the written shard must be
exactly what process_image makes of the WARC record for its URL, read here without Beam."""
from __future__ import annotations

import hashlib
import json
import tarfile

import pytest
from conftest import CORPUS, build

from m3w_pipeline.core.config import ImageConfig
from m3w_pipeline.media.images import process_image
from m3w_pipeline.read.warc import MediaRecord, capture_order, iter_warc

WARC = CORPUS / "warc" / "ukwa__BL-20140325121225068-00000-32090_opera_8443.warc.gz"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not WARC.is_file(), reason=f"shared corpus not found at {CORPUS}")]


def processed_by_url() -> dict[str, bytes]:
    """URL -> process_image bytes of its oldest capture, straight from the WARC."""
    records: dict[str, MediaRecord] = {}
    with open(WARC, "rb") as f:
        for item in iter_warc(f, str(WARC)):
            if isinstance(item, MediaRecord) and (item.url not in records or capture_order(item) < capture_order(records[item.url])):
                records[item.url] = item
    out = {}
    for url, record in records.items():
        result = process_image(record.data, ImageConfig())
        if result.image is not None:
            out[url] = result.image.data
    return out


def test_every_image_member_is_the_processed_record_of_its_url(tmp_path):
    manifests = build("all", [str(WARC)], tmp_path)
    m3w = manifests["m3w"]
    assert m3w["totals"]["samples"] == 1
    assert m3w["stages"]["image_refs"]["kept"] == {"missing": 12, "resolved": 6}
    expected = processed_by_url()
    assert len(expected) == 6  # the crawl's decodable images
    with tarfile.open(tmp_path / "m3w" / "m3w-00000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    (doc_name,) = [n for n in members if n.endswith(".json")]
    doc = json.loads(members[doc_name])
    key = doc_name[: -len(".json")]
    images = [im for im in doc["images"] if im is not None]
    assert len(images) == 6 and len(members) == 7  # the document and one member per image, none lost or extra
    for image in images:
        data = members[f"{key}.{image['file']}"]
        assert data == expected[image["url"]], image["url"]
        assert hashlib.sha256(data).hexdigest() == image["sha256"]
    shipped = sum(len(members[f"{key}.{im['file']}"]) for im in images)
    assert shipped == sum(len(expected[im["url"]]) for im in images) == 81_849
    with tarfile.open(tmp_path / "pairs" / "ltip-00000.tar") as tar:
        assert tar.getmembers() == []  # no pair passes its filters in this crawl: nothing shipped there
