"""Per-source loaders (model/train/samples.py, data.py): token layout, truncation, media, collate, sharding, resume, corruption."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import io
import random
import threading

import pytest
import torch
from PIL import Image
from test_data_shards import jpeg, key_of, m3w_members, make_shards, pair_members, video_members, write_tar

from model.image_prep import preprocess_image
from model.tokenizer import ByteTokenizer
from model.train.config import SourceConfig
from model.train.data import COUNTERS, ReaderState, SourceLoader, SourceStream, eval_batches, expand_shards, read_tar_samples
from model.train.samples import ImageSpec, SampleDecoder, SkipSample, collate, decode_image

TOK = ByteTokenizer()
SPEC = ImageSpec(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _raw(members):
    """Members of one sample -> the raw dict the tar reader yields."""
    key = members[0][0].split(".")[0]
    return {"__key__": key, "__url__": "mem", **{name.split(".", 1)[1]: data for name, data in members}}


def _decode(cfg_kwargs, members, seed=0):
    """One sample as the loader makes it a sequence (pairs and clips: a sequence of one)."""
    cfg = SourceConfig(name="s", urls=["x"], **cfg_kwargs)
    decoder = SampleDecoder(cfg, TOK, SPEC)
    sample = decoder(_raw(members), random.Random(seed))
    return sample if cfg.kind == "m3w" else decoder.join([sample])


def _text(ids):
    return TOK.decode(ids, skip_special_tokens=False)


def _red(media):  # mean red minus mean blue of each media (normalised pixels)
    return [float(m[0, 0].mean() - m[0, 2].mean()) for m in media]


# --- token layout and truncation -----------------------------------------------------------


def test_m3w_layout_images_in_document_order_missing_images_dropped():
    items = ["Intro.", ("img", "red", "square"), "A red square.", "More.", ("missing",), "Lost image text.",
             ("img", "blue", "circle"), "A blue circle."]
    s = _decode({"kind": "m3w", "max_tokens": 500, "lead_tokens": 100}, m3w_members(key_of(1), items))
    assert _text(s.ids) == ("Intro.<image>A red square.\nMore.\nLost image text.<|endofchunk|><image>A blue circle."
                            "<|endofchunk|>")
    assert len(s.media) == 2 and all(m.shape == (1, 3, 16, 16) for m in s.media)
    red, blue = _red(s.media)
    assert red > 0.3 and blue < -0.3  # red image first, blue second: document order


def test_m3w_truncation_policy():
    items = ["x" * 40]
    for colour in ("red", "green", "blue", "yellow"):
        items += [("img", colour, "square"), f"a {colour} one"]
    members = m3w_members(key_of(2), items)
    # first_image: `lead_tokens` of text before the first <image>, then max_tokens
    s = _decode({"kind": "m3w", "max_tokens": 22, "lead_tokens": 5, "max_images": 5}, members)
    assert _text(s.ids) == "xxxxx<image>a red one<|endofchunk|><image>a gre"
    assert len(s.media) == 2
    # max_images: the window is cut right before the (max_images+1)-th image
    s = _decode({"kind": "m3w", "max_tokens": 500, "lead_tokens": 0, "max_images": 2}, members)
    assert _text(s.ids) == "<image>a red one<|endofchunk|><image>a green one<|endofchunk|>"
    assert len(s.media) == 2
    # an <image> ending the window has no text to train on: dropped with its media
    s = _decode({"kind": "m3w", "max_tokens": 25, "lead_tokens": 0, "max_images": 5}, members)
    assert _text(s.ids) == "<image>a red one<|endofchunk|><image>a green one<|endofchunk|>"
    assert len(s.media) == 2
    # head: from the document start; too few images -> SkipSample
    with pytest.raises(SkipSample):
        _decode({"kind": "m3w", "max_tokens": 40, "truncation": "head", "min_images": 1}, members)
    s = _decode({"kind": "m3w", "max_tokens": 40, "truncation": "head", "min_images": 0}, members)
    assert _text(s.ids) == "x" * 40 and s.media == []
    # random: seeded, and images keep matching their <image> tokens (which ones depends on the window)
    a = _decode({"kind": "m3w", "max_tokens": 25, "truncation": "random", "min_images": 0}, members, seed=3)
    b = _decode({"kind": "m3w", "max_tokens": 25, "truncation": "random", "min_images": 0}, members, seed=3)
    assert a.ids == b.ids and len(a.media) == a.ids.count(TOK.special.image)
    windows = {tuple(_decode({"kind": "m3w", "max_tokens": 25, "truncation": "random", "min_images": 0}, members,
                             seed=k).ids) for k in range(20)}
    assert len(windows) > 5
    for k in range(20):  # the media of a random window are the images whose tokens it holds, in order
        s = _decode({"kind": "m3w", "max_tokens": 25, "truncation": "random", "min_images": 0}, members, seed=k)
        text = _text(s.ids)
        expected = [c for c in ("red", "green", "blue", "yellow") if f"<image>a {c}" in text]
        assert len(s.media) == text.count("<image>")
        if expected:
            first = ("red", "green", "blue", "yellow").index(expected[0])
            assert (_red(s.media)[0] > 0.3) == (first == 0)


def test_literal_special_strings_in_text_stay_text():
    """A page about SVG's <image> element, a caption quoting it: no extra media slot, nothing shifts."""
    items = ["Use the SVG <image> element; end a chunk with <|endofchunk|>.", ("img", "red", "square"),
             "A red square, not an <image>."]
    s = _decode({"kind": "m3w", "max_tokens": 500, "lead_tokens": 400, "max_images": 1}, m3w_members(key_of(7), items))
    assert s.ids.count(TOK.special.image) == 1 == len(s.media) and s.ids.count(TOK.special.end_of_chunk) == 1
    assert _text(s.ids) == ("Use the SVG <image> element; end a chunk with <|endofchunk|>.<image>A red square, not an "
                            "<image>.<|endofchunk|>")
    assert _red(s.media)[0] > 0.3
    members = pair_members(key_of(8), "red", "square")
    members[1] = (members[1][0], b"an <image> of a red square")
    p = _decode({"kind": "pairs"}, members)
    assert p.ids.count(TOK.special.image) == 1 == len(p.media)
    assert TOK.decode(p.ids) == "an <image> of a red square"  # the literal survives as text


