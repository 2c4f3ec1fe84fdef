"""Video bytes -> probed, validated video with upright frames sampled as JPEGs.

Like `media.process_image`, `process_video` never raises on bad input: it returns a
`VideoResult` whose `reason` is "ok" or one of `VIDEO_DROP_REASONS`, so a bundle of
crawl records never fails on one broken file.

One video:
  size cap -> sniff the container from magic bytes (FFmpeg is only ever asked to open
  the sniffed demuxer: no HLS/concat demuxer that would follow URLs, no image2 "video"
  made of a JPEG) -> header: video stream, codec, size, frame rate, duration
  -> size / aspect / duration checks before any frame is decoded
  -> one decode pass in time order that stops after the last frame it needs (seeking to
  the keyframe before the first one for long clips); each kept frame is rotated upright
  (display matrix, else the legacy `rotate` tag), alpha flattened over white, resized with
  the image max-side policy and encoded as JPEG.

Duration, in order: the video stream's own duration, the container's, stream frame
count / frame rate, then a demux-only scan of packet timestamps (no decoding; this is how
a WebM without a duration in its header is measured), then a full decode.

Frames (Flamingo samples 8 frames at 1 FPS): the clip is cut into `num_frames` slots
of min(1/frame_rate, duration/num_frames) seconds, centred in the clip ("center") or from
its start ("start"); the frame on screen at each slot's midpoint is kept. A clip shorter
than num_frames/frame_rate thus gets evenly spread frames; one with fewer frames than
slots repeats frames, so every kept video has exactly num_frames frames.

Partial decodes: decoding stops at the last needed frame, so damage after it is not seen.
A decode error before it drops the video as decode-error, unless at least `min_frames`
frames were already sampled: then it is kept with those frames, `partial` is set and its
duration is the decoded span. With the default min_frames == num_frames a partial video is
always dropped.
"""
from __future__ import annotations

import hashlib
import html
import io
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterator, Optional

import av
import numpy as np
from PIL import Image

from m3w_pipeline.core.config import ImageConfig, VideoConfig
from m3w_pipeline.media.images import flatten_alpha, is_webvtt, resize_and_encode, sniff_image_type, sniff_video_type
from m3w_pipeline.media.mp4 import Mp4Error, to_mp4

VIDEO_OK = "ok"
VIDEO_DROP_REASONS: tuple[str, ...] = (
    "too-large",  # more bytes than max_video_bytes, or frames above max_frame_pixels
    "not-video",  # no known video container magic (HTML error pages, images, text)
    "unsupported-format",  # a known container we do not keep (ogg, avi, flv, mpeg-ts, ...)
    "no-video-stream",  # opens, but holds only audio/data streams
    "unsupported-codec",  # FFmpeg has no decoder for the video stream
    "decode-error",  # the container or the frames we need do not decode
    "too-small",  # min(width, height) < min_side (e.g. 1x1 tracking videos)
    "bad-aspect",  # max/min side > max_aspect_ratio
    "too-short",  # duration < min_duration_s
    "too-long",  # duration > max_duration_s
    "mp4-failed",  # VideoConfig.container is mp4 and the video could not be remuxed or re-encoded (media/mp4.py)
)

# Sniffed kind -> FFmpeg demuxer name.
_DEMUXERS = {"mp4": "mov", "mov": "mov", "webm": "matroska", "mkv": "matroska", "ogv": "ogg",
             "avi": "avi", "flv": "flv", "ts": "mpegts", "mpg": "mpeg"}
# FFmpeg pixel formats with an alpha plane.
_ALPHA_FORMATS = re.compile(r"^(yuva|rgba|bgra|argb|abgr|gbrap|ya|pal8)")
# VP8/VP9 alpha lives in Matroska BlockAdditional data that only libvpx decodes.
_ALPHA_DECODERS = {"vp8": "libvpx", "vp9": "libvpx-vp9"}
_TRANSPOSE_CLOCKWISE = {90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_90}
_VTT_TIMING = re.compile(r"-->")
_VTT_TAG = re.compile(r"<[^>]*>")


