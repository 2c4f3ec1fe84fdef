"""A crawled video as MP4, for loaders that read KEY.mp4 (video2dataset's layout): `VideoConfig.container = "mp4"`.

Each stream is copied as it is (a remux: no quality lost, fast) when MP4 can carry its codec;
otherwise it is re-encoded: video to H.264 (libx264, or FFmpeg's MPEG-4 Part 2 encoder where
libx264 is missing), audio to AAC. Only the first video and the first audio stream are kept,
as the frame sampler and probe use them. One thread, bit-exact muxer flags: the same input
gives the same bytes. Any failure raises `Mp4Error`; the caller drops the video as mp4-failed.
"""
from __future__ import annotations

import io
from typing import Any

import av

# Codecs the MP4 muxer takes as they are (FFmpeg's mov/mp4 codec tags).
MP4_VIDEO_CODECS = frozenset({"h264", "hevc", "mpeg4", "av1", "vp9"})
MP4_AUDIO_CODECS = frozenset({"aac", "mp3", "opus", "ac3", "eac3", "alac", "flac"})
_VIDEO_ENCODERS = ("libx264", "mpeg4")


class Mp4Error(Exception):
    """The video could not be made into an MP4 (the message says why)."""


def to_mp4(data: bytes, demuxer: str) -> tuple[bytes, str]:
    """(MP4 bytes, "remux" when every kept stream was copied, else "transcode")."""
    try:
        return _convert(data, demuxer)
    except Mp4Error:
        raise
    except Exception as err:
        raise Mp4Error(f"{type(err).__name__}: {err}") from err


def _convert(data: bytes, demuxer: str) -> tuple[bytes, str]:
    out_buf = io.BytesIO()
    with av.open(io.BytesIO(data), format=demuxer) as source, av.open(
        out_buf, "w", format="mp4", options={"fflags": "+bitexact"}, container_options={"fflags": "+bitexact"}
    ) as target:
        video = next((s for s in source.streams.video), None)
        if video is None:
            raise Mp4Error("no video stream")
        audio = next((s for s in source.streams.audio), None)
        plans = {video.index: _plan(target, video, MP4_VIDEO_CODECS)}
        if audio is not None:
            plans[audio.index] = _plan(target, audio, MP4_AUDIO_CODECS)
        for packet in source.demux([s for s in (video, audio) if s is not None]):
            out, copy = plans[packet.stream.index]
            if copy:
                if packet.dts is None:  # the demuxer's end-of-stream flush packet
                    continue
                packet.stream = out
                target.mux(packet)
            else:
                for frame in packet.decode():
                    target.mux(out.encode(_fit(frame, out)))
        for out, copy in plans.values():
            if not copy:
                target.mux(out.encode(None))
        how = "remux" if all(copy for _, copy in plans.values()) else "transcode"
    mp4 = out_buf.getvalue()
    if not mp4:
        raise Mp4Error("the muxer wrote nothing")
    return mp4, how


def _plan(target: Any, stream: Any, copyable: frozenset[str]) -> tuple[Any, bool]:
    """(output stream, copy?) for one input stream."""
    codec = stream.codec_context.codec.canonical_name  # the codec, not its decoder (mp3, not mp3float)
    if codec in copyable:
        return target.add_stream_from_template(stream), True
    if stream.type == "audio":
        out = target.add_stream("aac", rate=stream.codec_context.sample_rate or 48000)
        out.codec_context.thread_count = 1
        return out, False
    rate = stream.average_rate or stream.guessed_rate or 25
    for name in _VIDEO_ENCODERS:
        try:
            out = target.add_stream(name, rate=rate)
        except (av.FFmpegError, ValueError, KeyError):  # encoder not built into this FFmpeg
            continue
        ctx = stream.codec_context
        out.width, out.height = _even(ctx.width), _even(ctx.height)
        out.pix_fmt = "yuv420p"
        out.codec_context.thread_count = 1
        if name == "libx264":
            out.codec_context.options = {"preset": "veryfast", "crf": "23"}
        out.codec_context.time_base = stream.time_base
        return out, False
    raise Mp4Error(f"no encoder for {codec} (tried {', '.join(_VIDEO_ENCODERS)})")


def _even(n: int) -> int:
    """yuv420p needs even sides."""
    return max(2, n - n % 2)


def _fit(frame: Any, out: Any) -> Any:
    """A decoded video frame in the encoder's size and pixel format (audio frames pass as they are)."""
    if out.type != "video":
        frame.pts = None  # the AAC encoder numbers its own frames
        return frame
    fitted = frame.reformat(width=out.width, height=out.height, format="yuv420p")
    fitted.pts, fitted.time_base = frame.pts, frame.time_base
    return fitted
