"""Video probing and frame sampling (m3w_pipeline.media.video) on the real corpus videos and on
videos made here with PyAV: every input ends kept with correct metadata or dropped with a
named reason, and nothing raises.

Ground truth comes from outside the code under test: the corpus README/MANIFEST (sizes,
frame rates), an independent full PyAV decode (durations), the ISO-BMFF tkhd matrix
semantics (rotation) and pixels we drew ourselves.
"""
from __future__ import annotations

import io
import random
import struct
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw

from m3w_pipeline.core.config import ImageConfig, VideoConfig
from m3w_pipeline.media.video import (
    VIDEO_DROP_REASONS,
    VIDEO_OK,
    frame_arrays,
    frame_targets,
    media_kind,
    probe_video,
    process_video,
    sniff_video_type,
    webvtt_text,
)

VIDEO_DIR = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "video"
REASONS = (VIDEO_OK,) + VIDEO_DROP_REASONS


def corpus(name: str) -> bytes:
    return (VIDEO_DIR / name).read_bytes()


def decoded_duration(data: bytes) -> float:
    """Independent truth: decode every frame; last frame time + one frame interval."""
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        times = [float(f.pts * s.time_base) for f in c.decode(s) if f.pts is not None]
        return max(times) - min(times) + float(1 / s.average_rate)


def make_video(frames: list[np.ndarray], fps: int = 10, pix_fmt: str = "yuv420p", gop: int = 250) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=fps, options={"threads": "1", "g": str(gop), "preset": "veryfast"})
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = pix_fmt
        for a in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return buf.getvalue()


def moving_square(n: int = 30, w: int = 160, h: int = 96) -> list[np.ndarray]:
    """A white square on black moving right; a red marker fixed in the top-left corner."""
    out = []
    for i in range(n):
        im = Image.new("RGB", (w, h), (0, 0, 0))
        d = ImageDraw.Draw(im)
        d.rectangle((0, 0, 23, 15), fill=(255, 0, 0))
        x = 30 + (3 * i) % max(1, w - 60)
        d.rectangle((x, 40, x + 20, 60), fill=(255, 255, 255))
        out.append(np.asarray(im))
    return out


# ------------------------------------------------------------------ the corpus videos


def test_corpus_mp4_and_webm_keep_correct_metadata_and_frames() -> None:
    # (fps, displayed size, duration, duration source): sizes, rates and lengths from the corpus
    # README; the WebM without a duration in its header is measured by an independent full decode.
    no_duration = corpus("moviepy__no_duration.webm")
    expected = {
        "moviepy__big_buck_bunny_432_433.webm": (24.0, (1280, 720), 1.0, "container"),
        "moviepy__chaplin.mp4": (25.0, (640, 360), 9.6, "stream"),
        "moviepy__no_duration.webm": (15000 / 1001, (1280, 720), decoded_duration(no_duration), "packets"),
        "moviepy__smpte-2997.mp4": (25.0, (1920, 1080), 10.0, "stream"),  # named 29.97, the stream says 25
        "moviepy__transparent.webm": (30.0, (200, 200), 5.0, "container"),
    }
    for name, (fps, size, duration, source) in expected.items():
        data = corpus(name)
        result = process_video(data)
        assert result.reason == VIDEO_OK, (name, result.detail)
        v = result.video
        assert v is not None and v.data == data and not v.partial
        p = v.probe
        assert abs(p.duration - duration) <= 0.1, (name, p.duration)
        assert abs(p.fps - fps) < 0.01 and (p.width, p.height) == size and p.duration_source == source, name
        assert len(v.frames) == 8
        times = [f.timestamp for f in v.frames]
        assert times == sorted(times) and len(set(times)) == 8, name
        assert all(0 <= f.timestamp <= p.duration and max(f.width, f.height) == min(512, max(size)) for f in v.frames)
        for f in v.frames:
            with Image.open(io.BytesIO(f.data)) as im:
                assert im.format == "JPEG" and im.size == (f.width, f.height)
    chaplin = process_video(corpus("moviepy__chaplin.mp4")).video
    assert chaplin is not None
    gaps = np.diff([f.target for f in chaplin.frames])
    assert np.allclose(gaps, 1.0)  # 8 frames at 1 FPS, centred in the 9.64 s clip
    assert abs(chaplin.frames[0].target - (9.64 - 8) / 2 - 0.5) < 1e-6