@dataclass
class VideoProbe:
    """What the header (and the first frame) say about a video."""

    format: str  # sniffed container kind: mp4 | mov | webm | mkv | ...; also the shard extension
    codec: str  # FFmpeg decoder name of the video stream, e.g. h264, vp9
    width: int  # as displayed, i.e. after rotation
    height: int
    coded_width: int  # as stored in the stream
    coded_height: int
    rotation: int  # clockwise degrees applied to make frames upright: 0, 90, 180, 270
    fps: float
    duration: float  # seconds of video
    duration_source: str  # stream | container | frames | packets | decode
    declared_frames: Optional[int]  # the stream's frame count, when the container has one
    pix_fmt: str
    has_alpha: bool
    has_audio: bool
    bytes: int


@dataclass
class SampledFrame:
    data: bytes  # JPEG
    timestamp: float  # seconds from the stream start of the source frame
    target: float  # the slot midpoint it was chosen for
    width: int
    height: int
    sha256: str


@dataclass
class ProcessedVideo:
    data: bytes  # the original bytes, unchanged (stored as KEY.<format> unless `mp4` holds them as MP4)
    sha256: str  # of `data`
    probe: VideoProbe
    frames: list[SampledFrame] = field(default_factory=list)
    partial: bool = False  # kept after a decode error (see module doc)
    decode_error: str = ""
    decoded_frames: int = 0  # frames decoded to sample these (decoding stops at the last one needed)
    mp4: Optional[bytes] = None  # VideoConfig.container "mp4" and another container: `data` as MP4 (media/mp4.py)
    mp4_via: str = ""  # remux | transcode, when `mp4` is set
    mp4_sha256: str = ""  # of `mp4`

    @property
    def stored(self) -> tuple[str, bytes]:
        """(extension, bytes) of the video as a shard stores it."""
        return ("mp4", self.mp4) if self.mp4 is not None else (self.probe.format, self.data)


@dataclass
class VideoResult:
    """Either a video or the named reason it was dropped (see VIDEO_DROP_REASONS)."""

    video: Optional[ProcessedVideo]
    reason: str
    detail: str = ""
    probe: Optional[VideoProbe] = None  # what was known when it was dropped, if anything


class _Drop(Exception):
    def __init__(self, reason: str, detail: str = "", probe: Optional[VideoProbe] = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.probe = probe


# --------------------------------------------------------------------------- sniffing


def media_kind(content_type: str, data: bytes) -> str:
    """'video' (video containers and WebVTT tracks: the video side of a build) or 'image'."""
    ctype = content_type.split(";")[0].strip().lower()
    if sniff_image_type(data[:64]) not in (None, "svg"):
        return "image"
    if sniff_video_type(data) is not None or is_webvtt(data):
        return "video"
    if ctype.startswith("video/") or ctype in ("text/vtt", "application/x-mpegurl", "application/vnd.apple.mpegurl"):
        return "video"
    return "image"


def webvtt_text(data: bytes, max_bytes: int = 1_000_000) -> Optional[str]:
    """Cue text of a WebVTT file, tags removed, consecutive repeats merged; None if not WebVTT."""
    if len(data) > max_bytes or not is_webvtt(data):
        return None
    text = data.decode("utf-8", "replace").lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    cues: list[str] = []
    for block in text.split("\n\n")[1:]:
        lines = [line for line in block.split("\n") if line.strip()]
        timing = next((i for i, line in enumerate(lines) if _VTT_TIMING.search(line)), None)
        if timing is None:  # NOTE, STYLE, REGION blocks
            continue
        cue = " ".join(_VTT_TAG.sub("", line).strip() for line in lines[timing + 1 :])
        cue = " ".join(html.unescape(cue).split())
        if cue and (not cues or cues[-1] != cue):
            cues.append(cue)
    return " ".join(cues) or None


# --------------------------------------------------------------------------- frame slots


def frame_targets(duration: float, num_frames: int, frame_rate: float, anchor: str = "center") -> list[float]:
    """Slot midpoints (seconds) for `num_frames` frames; see the module doc."""
    if duration <= 0 or num_frames <= 0:
        return []
    slot = min(1.0 / frame_rate, duration / num_frames)
    start = (duration - slot * num_frames) / 2 if anchor == "center" else 0.0
    return [start + (i + 0.5) * slot for i in range(num_frames)]


# --------------------------------------------------------------------------- header


def _rate(stream: Any) -> Optional[Fraction]:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return None


def _rotation_from_tag(stream: Any) -> int:
    """Legacy `rotate` metadata (clockwise degrees), before FFmpeg moved it to side data."""
    try:
        return _quarter_turns(int(stream.metadata.get("rotate", "0")))
    except ValueError:
        return 0


def _quarter_turns(degrees: float) -> int:
    return int(round(degrees / 90.0)) % 4 * 90


def _frame_rotation(frame: Any, fallback: int) -> int:
    """Clockwise degrees from the frame's display matrix (PyAV reports counter-clockwise)."""
    ccw = getattr(frame, "rotation", 0) or 0
    return _quarter_turns(-ccw) if ccw else fallback


def _header_duration(container: Any, stream: Any, fps: Optional[Fraction]) -> tuple[Optional[float], str]:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base), "stream"
    if container.duration and container.duration > 0:
        return container.duration / av.time_base, "container"
    if stream.frames and fps:
        return float(stream.frames / fps), "frames"
    return None, ""