def test_hf_tokenizer_keeps_literals_as_text_and_one_bos_per_sequence(tmp_path):
    from helpers.tiny_hf import make_tiny_lm
    from model.tokenizer import HFTokenizer

    tok = HFTokenizer(make_tiny_lm(tmp_path / "lm", "gpt2"))
    ids = tok.encode_text("the <image> element")
    assert tok.special.image not in ids and tok.decode(ids) == "the <image> element"
    assert tok.encode("<image>")[-1] == tok.special.image  # prompts still parse the special spelling
    tok.special = dataclasses.replace(tok.special, bos=tok.special.eos)  # as a BOS-adding tokenizer (Llama, OPT) has
    cfg = SourceConfig(name="s", urls=["x"], kind="pairs", samples_per_sequence=2, max_tokens=200)
    decoder = SampleDecoder(cfg, tok, SPEC)
    chunks = [decoder(_raw(pair_members(key_of(i), c, "square")), random.Random(0)) for i, c in enumerate(("red", "blue"))]
    packed = decoder.join(chunks).ids
    assert packed[0] == tok.special.bos and packed[-1] == tok.special.eos and packed.count(tok.special.eos) == 2
    assert packed[1:-1] == chunks[0].ids + chunks[1].ids  # no BOS/EOS between the shots, as in a few-shot prompt