def test_no_duration_webm_is_measured_without_decoding_and_probe_agrees() -> None:
    data = corpus("moviepy__no_duration.webm")
    with av.open(io.BytesIO(data)) as c:
        assert c.duration is None and c.streams.video[0].duration is None  # the premise
    probe = probe_video(data)
    assert probe.reason == VIDEO_OK and probe.probe is not None
    assert probe.probe.duration_source == "packets" and abs(probe.probe.duration - decoded_duration(data)) <= 0.1


def test_duration_by_decoding_when_neither_header_nor_packets_say(monkeypatch: pytest.MonkeyPatch) -> None:
    import m3w_pipeline.media.video as video

    data = corpus("moviepy__no_duration.webm")
    monkeypatch.setattr(video, "_packet_span", lambda *args: None)  # as if no packet had a timestamp
    result = process_video(data, VideoConfig(num_frames=4))
    assert result.reason == VIDEO_OK and result.video is not None
    assert result.video.probe.duration_source == "decode"
    assert abs(result.video.probe.duration - decoded_duration(data)) <= 0.1 and len(result.video.frames) == 4
    assert process_video(data, VideoConfig(max_duration_s=2.0)).reason == "too-long"


def test_rotated_mov_reports_upright_size_and_turns_frames_upright() -> None:
    data = corpus("decord__video_90.mov")  # 568x320 stored, tkhd matrix = 90 degrees, 3 frames (0.1 s)
    probe = probe_video(data)
    assert probe.reason == "too-short" and probe.probe is not None  # 0.1 s < min_duration_s
    p = probe.probe
    assert (p.width, p.height, p.rotation, p.coded_width, p.coded_height) == (320, 568, 90, 568, 320)
    assert abs(p.duration - 0.1) < 0.01 and p.fps == 30.0
    kept = process_video(data, VideoConfig(min_duration_s=0.05))
    assert kept.reason == VIDEO_OK and kept.video is not None
    assert (kept.video.probe.width, kept.video.probe.height) == (320, 568)
    assert all((f.width, f.height) == (288, 512) for f in kept.video.frames)  # portrait, max side 512
    # The kept frame is the stored frame turned clockwise (what the matrix says), not counter-clockwise.
    with av.open(io.BytesIO(data)) as c:
        raw = next(c.decode(video=0)).to_image()
    upright = frame_arrays(kept.video.frames[:1])[0].astype(float)
    cw = np.asarray(raw.transpose(Image.Transpose.ROTATE_270).resize((288, 512))).astype(float)
    ccw = np.asarray(raw.transpose(Image.Transpose.ROTATE_90).resize((288, 512))).astype(float)
    assert np.abs(upright - cw).mean() < 8 < np.abs(upright - ccw).mean()


def _set_tkhd_matrix(data: bytes, matrix: tuple[int, ...], width: int, height: int) -> bytes:
    """Write an ISO-BMFF track header display matrix (16.16 / 2.30 fixed point), as cameras do."""
    i = data.index(b"tkhd")
    version = data[i + 4]
    offset = i + 8 + (32 if version == 1 else 20) + 8 + 2 + 2 + 2 + 2  # to the matrix
    packed = struct.pack(">9i", *matrix)
    out = data[:offset] + packed + struct.pack(">II", width << 16, height << 16) + data[offset + 44:]
    assert len(out) == len(data)
    return out