def _start_seconds(stream: Any) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else 0.0


def _packet_span(data: bytes, demuxer: str, fps: Optional[Fraction]) -> Optional[float]:
    """Duration from packet timestamps alone (demux, no decode): last end - first start."""
    frame_time = float(1 / fps) if fps else 0.0
    first = last_end = None
    with av.open(io.BytesIO(data), format=demuxer) as container:
        stream = container.streams.video[0]
        tb = stream.time_base
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            start = float(packet.pts * tb)
            end = start + (float(packet.duration * tb) if packet.duration else frame_time)
            first = start if first is None else min(first, start)
            last_end = end if last_end is None else max(last_end, end)
    if first is None or last_end is None or last_end <= first:
        return None
    return last_end - first


def _check_size(width: int, height: int, config: VideoConfig) -> None:
    if width <= 0 or height <= 0 or min(width, height) < config.min_side:
        raise _Drop("too-small", f"{width}x{height}, min side < {config.min_side}")
    if width * height > config.max_frame_pixels:
        raise _Drop("too-large", f"{width}x{height} > {config.max_frame_pixels} pixels")
    if max(width, height) / min(width, height) > config.max_aspect_ratio:
        raise _Drop("bad-aspect", f"{width}x{height}, aspect > {config.max_aspect_ratio}")


def _check_duration(duration: float, config: VideoConfig) -> None:
    if duration < config.min_duration_s:
        raise _Drop("too-short", f"{duration:.3f} s < {config.min_duration_s} s")
    if duration > config.max_duration_s:
        raise _Drop("too-long", f"{duration:.3f} s > {config.max_duration_s} s")


@dataclass
class _Opened:
    container: Any
    stream: Any
    demuxer: str
    kind: str
    fps: Optional[Fraction]
    probe: VideoProbe


def _open(data: bytes, config: VideoConfig) -> _Opened:
    """Open with the sniffed demuxer and read the header; raises _Drop."""
    if len(data) > config.max_video_bytes:
        raise _Drop("too-large", f"{len(data)} bytes > {config.max_video_bytes}")
    kind = sniff_video_type(data)
    if kind is None:
        raise _Drop("not-video", f"no video container magic in {len(data)} bytes")
    if kind not in config.allowed_formats:
        raise _Drop("unsupported-format", kind)
    demuxer = _DEMUXERS[kind]
    try:
        container = av.open(io.BytesIO(data), format=demuxer)
    except av.FFmpegError as err:
        raise _Drop("decode-error", f"{kind} container does not open: {err}") from None
    try:
        return _read_header(container, data, kind, demuxer)
    except BaseException:
        container.close()
        raise