def test_m3w_image_that_does_not_decode_is_dropped_and_the_document_kept(tmp_path):
    items = ["Intro.", ("img", "red", "square"), "A red square.", ("img", "blue", "circle"), "A blue circle."]
    members = m3w_members(key_of(9), items)
    members = [(n, b"\xff\xd8 not a jpeg") if n.endswith(".1.jpg") else (n, d) for n, d in members]  # the red one
    s = _decode({"kind": "m3w", "max_tokens": 500, "lead_tokens": 100}, members)
    assert _text(s.ids) == "Intro.\nA red square.<image>A blue circle.<|endofchunk|>"
    assert len(s.media) == 1 and _red(s.media)[0] < -0.3 and s.corrupt_images == 1
    write_tar(tmp_path / "d-00000.tar", [members])
    loader = SourceLoader(SourceConfig(name="d", kind="m3w", urls=[str(tmp_path / "d-00000.tar")], batch_size=1), TOK,
                          SPEC, seed=0)
    assert next(loader).stats["media"] == 1
    assert loader.counters()["corrupt_images"] == 1 and loader.counters()["corrupt_samples"] == 0


def test_random_truncation_windows_hold_an_image():
    items = ["x" * 300, ("img", "red", "square"), "a red one", "y" * 300]
    members = m3w_members(key_of(10), items)
    starts = set()
    for seed in range(40):
        s = _decode({"kind": "m3w", "max_tokens": 40, "truncation": "random"}, members, seed=seed)  # min_images 1
        assert len(s.media) == 1 and s.ids.count(TOK.special.image) == 1
        starts.add(_text(s.ids).index("<image>"))
    assert len(starts) > 15  # the image lands at many places in the window, not always the same


def test_decode_image_applies_exif_orientation_and_flattens_alpha_on_white():
    im = Image.new("RGB", (32, 16), (255, 255, 255))
    im.paste((220, 20, 20), (0, 0, 16, 16))  # red on the left half
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate 90 degrees clockwise
    buf = io.BytesIO()
    im.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=95, exif=exif)
    upright = decode_image(buf.getvalue(), ImageSpec(16, (0.5,) * 3, (0.5,) * 3, resize="pad"))
    left, right = upright[:, :, :8], upright[:, :, 8:]
    assert float(left[0].mean() - left[2].mean()) > 0.5 and abs(float(right[0].mean() - right[2].mean())) < 0.2
    clear = io.BytesIO()
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(clear, "PNG")  # fully transparent black
    assert float(decode_image(clear.getvalue(), SPEC).min()) > 0.95  # white (normalised 1.0), not black


def test_upper_case_media_names_are_found():
    members = [(n.replace(".jpg", ".JPG"), d) if n.endswith(".jpg") else (n, d)
               for n, d in m3w_members(key_of(11), ["t", ("img", "red", "square"), "a red one"])]
    raw = _raw(members)
    raw = {k.lower() if k.endswith("JPG") else k: v for k, v in raw.items()}  # the tar reader lower-cases suffixes
    raw["json"] = raw["json"].replace(b'.jpg"', b'.JPG"')
    s = SampleDecoder(SourceConfig(name="s", urls=["x"], kind="m3w"), TOK, SPEC)(raw, random.Random(0))
    assert len(s.media) == 1


def test_pair_and_video_layout():
    s = _decode({"kind": "pairs"}, pair_members(key_of(3), "red", "circle"))
    assert _text(s.ids) == "<image>a red circle<|endofchunk|>" and s.media[0].shape == (1, 3, 16, 16)
    s = _decode({"kind": "pairs", "max_tokens": 8}, pair_members(key_of(3), "red", "circle"))
    assert _text(s.ids) == "<image>a red c"  # captions cut at max_tokens
    # video: max_frames evenly spaced frames (the 2nd, 4th, 6th, 8th of 8, in time order)
    members = video_members(key_of(4), "blue", "square", 8)
    v = _decode({"kind": "video", "max_frames": 4}, members)
    assert _text(v.ids) == "<image>a blue square moves<|endofchunk|>" and v.media[0].shape == (4, 3, 16, 16)
    frames = dict(members)
    for i, f in enumerate((1, 3, 5, 7)):
        assert torch.equal(v.media[0][i], decode_image(frames[f"{key_of(4)}.{f:03d}.jpg"], SPEC))
    # a shorter clip keeps its own frames: no repeated frame goes through the encoder
    short = _decode({"kind": "video", "max_frames": 4}, video_members(key_of(4), "blue", "square", 2))
    assert short.media[0].shape == (2, 3, 16, 16) and not torch.equal(short.media[0][0], short.media[0][1])


