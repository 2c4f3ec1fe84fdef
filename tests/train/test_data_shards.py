"""Small M3W / pair / video shards written in the webdataset layouts, for the loader and trainer tests.

The helpers are imported by tests/test_data_*.py and tests/test_train_*.py; the tests here check
that the shards they write are what webdataset itself reads (so the loader tests test our loader,
not our writer).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (215, 35, 35), "green": (30, 150, 60), "blue": (35, 70, 215), "yellow": (240, 205, 25)}
SHAPES = ("square", "circle")


def key_of(*parts: object) -> str:
    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:24]


def jpeg(colour: str, shape: str = "square", size: tuple[int, int] = (40, 32), shift: int = 0) -> bytes:
    """A shape on a light background; `shift` moves it right (video frames)."""
    im = Image.new("RGB", size, (250, 250, 250))
    draw = ImageDraw.Draw(im)
    box = (size[0] // 4 + shift - 8, size[1] // 4, 3 * size[0] // 4 + shift - 8, 3 * size[1] // 4)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_tar(path: Path, samples: list[list[tuple[str, bytes]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for members in samples:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))
    return path


def m3w_members(key: str, items: list[object]) -> list[tuple[str, bytes]]:
    """items: str (a text node), ("img", colour, shape) (an image), or ("missing",) (an image not in the crawl)."""
    texts, images, files = [], [], []
    for pos, item in enumerate(items):
        if isinstance(item, str):
            texts.append(item)
            images.append(None)
        elif item[0] == "missing":
            texts.append(None)
            images.append({"status": "missing", "url": f"https://x/{pos}.jpg", "file": None})
        else:
            texts.append(None)
            images.append({"status": "ok", "url": f"https://x/{pos}.jpg", "file": f"{pos}.jpg"})
            files.append((f"{key}.{pos}.jpg", jpeg(item[1], item[2])))
    doc = {"schema": "m3w.document/1", "key": key, "url": f"https://example.com/{key}", "texts": texts, "images": images}
    return [(f"{key}.json", json.dumps(doc).encode())] + files


def pair_members(key: str, colour: str, shape: str) -> list[tuple[str, bytes]]:
    caption = f"a {colour} {shape}"
    return [(f"{key}.jpg", jpeg(colour, shape)), (f"{key}.txt", caption.encode()),
            (f"{key}.json", json.dumps({"key": key, "caption": caption}).encode())]


def video_members(key: str, colour: str, shape: str, n_frames: int) -> list[tuple[str, bytes]]:
    caption = f"a {colour} {shape} moves"
    frames = [{"file": f"{i:03d}.jpg", "timestamp": i * 0.5} for i in range(n_frames)]
    members = [(f"{key}.json", json.dumps({"key": key, "caption": caption, "frames": frames}).encode()),
               (f"{key}.txt", caption.encode()), (f"{key}.mp4", b"\x00\x00\x00\x18ftypmp42")]
    return members + [(f"{key}.{f['file']}", jpeg(colour, shape, (32, 32), shift=4 * i)) for i, f in enumerate(frames)]


def _attrs(i: int) -> tuple[str, str]:
    names = list(COLOURS)
    return names[i % len(names)], SHAPES[(i // len(names)) % len(SHAPES)]


def m3w_doc_items(i: int) -> list[object]:
    """A document with 1-3 images, each followed by text naming it, and some text before."""
    items: list[object] = [f"Document {i} begins with an introduction about shapes and colours."]
    for j in range(1 + i % 3):
        colour, shape = _attrs(i + j)
        items += [("img", colour, shape), f"The picture shows a {colour} {shape}."]
    if i % 4 == 3:
        items.insert(1, ("missing",))
    return items


def make_shards(root: Path, kind: str, n_shards: int, per_shard: int, prefix: str | None = None) -> str:
    """`n_shards` tars of `per_shard` samples each; returns a brace pattern over them."""
    prefix = prefix or kind
    for s in range(n_shards):
        samples = []
        for j in range(per_shard):
            i = s * per_shard + j
            key = key_of(kind, i)
            colour, shape = _attrs(i)
            if kind == "m3w":
                samples.append(m3w_members(key, m3w_doc_items(i)))
            elif kind == "pairs":
                samples.append(pair_members(key, colour, shape))
            else:
                samples.append(video_members(key, colour, shape, 2 + i % 4))
        write_tar(root / f"{prefix}-{s:05d}.tar", samples)
    return str(root / f"{prefix}-{{00000..{n_shards - 1:05d}}}.tar")


# --- the helpers write what webdataset reads -----------------------------------------------


def test_written_shards_read_back_with_webdataset(tmp_path):
    import webdataset as wds

    for kind in ("m3w", "pairs", "video"):
        pattern = make_shards(tmp_path / kind, kind, 2, 3)
        samples = list(wds.WebDataset(pattern, shardshuffle=False))
        assert len(samples) == 6
        first = samples[0]
        if kind == "m3w":
            doc = json.loads(first["json"])
            for pos, image in enumerate(doc["images"]):
                if image and image["status"] == "ok":
                    assert f"{pos}.jpg" in first
        elif kind == "pairs":
            assert {"jpg", "txt", "json"} <= set(first)
        else:
            assert {"json", "txt", "mp4", "000.jpg", "001.jpg"} <= set(first)


# --- a tiny training config over such shards ------------------------------------------------

TINY_MODEL = {
    "seed": 0,
    "builtin_lm": {"dim": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 128},
    "builtin_vision": {"image_size": 16, "patch_size": 8, "dim": 32, "depth": 1, "heads": 2},
    "resampler": {"n_latents": 4, "depth": 1, "heads": 2, "dim_head": 16, "max_frames": 4},
    "xattn": {"heads": 2, "dim_head": 16, "block_size": 4},
}


def tiny_corpus(root: Path) -> dict[str, str]:
    """M3W (3 shards), pairs (2 shards) and video (1 shard) patterns under `root`, plus held-out pairs."""
    return {
        "m3w": make_shards(root / "m3w", "m3w", 3, 6),
        "pairs": make_shards(root / "pairs", "pairs", 2, 8),
        "video": make_shards(root / "video", "video", 1, 6),
        "heldout": make_shards(root / "heldout", "pairs", 1, 8, prefix="heldout"),
    }


def tiny_train_dict(out_dir: Path, corpus: dict[str, str], steps: int = 4, **run: object) -> dict:
    """A complete TrainConfig as plain data: three sources, one held-out set, the tiny model."""
    return {
        "run": {"out_dir": str(out_dir), "steps": steps, "log_every": 1, "progress": False, "resume": "auto",
                "threads": 1, **run},
        "model": TINY_MODEL,
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "data": {"mode": "accumulate", "num_workers": 0, "sources": [
            {"name": "m3w", "kind": "m3w", "urls": corpus["m3w"], "batch_size": 3, "max_tokens": 48, "shuffle_buffer": 4},
            {"name": "align", "kind": "pairs", "urls": corpus["pairs"], "weight": 0.2, "batch_size": 4, "max_tokens": 24},
            {"name": "vtp", "kind": "video", "urls": corpus["video"], "weight": 0.03, "batch_size": 2, "max_frames": 2},
        ]},
        "eval": {"every": 2, "sets": [{"name": "heldout", "kind": "pairs", "urls": corpus["heldout"], "batch_size": 4,
                                       "batches": 2}]},
    }