def _read_header(container: Any, data: bytes, kind: str, demuxer: str) -> _Opened:
    if not container.streams.video:
        raise _Drop("no-video-stream", f"{len(container.streams)} streams, none video")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx is None or ctx.codec is None:
        raise _Drop("unsupported-codec", str(stream.codec_context))
    fps = _rate(stream)
    duration, source = _header_duration(container, stream, fps)
    rotation = _rotation_from_tag(stream)
    width, height = ctx.width, ctx.height
    shown = (height, width) if rotation in (90, 270) else (width, height)
    pix_fmt = ctx.pix_fmt or ""
    alpha = stream.metadata.get("alpha_mode") == "1" or bool(_ALPHA_FORMATS.match(pix_fmt))
    probe = VideoProbe(
        format=kind, codec=ctx.codec.name, width=shown[0], height=shown[1], coded_width=width,
        coded_height=height, rotation=rotation, fps=float(fps) if fps else 0.0,
        duration=duration or 0.0, duration_source=source, declared_frames=stream.frames or None,
        pix_fmt=pix_fmt, has_alpha=alpha, has_audio=bool(container.streams.audio), bytes=len(data),
    )
    return _Opened(container, stream, demuxer, kind, fps, probe)


def _check_size_and_duration(opened: _Opened, width: int, height: int, data: bytes, config: VideoConfig) -> None:
    """Size limits, then the duration limits; a header without a duration gets one from the packet
    timestamps first. Raises _Drop."""
    probe = opened.probe
    _check_size(width, height, config)
    if not probe.duration:
        span = _packet_span(data, opened.demuxer, opened.fps)
        if span:
            probe.duration, probe.duration_source = span, "packets"
    if probe.duration:
        _check_duration(probe.duration, config)


def _checked_header(data: bytes, config: VideoConfig) -> _Opened:
    """_open plus the size checks and a known duration (scanning packets when the header has none)."""
    opened = _open(data, config)
    probe = opened.probe
    try:
        _check_size_and_duration(opened, probe.coded_width, probe.coded_height, data, config)
    except _Drop as drop:
        opened.container.close()
        drop.probe = probe
        raise
    return opened


# --------------------------------------------------------------------------- decoding


def _decoder(opened: _Opened, config: VideoConfig) -> Any:
    """The stream's decoder; libvpx for VP8/VP9 with alpha (FFmpeg's native one drops alpha)."""
    ctx = opened.stream.codec_context
    name = _ALPHA_DECODERS.get(ctx.codec.name)
    if opened.probe.has_alpha and name:
        try:
            alpha_ctx = av.CodecContext.create(name, "r")
            alpha_ctx.thread_count = config.decode_threads
            return alpha_ctx
        except (av.FFmpegError, ValueError):
            pass
    ctx.thread_count = config.decode_threads
    return ctx


def _frames(opened: _Opened, decoder: Any, seek_to: Optional[float]) -> Iterator[Any]:
    """Decoded frames in decode order; seeks to the keyframe at or before `seek_to` first."""
    stream, container = opened.stream, opened.container
    if seek_to is not None and stream.time_base:
        try:
            container.seek(int((seek_to + _start_seconds(stream)) / stream.time_base), stream=stream, backward=True)
            decoder.flush_buffers()
        except av.FFmpegError:
            pass  # not seekable: decode from where we are
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream marker
            continue
        yield from decoder.decode(packet)
    yield from decoder.decode(None)


def _frame_time(frame: Any, stream: Any, start: float) -> Optional[float]:
    pts = frame.pts if frame.pts is not None else frame.dts
    if pts is None:
        return None
    return float(pts * stream.time_base) - start


def _upright_rgb(frame: Any, rotation: int, has_alpha: bool) -> Image.Image:
    """The frame as displayed: alpha over white, rotated upright."""
    if has_alpha and _ALPHA_FORMATS.match(frame.format.name):
        image = flatten_alpha(Image.fromarray(frame.to_ndarray(format="rgba"), "RGBA"))
    else:
        image = Image.fromarray(frame.to_ndarray(format="rgb24"), "RGB")
    if rotation:
        image = image.transpose(_TRANSPOSE_CLOCKWISE[rotation])
    return image


def _encode_frame(image: Image.Image, timestamp: float, target: float, image_config: ImageConfig) -> SampledFrame:
    resized, data = resize_and_encode(image, image_config)
    return SampledFrame(data, round(timestamp, 6), round(target, 6), resized.width, resized.height,
                        hashlib.sha256(data).hexdigest())