def test_packed_pairs_share_a_sequence_and_resume_exactly(tmp_path):
    pattern = make_shards(tmp_path, "pairs", 2, 7)
    cfg = SourceConfig(name="p", kind="pairs", urls=[pattern], batch_size=2, samples_per_sequence=3, max_tokens=60,
                       shuffle_buffer=0, shuffle_shards=False)
    loader = SourceLoader(cfg, TOK, SPEC, seed=0)
    batches = [next(loader) for _ in range(5)]
    first = _text(batches[0].input_ids[0].tolist())
    assert first.startswith("<image>a red square<|endofchunk|><image>a green square<|endofchunk|><image>a blue")
    for b in batches:  # every <image> kept has its media, none ends a sequence, nothing beyond max_tokens
        assert b.stats["media"] == int((b.input_ids == TOK.special.image).sum()) and b.input_ids.shape[1] <= 60
        for row, mask in zip(b.input_ids, b.attention_mask):
            assert row[int(mask.sum()) - 1] != TOK.special.image
    assert batches[0].stats["sequences"] == 2 and batches[0].media_batch_idx.tolist() == [0, 0, 0, 1, 1, 1]
    resumed = SourceLoader(cfg, TOK, SPEC, seed=0, state=SourceLoader(cfg, TOK, SPEC, seed=0).state_dict())
    assert [next(resumed).keys for _ in range(5)] == [b.keys for b in batches]
    ahead = SourceLoader(cfg, TOK, SPEC, seed=0)
    for _ in range(2):
        next(ahead)
    resumed = SourceLoader(cfg, TOK, SPEC, seed=0, state=ahead.state_dict())
    assert [next(resumed).keys for _ in range(3)] == [b.keys for b in batches[2:]]


def test_image_preparation_crop_matches_image_prep_and_pad_letterboxes():
    im = Image.new("RGB", (40, 20), (200, 10, 10))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    crop = decode_image(buf.getvalue(), SPEC)
    assert torch.equal(crop, preprocess_image(im, 16, SPEC.mean, SPEC.std))
    pad = decode_image(buf.getvalue(), ImageSpec(16, SPEC.mean, SPEC.std, "pad"))
    assert pad.shape == (3, 16, 16)
    assert torch.allclose(pad[:, 0, :], torch.zeros(3, 16), atol=0.01)  # letterbox rows: mean colour -> 0
    assert float(pad[0, 8, 8]) > 0.5  # the image itself in the middle


def test_collate_pads_masks_and_routes_media():
    a = _decode({"kind": "pairs"}, pair_members(key_of(5), "red", "square"))
    b = _decode({"kind": "m3w", "lead_tokens": 0}, m3w_members(key_of(6), [("img", "blue", "square"), "b",
                                                                           ("img", "green", "square"), "c"]))
    c = _decode({"kind": "m3w", "min_images": 0}, m3w_members(key_of(7), ["text only"]))
    batch = collate([a, b, c], TOK, "mix")
    assert batch.input_ids.shape == (3, max(len(a.ids), len(b.ids), len(c.ids)))
    assert batch.media.shape == (3, 1, 3, 16, 16)
    assert batch.media_batch_idx.tolist() == [0, 1, 1]  # only real media; row 2 has none
    special = TOK.special
    assert (batch.labels[batch.input_ids == special.image] == -100).all()
    assert (batch.labels[batch.attention_mask == 0] == -100).all()
    assert batch.stats["media"] == 3 and batch.stats["tokens"] == len(a.ids) + len(b.ids) + len(c.ids)
    assert batch.stats["pad"] == batch.input_ids.numel() - batch.stats["tokens"]
    clips = [_decode({"kind": "video", "max_frames": t}, video_members(key_of(8), "red", "square", 3)) for t in (2, 3)]
    mixed = collate(clips, TOK)
    assert isinstance(mixed.media, list) and [m.shape[0] for m in mixed.media] == [2, 3]


