"""A build over the real WARCs plus every class of hostile input exits 0, names each broken file,
stays under 1 GB peak RSS and lets no page run past the extraction budget (issue 11)."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
import zlib
from pathlib import Path

import brotli
from conftest import CORPUS

from helpers.warc_builder import response, write_warc

GOOD_PAGE = ("<html><head><title>Rivers</title></head><body><article>"
             + "".join(f"<p>The river {i} runs past the old mill and the long green hills of the valley.</p>" for i in range(12))
             + "</article></body></html>").encode()
SLOW_PAGE = ("<html><body><article>" + "".join(f"<p>Paragraph {i} of a long article about rivers and hills near town.</p>"
                                                for i in range(60_000)) + "</article></body></html>").encode()  # ~24 s unbounded (not fast)
SRCSET_PAGE = b"<html><body><article><p>A picture.</p><img src=a.jpg srcset=\"" + b"," * 20_000 + b"\"></article></body></html>"


def _raw_record(headers: list[str], body: bytes) -> bytes:
    return ("WARC/1.0\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode() + body + b"\r\n\r\n"


def _encoded(url: str, body: bytes, encoding: str) -> bytes:
    http = f"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    return _raw_record(["WARC-Type: response", f"WARC-Target-URI: {url}", "WARC-Date: 2024-01-01T00:00:00Z",
                        "WARC-Record-ID: <urn:uuid:b>", f"Content-Length: {len(http)}"], http)


PEAK_WRAPPER = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
                "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
CUT = ("record-cut-short", "invalid-record")  # a cut in a record's headers can read as a header without its length


def hostile_inputs(folder: Path) -> dict[str, tuple[str, ...]]:
    """file name -> the broken-file reasons it may be reported with (() when the file is whole)."""
    zeros = b"\0" * 300_000_000
    files = {
        "whirlwind-cut-1201.warc.gz": ((CORPUS / "warc" / "cc-whirlwind__whirlwind.warc.gz").read_bytes()[:1201], CUT),
        "no-target-uri.warc": (_raw_record(["WARC-Type: response", "Content-Length: 40"], b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 21),
                               ("invalid-record",)),
        "huge-length.warc": (_raw_record(["WARC-Type: resource", "WARC-Target-URI: https://e.org/",
                                          "Content-Length: 99999999999999999999999"], b"abc"), CUT),
        "bombs.warc": (_encoded("https://bomb.example/br", brotli.compress(zeros, quality=5), "br")
                       + _encoded("https://bomb.example/gz", gzip.compress(zeros, 9, mtime=0), "gzip")
                       + _encoded("https://bomb.example/deflate", zlib.compress(zeros, 9), "deflate"), ()),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    write_warc(folder / "slow-pages.warc.gz", [response("https://slow.example/table", SLOW_PAGE),
                                                response("https://slow.example/srcset", SRCSET_PAGE),
                                                response("https://slow.example/good", GOOD_PAGE)])
    return {name: reason for name, (_, reason) in files.items()}


def test_build_over_real_and_hostile_warcs_survives_bounded(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    expected_broken = hostile_inputs(folder)
    config = tmp_path / "c.toml"
    # trafilatura's full path (fast = false) takes ~24 s on SLOW_PAGE, far over a 3 s budget
    config.write_text("[extract]\ntimeout_s = 3.0\nfast = false\n")
    out = tmp_path / "out"
    # A fresh wrapper process runs the build, so its children's peak RSS is the build's alone
    # (this test process's own children include every earlier test's subprocesses).
    proc = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, sys.executable, "-m", "m3w", "build", "m3w", "--input",
                           str(CORPUS / "warc" / "*"), str(folder / "*"), "--output", str(out), "--config", str(config),
                           "--min-images", "0"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak_mb = int(proc.stdout.split("PEAK_KB ")[-1]) / 1024  # the largest process of the build, in MB
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["reconciles"], manifest["reconciliation_errors"]
    broken = {Path(b["warc_file"]).name: b["reason"] for b in manifest["broken_files"]}
    for name, reasons in expected_broken.items():
        if reasons:
            assert broken.get(name) in reasons, (name, broken)
        else:
            assert name not in broken, (name, broken)
    # the four broken files of the shared corpus are still named, with their reasons
    assert {n: r for n, r in broken.items() if n.startswith(("warcio__", "resiliparse__"))} == {
        "warcio__example-bad.warc.gz.bad": "not-per-record-gzip", "warcio__example-wrong-chunks.warc.gz": "invalid-record",
        "resiliparse__clipped.warc.gz": "record-cut-short", "warcio__example-trunc.warc": "content-encoding"}
    records = manifest["stages"]["records"]["dropped"]
    assert records.get("too-large", 0) >= 3  # the three bombs, each dropped before it could inflate
    pages = manifest["stages"]["pages"]
    assert pages["dropped"].get("extract-timeout", 0) >= 1  # the 60,000-paragraph page, stopped at the budget
    assert peak_mb < 1024, f"peak RSS {peak_mb:.0f} MB"
