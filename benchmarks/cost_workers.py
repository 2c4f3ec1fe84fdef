"""The timed runs of the cost comparison; each runs inside the venv of the tool it calls.

    <datatrove venv>/python cost_workers.py datatrove WARC OUT
    <img2dataset venv>/python cost_workers.py img2dataset PHOTOS OUT --side 512 --quality 90
    <our venv>/python cost_workers.py m3w-images PHOTOS OUT [--exact]

Only the standard library is imported at module level, so one file serves all three venvs; each
command imports its tool, does the work and prints one JSON line of counts and seconds. The image
commands time only the loop over bytes already in memory (after a short warm-up), then write every
output image to OUT for the harness to check; the text command is timed whole by the harness.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

_WARMUP_IMAGES = 5


def run_datatrove(warc: Path, out: Path, timeout: float) -> dict:
    """WarcReader -> Trafilatura -> JsonlWriter in one task on one worker (this process)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import JsonlWriter

    # trafilatura.extract's own defaults: datatrove's step defaults to favour_precision=True and
    # deduplicate=True, whose cross-document paragraph cache would make repeated captures cheaper.
    extractor = Trafilatura(favour_precision=False, deduplicate=False, timeout=timeout)
    executor = LocalPipelineExecutor(
        pipeline=[WarcReader(str(warc.parent), glob_pattern=warc.name), extractor, JsonlWriter(str(out / "output"))],
        tasks=1,
        workers=1,
        logging_dir=str(out / "logs"),
        skip_completed=False,
    )
    executor.run()
    stats = json.loads((out / "logs" / "stats.json").read_text())
    reader, extract = stats[0]["stats"], stats[1]["stats"]
    return {
        "docs": reader.get("documents", {}).get("total", 0),
        "extracted": extract.get("extracted", {}).get("total", 0) if isinstance(extract.get("extracted"), dict) else extract.get("extracted", 0),
        "timeouts": extract.get("timeout", 0),
        "stats": {"reader": reader, "extractor": extract},
    }


def _load(photos: Path) -> list[tuple[str, bytes]]:
    return [(path.name, path.read_bytes()) for path in sorted(photos.glob("*.jpg"))]


def _timed_loop(items: list[tuple[str, bytes]], fn) -> tuple[list, float, float]:
    for _name, data in items[:_WARMUP_IMAGES]:
        fn(data)
    wall, cpu = time.perf_counter(), time.process_time()
    results = [fn(data) for _name, data in items]
    return results, time.perf_counter() - wall, time.process_time() - cpu


def run_img2dataset(photos: Path, out: Path, side: int, quality: int) -> dict:
    """img2dataset's Resizer: keep_ratio_largest to `side`, JPEG at `quality`, OpenCV on one thread."""
    import cv2
    from img2dataset.resizer import ResizeMode, Resizer

    cv2.setNumThreads(1)
    resizer = Resizer(image_size=side, resize_mode=ResizeMode.keep_ratio_largest, resize_only_if_bigger=True, encode_quality=quality)
    items = _load(photos)
    results, wall, cpu = _timed_loop(items, lambda data: resizer(io.BytesIO(data)))
    errors = 0
    for (name, _data), (image, width, height, *_rest, error) in zip(items, results):
        if error is not None:
            errors += 1
            continue
        (out / name).write_bytes(image)
        (out / (name + ".size")).write_text(f"{width} {height}")
    return {"images": len(items), "errors": errors, "wall_s": wall, "cpu_s": cpu}


def run_m3w_images(photos: Path, out: Path, exact: bool) -> dict:
    """Our process_image (default ImageConfig: long side 512, JPEG quality 90), or its exact path."""
    from m3w_pipeline.media.images import process_image

    items = _load(photos)
    results, wall, cpu = _timed_loop(items, (lambda data: process_image(data, exact=True)) if exact else process_image)
    errors = 0
    for (name, _data), result in zip(items, results):
        if result.image is None:
            errors += 1
            continue
        (out / name).write_bytes(result.image.data)
        (out / (name + ".size")).write_text(f"{result.image.width} {result.image.height}")
        (out / (name + ".phash")).write_text(result.image.phash)
    return {"images": len(items), "errors": errors, "wall_s": wall, "cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    text = sub.add_parser("datatrove")
    text.add_argument("warc", type=Path)
    text.add_argument("out", type=Path)
    text.add_argument("--timeout", type=float, default=30.0)
    i2d = sub.add_parser("img2dataset")
    ours = sub.add_parser("m3w-images")
    for p in (i2d, ours):
        p.add_argument("photos", type=Path)
        p.add_argument("out", type=Path)
    i2d.add_argument("--side", type=int, default=512)
    i2d.add_argument("--quality", type=int, default=90)
    ours.add_argument("--exact", action="store_true", help="full-size decode (no JPEG draft): the reference path")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "datatrove":
        result = run_datatrove(args.warc, args.out, args.timeout)
    elif args.command == "img2dataset":
        result = run_img2dataset(args.photos, args.out, args.side, args.quality)
    else:
        result = run_m3w_images(args.photos, args.out, args.exact)
    result["pid"] = os.getpid()
    print(json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
