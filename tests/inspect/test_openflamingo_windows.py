"""`export mmc4 --window-tokens`: documents cut so every image lies inside OpenFlamingo's token window,
and the count of what OpenFlamingo's loader would drop (the loader itself runs in
test_openflamingo_loaders.py, slow)."""
from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import pytest
from test_export import export
from test_stats import handmade_corpus

from m3w_pipeline.inspect.openflamingo import LoaderLosses, TokenCounter, loader_text, windows


def read_tar_samples(directory: Path) -> dict[str, dict]:
    out = {}
    for tar_path in sorted(directory.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                assert m.name.endswith(".json") and m.name.count(".") == 1  # webdataset keys: no dot before the suffix
                out[m.name[: -len(".json")]] = json.loads(tar.extractfile(m).read())
    return out


def byte_positions(text: str) -> list[int]:
    """<image> positions counted independently: BOS, then one per UTF-8 byte, one per special token."""
    positions, n = [], 1
    for piece in re.split(r"(<image>|<\|endofchunk\|>|</s>)", text):
        if piece in ("<image>", "<|endofchunk|>", "</s>"):
            positions += [n] if piece == "<image>" else []
            n += 1
        else:
            n += len(piece.encode("utf-8"))
    return positions


def test_loader_text_is_openflamingos_format():
    text = loader_text(["intro", "cat text", "", "dog text"], [1, 2, 3], "</s>")
    assert text == "intro<image>cat text<|endofchunk|><image><|endofchunk|><image>dog text<|endofchunk|></s>"
    assert loader_text(["a", "b"], [0], "</s>") == "<image>a b<|endofchunk|></s>"


def test_windows_keep_every_image_inside_and_drop_only_leading_text():
    counter = TokenCounter()
    texts = ["x" * 100, "first image text " * 3, "y" * 300, "second", "z" * 40, "third", "w" * 500]
    image_at = {1: 0, 3: 1, 5: 2}
    runs, dropped = windows(texts, image_at, counter, 128, 6)
    assert runs == [[0, 1, 2], [3, 4, 5, 6]]  # 300 y's overflow after image 0; images 1 and 2 fit one window
    assert dropped == 0
    for run in runs:
        text = loader_text([texts[t] for t in run], [k for k, t in enumerate(run) if t in image_at], "</s>")
        assert all(p + 1 < 128 for p in byte_positions(text))
    # leading text that cannot fit before the first image is given up (and counted), whole nodes from the front
    runs, dropped = windows(["a" * 200, "b" * 50, "img"], {2: 0}, counter, 128, 6)
    assert runs == [[1, 2]] and dropped == 1
    # at most max_images per window
    runs, _ = windows(["t"] * 5, {i: i for i in range(5)}, counter, 1000, 2)
    assert runs == [[0, 1], [2, 3], [4]]
    # text after the last image that fits nowhere with an image is dropped too
    assert windows(["only text", "more"], {}, counter, 128, 6) == ([], 2)


def test_loader_losses_counts_each_reason():
    counter = TokenCounter()
    big, small = 20_000, 5_000
    losses = LoaderLosses(counter=counter.name)

    def sample(texts, matched):
        return {"text_list": texts, "image_info": [{"matched_text_index": m} for m in matched]}

    losses.add(sample(["a", "b"], [0, 1]), [small, small], counter)  # every image under the 10 KB floor
    losses.add(sample(["x" * 400, "late"], [1]), [big], counter)  # the first <image> is past 256 tokens
    losses.add(sample(["text", ""], [1]), [big], counter)  # the only image is the last node
    losses.add(sample(["one"], [0]), [big], counter)  # one image: kept half the time
    losses.add(sample([f"t{i}" for i in range(8)], list(range(8))), [big] * 7 + [small], counter)  # 7 big: one past 6
    out = losses.to_json()
    assert out["samples"] == 5 and out["images"] == 2 + 1 + 1 + 1 + 8
    assert out["samples_never_trained_on"] == {"all-images-under-10kb": 1, "first-image-past-window": 1, "only-image-is-last": 1}
    assert out["samples_trainable"] == 2 and out["single_image_samples_kept_half_the_time"] == 1
    assert out["images_never_shown"] == {"under-10kb": 3, "past-window": 1, "past-max-images": 1}
    assert out["images_shown_without_text_after"] == 1
    assert 0 < out["text_tokens_in_trained_windows"] < out["text_tokens"]
    one = LoaderLosses()
    one.add(sample(["hello", "world"], [0]), [big], counter)  # BOS <image> "hello world" <|endofchunk|> EOS
    assert one.to_json()["text_tokens"] == one.to_json()["text_tokens_in_trained_windows"] == 1 + 11 + 1 + 1
    one.add(sample(["x" * 300, "late"], [1]), [big], counter)  # 306 text tokens, none in a trained window
    assert one.to_json()["text_tokens"] == 14 + 1 + 300 + 4 + 2 and one.to_json()["text_tokens_in_trained_windows"] == 14


@pytest.mark.parametrize("window", [48, 96])
def test_export_mmc4_windows_keep_every_image_once_and_inside(tmp_path_factory, tmp_path, window):
    source = handmade_corpus(tmp_path_factory)
    whole = export("mmc4", source, tmp_path / "whole")
    cut = export("mmc4", source, tmp_path / "cut", "--window-tokens", str(window))
    whole_samples, cut_samples = read_tar_samples(tmp_path / "whole"), read_tar_samples(tmp_path / "cut")
    assert len(cut_samples) == cut["documents"] > whole["documents"] and cut["cut_documents"] > 0
    assert cut["source_documents"] == whole["source_documents"] == whole["documents"] + whole["skipped_documents"]
    # every image once, in the same order, and every text either in a window or counted as dropped
    by_source: dict[str, list[dict]] = {}
    for key, s in sorted(cut_samples.items()):
        assert key == f"{s['window']['source_key']}_w{s['window']['index']:03d}"
        by_source.setdefault(s["window"]["source_key"], []).append(s)
    assert set(by_source) == set(whole_samples)
    dropped = 0
    for key, parts in by_source.items():
        original = whole_samples[key]
        assert [im["image_name"] for p in parts for im in p["image_info"]] == [im["image_name"] for im in original["image_info"]]
        kept = [t for p in parts for t in p["text_list"]]
        it = iter(original["text_list"])
        assert all(t in it for t in kept)  # a subsequence, in page order
        dropped += len(original["text_list"]) - len(kept)
        for p in parts:
            assert len(p["image_info"]) >= 1 and p["window"]["of"] == len(parts)
            text = loader_text(p["text_list"], [im["matched_text_index"] for im in p["image_info"]], "</s>")
            assert all(q + 1 < window for q in byte_positions(text))
            for im, row in zip(p["image_info"], p["similarity_matrix"]):
                assert row[im["matched_text_index"]] == 100.0 and sorted(row)[:-1] == [0.0] * (len(row) - 1)
    assert dropped == cut["dropped_text_nodes"]
    assert cut["images"] == whole["images"]
    # the similarity passes OpenFlamingo's default --mmc4_textsim_threshold (30)
    assert all(im["matched_sim"] >= 30 for s in whole_samples.values() for im in s["image_info"])
    counted = cut["openflamingo_defaults"]
    assert counted["token_count"].startswith("UTF-8 bytes") and counted["samples"] == cut["documents"]
    # inside the windows only OpenFlamingo's 10 KB floor is left to drop images
    assert set(counted["images_never_shown"]) <= {"under-10kb"}
    assert counted["images_never_shown"].get("under-10kb", 0) == whole["openflamingo_defaults"]["images_never_shown"].get("under-10kb", 0)