@dataclass
class _Sampler:
    """Picks, in one pass over decoded frames, the frame on screen at each target time."""

    targets: list[float]
    rotation: Optional[int]
    has_alpha: bool
    image_config: ImageConfig
    frames: list[SampledFrame] = field(default_factory=list)
    prev: Any = None
    prev_time: float = 0.0
    last_time: Optional[float] = None
    decoded: int = 0
    _cache: Optional[tuple[Any, Image.Image]] = None

    @property
    def done(self) -> bool:
        return len(self.frames) == len(self.targets)

    def feed(self, frame: Any, time: float) -> None:
        self.decoded += 1
        while not self.done and self.targets[len(self.frames)] < time:
            self._take(self.prev if self.prev is not None else frame, self.prev_time if self.prev is not None else time)
        self.prev, self.prev_time = frame, time
        self.last_time = time if self.last_time is None else max(self.last_time, time)

    def finish(self, until: float) -> None:
        """End of the decoded part: the last frame stays on screen until `until`."""
        while self.prev is not None and not self.done and self.targets[len(self.frames)] <= until:
            self._take(self.prev, self.prev_time)

    def _take(self, frame: Any, time: float) -> None:
        target = self.targets[len(self.frames)]
        # Keyed by the frame object itself (kept alive here): an id() could be reused by a newer frame.
        if self._cache is None or self._cache[0] is not frame:
            self._cache = (frame, _upright_rgb(frame, self.rotation or 0, self.has_alpha))
        self.frames.append(_encode_frame(self._cache[1], time, target, self.image_config))


def _decode_span(opened: _Opened, config: VideoConfig) -> float:
    """Duration by decoding every frame (last resort when no timestamps were readable)."""
    start = _start_seconds(opened.stream)
    frame_time = float(1 / opened.fps) if opened.fps else 0.0
    last, count = None, 0
    for frame in _frames(opened, _decoder(opened, config), None):
        count += 1
        if count > config.max_decoded_frames:
            raise _Drop("decode-error", f"more than {config.max_decoded_frames} frames decoded")
        time = _frame_time(frame, opened.stream, start)
        if time is not None:
            last = time if last is None else max(last, time)
    if last is None:
        raise _Drop("decode-error", "no frame with a timestamp")
    return last + frame_time


def _sample(opened: _Opened, config: VideoConfig, image_config: ImageConfig) -> tuple[list[SampledFrame], str, float, int]:
    """Decode up to the last target; returns frames, decode error text (or ''), decoded span, frames decoded."""
    probe, stream = opened.probe, opened.stream
    targets = frame_targets(probe.duration, config.num_frames, config.frame_rate, config.frame_anchor)
    frame_time = 1.0 / probe.fps if probe.fps else 0.0
    sampler = _Sampler(targets, None, probe.has_alpha, image_config)
    start = _start_seconds(stream)
    seek_to = targets[0] if targets and targets[0] > config.seek_after_s else None
    error = ""
    try:
        for frame in _frames(opened, _decoder(opened, config), seek_to):
            time = _frame_time(frame, stream, start)
            if time is None:
                continue
            if sampler.rotation is None:
                sampler.rotation = _frame_rotation(frame, probe.rotation)
            sampler.feed(frame, time)
            if sampler.done:
                break
            if sampler.decoded >= config.max_decoded_frames:
                error = f"decode budget of {config.max_decoded_frames} frames spent"
                break
    except av.FFmpegError as err:
        error = f"{type(err).__name__}: {err}"
    end = (sampler.last_time + frame_time) if sampler.last_time is not None else 0.0
    sampler.finish(probe.duration if not error else end)
    if sampler.rotation is not None:
        _apply_rotation(probe, sampler.rotation)
    return sampler.frames, error, end, sampler.decoded


def _apply_rotation(probe: VideoProbe, rotation: int) -> None:
    probe.rotation = rotation
    swap = rotation in (90, 270)
    probe.width, probe.height = (probe.coded_height, probe.coded_width) if swap else (probe.coded_width, probe.coded_height)


# --------------------------------------------------------------------------- entry points