def test_display_matrix_rotation_on_a_video_we_made() -> None:
    frames = moving_square(20)
    plain = make_video(frames)
    # ISO 14496-12: (x', y') = (a x + c y + tx, b x + d y + ty); a=0 b=1 c=-1 d=0 tx=H is a
    # quarter turn clockwise: the stored top-left corner is displayed top-right.
    rotated = _set_tkhd_matrix(plain, (0, 1 << 16, 0, -(1 << 16), 0, 0, 96 << 16, 0, 1 << 30), 160, 96)
    result = process_video(rotated, VideoConfig(min_side=16))
    assert result.reason == VIDEO_OK and result.video is not None
    assert (result.video.probe.rotation, result.video.probe.width, result.video.probe.height) == (90, 96, 160)
    first = frame_arrays(result.video.frames)[0]
    assert first.shape == (160, 96, 3)
    red = (first[..., 0] > 150) & (first[..., 1] < 90)
    ys, xs = np.nonzero(red)
    assert xs.min() > 96 - 24 and ys.max() < 30  # the red marker sits top-right


def test_one_pixel_video_is_dropped_too_small() -> None:
    shipped = process_video(corpus("moviepy__test_video.mp4"))  # 1x1 px, 5 frames
    made = process_video(make_video([np.zeros((1, 1, 3), np.uint8)] * 5, pix_fmt="yuv444p"))
    for result in (shipped, made):
        assert result.reason == "too-small" and result.probe is not None
        assert (result.probe.width, result.probe.height) == (1, 1)


def test_webm_with_alpha_is_decoded_with_alpha_and_flattened_over_white() -> None:
    data = corpus("moviepy__transparent.webm")  # VP9 alpha_mode=1
    with av.open(io.BytesIO(data)) as c:  # FFmpeg's native VP9 decoder drops alpha: corners come out black
        assert next(c.decode(video=0)).to_ndarray(format="rgb24")[0, 0].max() < 20
    result = process_video(data)
    assert result.reason == VIDEO_OK and result.video is not None and result.video.probe.has_alpha
    first = frame_arrays(result.video.frames)[0]
    assert first[0, 0].min() > 235  # transparent corner -> white
    assert (first[..., 0] > 150).sum() > 100 and (first[..., 1] < 80).sum() > 100  # the red shape stays