# --- shards, readers, resume ---------------------------------------------------------------


def _keys_of(stream_kwargs, cfg):
    stream = SourceStream(cfg, TOK, SPEC, seed=0, infinite=False, **stream_kwargs)
    keys = []
    for batch in stream:
        keys += batch.keys
    return keys


@pytest.mark.parametrize("n_shards", [4, 1])
def test_readers_split_samples_disjointly_also_with_fewer_shards_than_readers(tmp_path, n_shards):
    pattern = make_shards(tmp_path, "pairs", n_shards, 12 // n_shards)
    cfg = SourceConfig(name="p", kind="pairs", urls=[pattern], batch_size=1, shuffle_buffer=4)
    all_keys = _keys_of({}, cfg)
    assert len(all_keys) == 12
    parts = []
    for rank in range(2):
        for worker in range(2):  # reader rank * workers + worker
            stream = SourceStream(cfg, TOK, SPEC, seed=0, rank=rank, world_size=2, num_workers=2, infinite=False)
            parts.append([b.keys[0] for b in stream.batches(worker, ReaderState())])
    assert all(parts), "no reader may starve"
    flat = [k for p in parts for k in p]
    assert sorted(flat) == sorted(all_keys) and len(set(flat)) == len(flat)


def test_epochs_reshuffle_deterministically(tmp_path):
    pattern = make_shards(tmp_path, "pairs", 3, 5)
    cfg = SourceConfig(name="p", kind="pairs", urls=[pattern], batch_size=5, shuffle_buffer=8)
    first = [b.keys for b, _ in zip(SourceLoader(cfg, TOK, SPEC, seed=1), range(6))]
    again = [b.keys for b, _ in zip(SourceLoader(cfg, TOK, SPEC, seed=1), range(6))]
    other = [b.keys for b, _ in zip(SourceLoader(cfg, TOK, SPEC, seed=2), range(6))]
    assert first == again and first != other
    epoch0, epoch1 = sum(first[:3], []), sum(first[3:], [])
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resumes_the_exact_batch_sequence(tmp_path, workers):
    pattern = make_shards(tmp_path, "m3w", 3, 7)
    cfg = SourceConfig(name="m", kind="m3w", urls=[pattern], batch_size=3, max_tokens=48, shuffle_buffer=4)
    ref = SourceLoader(cfg, TOK, SPEC, seed=0, num_workers=workers)
    reference = [next(ref) for _ in range(12)]  # 36 samples: wraps into the 2nd epoch
    for cut in (3, 7):
        first = SourceLoader(cfg, TOK, SPEC, seed=0, num_workers=workers)
        for _ in range(cut):
            next(first)
        state = first.state_dict()
        first.close()
        resumed = SourceLoader(cfg, TOK, SPEC, seed=0, num_workers=workers, state=state)
        for want in reference[cut:]:
            got = next(resumed)
            assert got.keys == want.keys
            assert torch.equal(got.input_ids, want.input_ids) and torch.equal(got.media, want.media)
        resumed.close()
    ref.close()


def test_corrupt_samples_and_tars_are_skipped_and_counted(tmp_path):
    good = [pair_members(key_of("g", i), "red", "square") for i in range(4)]
    bad_jpeg = [(f"{key_of('b1')}.jpg", b"\xff\xd8not a jpeg"), (f"{key_of('b1')}.txt", b"broken")]
    no_caption = [(f"{key_of('b2')}.jpg", jpeg("blue"))]
    write_tar(tmp_path / "s-00000.tar", good[:2] + [bad_jpeg, no_caption] + good[2:])
    (tmp_path / "s-00001.tar").write_bytes(b"this is not a tar file at all" * 50)
    truncated = write_tar(tmp_path / "full.tar", [pair_members(key_of("t", i), "green", "circle") for i in range(6)])
    data = truncated.read_bytes()
    (tmp_path / "s-00002.tar").write_bytes(data[: len(data) // 2 + 100])
    cfg = SourceConfig(name="p", kind="pairs", urls=[str(tmp_path / "s-{00000..00003}.tar")], batch_size=2,
                       shuffle_buffer=0, shuffle_shards=False)  # s-00003.tar does not exist
    loader = SourceLoader(cfg, TOK, SPEC, seed=0)
    batches = [next(loader) for _ in range(6)]
    counters = loader.counters()
    assert counters["corrupt_samples"] >= 2 and counters["corrupt_shards"] >= 4  # 2 per epoch: 3 bad shards
    keys = {k for b in batches for k in b.keys}
    assert key_of("b1") not in keys and key_of("b2") not in keys
    assert {key_of("g", i) for i in range(4)} <= keys
    assert set(COUNTERS) <= set(counters)


def test_a_source_without_usable_samples_raises_instead_of_hanging(tmp_path):
    (tmp_path / "x-00000.tar").write_bytes(b"garbage" * 100)
    cfg = SourceConfig(name="dead", kind="pairs", urls=[str(tmp_path / "x-00000.tar")], batch_size=1)
    with pytest.raises(RuntimeError, match="no usable sample"):
        next(SourceLoader(cfg, TOK, SPEC, seed=0))
    # readable tars whose samples never decode, or that the limits skip, must not spin either
    write_tar(tmp_path / "bad-00000.tar", [[(f"{key_of('b', i)}.jpg", b"\xff\xd8 broken"), (f"{key_of('b', i)}.txt", b"x")]
                                           for i in range(3)])
    cfg = SourceConfig(name="undecodable", kind="pairs", urls=[str(tmp_path / "bad-00000.tar")], batch_size=1)
    with pytest.raises(RuntimeError, match=r"no usable sample.*'corrupt_samples': 3"):
        next(SourceLoader(cfg, TOK, SPEC, seed=0))
    one_image = make_shards(tmp_path / "m3w", "m3w", 1, 1)  # document 0 has one image
    cfg = SourceConfig(name="skipped", kind="m3w", urls=[one_image], batch_size=1, min_images=2)
    with pytest.raises(RuntimeError, match=r"no usable sample.*'no_media': 1"):
        next(SourceLoader(cfg, TOK, SPEC, seed=0))
    with pytest.raises(FileNotFoundError):
        SourceLoader(SourceConfig(name="none", kind="pairs", urls=[str(tmp_path / "nothing-*.tar")]), TOK, SPEC, seed=0)


def test_shard_patterns_globs_and_remote_urls(tmp_path):
    pattern = make_shards(tmp_path, "pairs", 3, 2)
    assert expand_shards(pattern) == [str(tmp_path / f"pairs-{i:05d}.tar") for i in range(3)]
    assert expand_shards([str(tmp_path / "pairs-*.tar")]) == expand_shards(pattern)
    assert expand_shards("a-{0..1}.tar::b.tar") == ["a-0.tar", "a-1.tar", "b.tar"]
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/pairs-{{00000..00002}}.tar"
        cfg = SourceConfig(name="remote", kind="pairs", urls=[url], batch_size=6, shuffle_buffer=0, shuffle_shards=False)
        local = dict(cfg.__dict__, urls=[pattern])
        (remote_batch,) = eval_batches(cfg, TOK, SPEC, seed=0, n_batches=1)
        (local_batch,) = eval_batches(SourceConfig(**local), TOK, SPEC, seed=0, n_batches=1)
        assert remote_batch.keys == local_batch.keys and torch.equal(remote_batch.media, local_batch.media)
        assert len(list(read_tar_samples(f"file://{tmp_path}/pairs-00000.tar", {"corrupt_shards": 0}))) == 2
    finally:
        server.shutdown()