def probe_video(data: bytes, config: VideoConfig = VideoConfig()) -> VideoResult:
    """Header facts, the first frame (rotation, decodability) and the checks; no sampling.

    Unlike a drop from `process_video` (which stops at the header), the probe of a
    dropped video here has its size after rotation.
    """
    try:
        opened = _open(data, config)
    except _Drop as drop:
        return VideoResult(None, drop.reason, drop.detail, drop.probe)
    except Exception as err:  # noqa: BLE001 - FFmpeg/PyAV on hostile bytes: counted, never raised
        return VideoResult(None, "decode-error", f"{type(err).__name__}: {err}")
    probe = opened.probe
    with opened.container:
        try:
            first = next(_frames(opened, _decoder(opened, config), None), None)
        except Exception as err:  # noqa: BLE001 - any failure of a library on hostile bytes is counted, never raised
            return VideoResult(None, "decode-error", f"first frame: {type(err).__name__}: {err}", probe)
    if first is None:
        return VideoResult(None, "decode-error", "no frame decodes", probe)
    _apply_rotation(probe, _frame_rotation(first, probe.rotation))
    try:
        _check_size_and_duration(opened, probe.width, probe.height, data, config)
    except _Drop as drop:
        return VideoResult(None, drop.reason, drop.detail, probe)
    except Exception as err:  # noqa: BLE001 - any failure of a library on hostile bytes is counted, never raised
        return VideoResult(None, "decode-error", f"{type(err).__name__}: {err}", probe)
    return VideoResult(None, VIDEO_OK, "", probe)


def process_video(data: bytes, config: VideoConfig = VideoConfig(), image_config: ImageConfig = ImageConfig()) -> VideoResult:
    """Probe, check and sample frames from one video; never raises on bad data."""
    try:
        return _process(data, config, image_config)
    except _Drop as drop:
        return VideoResult(None, drop.reason, drop.detail, drop.probe)
    except Exception as err:  # noqa: BLE001 - FFmpeg/PyAV on hostile bytes: counted, never raised
        return VideoResult(None, "decode-error", f"{type(err).__name__}: {err}")


def _process(data: bytes, config: VideoConfig, image_config: ImageConfig) -> VideoResult:
    opened = _checked_header(data, config)
    probe = opened.probe
    if not probe.duration:  # no header duration and no packet timestamps: count by decoding, then reopen
        with opened.container:
            probe.duration, probe.duration_source = _decode_span(opened, config), "decode"
        _check_duration_or_drop(probe, config)
        opened = _open(data, config)
        opened.probe = probe
    with opened.container:
        frames, error, decoded_until, decoded = _sample(opened, config, image_config)
    if not frames:
        raise _Drop("decode-error", error or "no frame decodes", probe)
    partial = bool(error) and len(frames) < config.num_frames
    if partial and len(frames) < config.min_frames:
        raise _Drop("decode-error", f"{error} after {decoded_until:.2f} s; {len(frames)} of {config.num_frames} frames", probe)
    if partial:
        probe.duration = decoded_until
    video = ProcessedVideo(data, hashlib.sha256(data).hexdigest(), probe, frames, partial, error, decoded)
    if config.container == "mp4" and probe.format != "mp4":
        try:
            video.mp4, video.mp4_via = to_mp4(data, _DEMUXERS[probe.format])
            video.mp4_sha256 = hashlib.sha256(video.mp4).hexdigest()
        except Mp4Error as err:
            raise _Drop("mp4-failed", str(err), probe) from None
    return VideoResult(video, VIDEO_OK, error)


def _check_duration_or_drop(probe: VideoProbe, config: VideoConfig) -> None:
    try:
        _check_duration(probe.duration, config)
    except _Drop as drop:
        drop.probe = probe
        raise


def frame_file(index: int, ext: str = "jpg") -> str:
    """Member suffix of frame `index` in a video shard: KEY.000.jpg, KEY.001.jpg, ..."""
    return f"{index:03d}.{ext}"


def frame_arrays(frames: list[SampledFrame]) -> list[np.ndarray]:
    """Decoded frame pixels (tests and debugging)."""
    return [np.asarray(Image.open(io.BytesIO(f.data)).convert("RGB")) for f in frames]