def test_alpha_vp9_made_here(tmp_path: Path) -> None:
    """A yuva420p VP9 WebM of our own: kept, alpha flattened (or, where this FFmpeg build
    cannot mux alpha, still a valid kept video)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as out:
        s = out.add_stream("libvpx-vp9", rate=10, options={"threads": "1", "deadline": "realtime", "cpu-used": "8"})
        s.width, s.height, s.pix_fmt = 96, 96, "yuva420p"
        for i in range(12):
            a = np.zeros((96, 96, 4), np.uint8)
            a[20:60, 10 + 2 * i : 50 + 2 * i] = (0, 0, 255, 255)  # an opaque blue block on transparency
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgba")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    result = process_video(buf.getvalue(), VideoConfig(min_side=32))
    assert result.reason == VIDEO_OK and result.video is not None
    first = frame_arrays(result.video.frames)[0]
    assert first[40, 30, 2] > 180 and first[40, 30, 0] < 80  # blue block
    if result.video.probe.has_alpha:
        assert first[90, 90].min() > 235


def test_corrupted_mp4_is_dropped_or_kept_partial_by_the_documented_rule() -> None:
    data = corpus("decord__corrupted.mp4")  # 5 s, 50 frames declared; decoding fails after 28 frames (2.8 s)
    dropped = process_video(data)  # default min_frames == num_frames: a partial decode is dropped
    assert dropped.reason == "decode-error" and "4 of 8 frames" in dropped.detail
    kept = process_video(data, VideoConfig(min_frames=4))
    assert kept.reason == VIDEO_OK and kept.video is not None and kept.video.partial
    assert "InvalidData" in kept.video.decode_error
    assert abs(kept.video.probe.duration - 2.8) < 0.05  # the decoded span, not the declared 5 s
    assert len(kept.video.frames) == 4 and all(f.timestamp < 2.8 for f in kept.video.frames)
    assert probe_video(data).reason == VIDEO_OK  # the header and first frame are fine


def test_corpus_videos_probe_in_milliseconds() -> None:
    """Probing reads the header and one frame: cheap enough to run on every crawled video."""
    for path in sorted(VIDEO_DIR.iterdir()):
        data = path.read_bytes()
        start = time.perf_counter()
        probe_video(data)
        assert time.perf_counter() - start < 0.5, path.name


# ------------------------------------------------------------------ inputs that are not good videos


def test_garbage_and_non_video_inputs_get_named_reasons() -> None:
    chaplin = corpus("moviepy__chaplin.mp4")
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(jpeg, "JPEG")
    cases = {
        "empty": (b"", "not-video"),
        "html": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "not-video"),
        "jpeg": (jpeg.getvalue(), "not-video"),  # FFmpeg would open it as a 1-frame video
        "ogg": (b"OggS\x00\x02" + bytes(200), "unsupported-format"),
        "ftyp-then-garbage": (chaplin[:32] + bytes(random.Random(1).randrange(256) for _ in range(4000)), "decode-error"),
        "head-only": (chaplin[:5000], "decode-error"),
        "hls-manifest": (b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nhttp://x/a.m3u8\n", "not-video"),
    }
    for name, (data, reason) in cases.items():
        result = process_video(data)
        assert (name, result.reason) == (name, reason), result.detail
        assert result.video is None
    assert process_video(chaplin, VideoConfig(max_video_bytes=1000)).reason == "too-large"
    assert process_video(chaplin, VideoConfig(max_duration_s=5)).reason == "too-long"
    assert process_video(chaplin, VideoConfig(max_frame_pixels=640 * 359)).reason == "too-large"
    wide = make_video([np.zeros((32, 160, 3), np.uint8)] * 10)
    assert process_video(wide, VideoConfig(min_side=16)).reason == "bad-aspect"


def test_audio_only_file_has_no_video_stream() -> None:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("aac", rate=8000)
        s.layout = "mono"
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    assert process_video(buf.getvalue()).reason == "no-video-stream"


def test_nothing_raises_on_cut_or_damaged_corpus_videos() -> None:
    rng = random.Random(7)
    for name in ("decord__video_90.mov", "moviepy__transparent.webm", "moviepy__test_video.mp4"):
        data = corpus(name)
        variants = [data[: len(data) * k // 4] for k in (1, 2, 3)]
        for _ in range(2):
            damaged = bytearray(data)
            for _ in range(20):
                damaged[rng.randrange(64, len(damaged))] = rng.randrange(256)
            variants.append(bytes(damaged))
        for variant in variants:
            for result in (probe_video(variant), process_video(variant, VideoConfig(min_side=1, min_duration_s=0.01))):
                assert result.reason in REASONS, (name, result.reason)
                assert (result.video is not None) == (result.reason == VIDEO_OK and result.video is not None)


# ------------------------------------------------------------------ sampling rules


def test_frame_targets_flamingo_rate_and_short_clips() -> None:
    assert frame_targets(20.0, 8, 1.0) == [6.5 + i for i in range(8)]  # 8 s window centred in 20 s
    assert frame_targets(20.0, 8, 1.0, "start") == [0.5 + i for i in range(8)]
    short = frame_targets(2.0, 8, 1.0)  # shorter than 8 s: evenly spread slot midpoints
    assert short == [0.125 + 0.25 * i for i in range(8)]
    assert frame_targets(0, 8, 1.0) == [] and frame_targets(5, 0, 1.0) == []


def test_frames_follow_the_motion_and_decoding_stops_early() -> None:
    data = make_video(moving_square(60), fps=10)  # 6 s
    result = process_video(data, VideoConfig(min_side=16, num_frames=4, frame_rate=2.0, frame_anchor="start"))
    assert result.reason == VIDEO_OK and result.video is not None
    v = result.video
    assert [f.target for f in v.frames] == [0.25, 0.75, 1.25, 1.75]
    assert [f.timestamp for f in v.frames] == [0.2, 0.7, 1.2, 1.7]  # the frame on screen at each target
    assert v.decoded_frames <= 20  # stops after 1.75 s of 6 s
    for f, a in zip(v.frames, frame_arrays(v.frames)):  # each kept picture is the source frame at its timestamp
        white = a.min(axis=2) > 200
        assert abs(np.nonzero(white)[1].min() - (30 + 3 * round(f.timestamp * 10))) <= 2


def test_long_clip_seeks_instead_of_decoding_from_the_start() -> None:
    data = make_video(moving_square(200, 64, 64), fps=10, gop=10)  # 20 s, a keyframe every second
    config = VideoConfig(min_side=16, num_frames=2)  # centred window: targets 9.5 s and 10.5 s
    full = process_video(data, config)
    seek = process_video(data, VideoConfig(min_side=16, num_frames=2, seek_after_s=1.0))
    assert full.video is not None and seek.video is not None
    assert full.video.decoded_frames > 100 and seek.video.decoded_frames <= 20
    assert [f.timestamp for f in seek.video.frames] == [f.timestamp for f in full.video.frames] == [9.5, 10.5]
    assert [f.sha256 for f in seek.video.frames] == [f.sha256 for f in full.video.frames]


def test_output_is_deterministic_and_uses_the_image_policy() -> None:
    data = corpus("moviepy__big_buck_bunny_432_433.webm")
    a = process_video(data, image_config=ImageConfig(max_side=256, jpeg_quality=80))
    b = process_video(data, image_config=ImageConfig(max_side=256, jpeg_quality=80))
    assert a.video is not None and b.video is not None
    assert [f.data for f in a.video.frames] == [f.data for f in b.video.frames]
    assert all((f.width, f.height) == (256, 144) for f in a.video.frames)


# ------------------------------------------------------------------ sniffing and tracks


def test_sniffing_and_media_kind() -> None:
    assert sniff_video_type(corpus("moviepy__chaplin.mp4")) == "mp4"
    assert sniff_video_type(corpus("decord__video_90.mov")) == "mov"
    assert sniff_video_type(corpus("moviepy__transparent.webm")) == "webm"
    assert sniff_video_type(b"<html>") is None
    assert media_kind("image/jpeg", corpus("moviepy__chaplin.mp4")) == "video"  # bytes beat the header
    assert media_kind("video/mp4", b"\x89PNG\r\n\x1a\n" + bytes(32)) == "image"
    assert media_kind("text/vtt", b"WEBVTT\n\n00:00.000 --> 00:01.000\nhi") == "video"
    assert media_kind("application/octet-stream", b"GIF89a" + bytes(20)) == "image"


def test_webvtt_cue_text() -> None:
    vtt = (
        "\ufeffWEBVTT - made here\n\nNOTE a comment\n\nSTYLE\n::cue { color: red }\n\n"
        "1\n00:00:00.000 --> 00:00:02.000 align:start\n<v Ana>Two red <b>circles</b> roll</v>\n\n"
        "00:00:02.000 --> 00:00:04.000\nTwo red <b>circles</b> roll\n\n"
        "00:00:04.000 --> 00:00:06.000\nacross a white &amp; grey floor.\n"
    ).encode()
    assert webvtt_text(vtt) == "Two red circles roll across a white & grey floor."
    assert webvtt_text(b"1\n00:00:00,000 --> 00:00:01,000\nsrt, not vtt") is None
    assert webvtt_text(vtt, max_bytes=10) is None
