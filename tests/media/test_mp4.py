"""VideoConfig.container = "mp4": real crawled WebM/MOV files stored as MP4 that FFmpeg reads back.

The files are the shared corpus's real videos; every check decodes the stored bytes again."""
from __future__ import annotations

import hashlib
import io

import av
import pytest
from conftest import CORPUS

from m3w_pipeline.core.config import BuildConfig, VideoConfig
from m3w_pipeline.media.mp4 import MP4_AUDIO_CODECS, MP4_VIDEO_CODECS
from m3w_pipeline.media.video import probe_video, process_video

VIDEOS = CORPUS / "video"
MP4 = VideoConfig(container="mp4", min_duration_s=0.05, min_frames=1)


def _stored(name: str, config: VideoConfig = MP4):
    result = process_video((VIDEOS / name).read_bytes(), config)
    assert result.video is not None, (name, result.reason, result.detail)
    return result.video


@pytest.mark.parametrize("name, via, codec", [
    ("decord__video_90.mov", "remux", "h264"),  # H.264 in QuickTime: streams copied
    ("moviepy__no_duration.webm", "remux", "vp9"),  # VP9 + Opus: MP4 takes both
    ("moviepy__big_buck_bunny_432_433.webm", "transcode", "h264"),  # VP8: re-encoded
    ("moviepy__transparent.webm", "transcode", "vp9"),  # VP9 copied, its Vorbis audio re-encoded to AAC
])
def test_non_mp4_videos_are_stored_as_mp4_that_decodes(name: str, via: str, codec: str) -> None:
    video = _stored(name)
    ext, data = video.stored
    assert ext == "mp4" and video.mp4_via == via and video.mp4_sha256 == hashlib.sha256(data).hexdigest()
    assert video.sha256 == hashlib.sha256((VIDEOS / name).read_bytes()).hexdigest()  # still the crawled bytes' hash
    with av.open(io.BytesIO(data), format="mp4") as container:
        stream = container.streams.video[0]
        assert stream.codec_context.codec.canonical_name == codec in MP4_VIDEO_CODECS
        assert all(a.codec_context.codec.canonical_name in MP4_AUDIO_CODECS for a in container.streams.audio)
        assert sum(1 for _ in container.decode(video=0)) >= 3
    again = probe_video(data, MP4).probe  # the MP4 shows the same video: size, rotation, duration
    assert again is not None and again.format == "mp4"
    assert (again.width, again.height, again.rotation) == (video.probe.width, video.probe.height, video.probe.rotation)
    assert again.duration == pytest.approx(video.probe.duration, abs=0.05)
    assert _stored(name).mp4 == data  # deterministic: the same input gives the same bytes


def test_mp4_input_and_the_original_option_keep_the_crawled_bytes() -> None:
    mp4 = _stored("moviepy__chaplin.mp4")
    assert mp4.mp4 is None and mp4.stored == ("mp4", (VIDEOS / "moviepy__chaplin.mp4").read_bytes())
    webm = _stored("moviepy__transparent.webm", VideoConfig(container="original"))
    assert webm.mp4 is None and webm.stored == ("webm", (VIDEOS / "moviepy__transparent.webm").read_bytes())


def test_an_unknown_container_option_stops_the_build_before_work() -> None:
    with pytest.raises(ValueError, match="video.container must be original or mp4"):
        BuildConfig(video=VideoConfig(container="avi"))
