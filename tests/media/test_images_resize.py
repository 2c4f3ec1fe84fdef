"""The fast path's resize (issue 12): OpenCV's bit-exact bilinear near the target, Pillow's antialiased beyond.

Pictures whose true resized values are known (linear ramps: bilinear interpolation of a ramp is the
ramp), so a wrong sampling grid, a channel mix-up in the RGBX round trip or a nearest-neighbour
shortcut shows up as numbers, not as a blur nobody measures.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from m3w_pipeline.core.config import ImageConfig
from m3w_pipeline.media.images import process_image, resize_and_encode

CONFIG = ImageConfig(max_side=512, output_format="png", min_side=1)


def _ramps(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Band 0 rises with x, band 1 with y, band 2 (and 3) constant: each band's resize is known."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    bands = [x, y, np.full((height, width), 77.0), np.full((height, width), 201.0)][: len(Image.new(mode, (1, 1)).getbands())]
    stacked = np.rint(np.stack(bands, axis=-1)).astype(np.uint8)
    return Image.frombytes(mode, (width, height), stacked.tobytes())


def _expected_ramp(n_in: int, n_out: int) -> np.ndarray:
    """The ramp 0..255 over n_in pixels sampled at the n_out output pixel centres (edges clamped)."""
    positions = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    return positions * 255 / (n_in - 1)


@pytest.mark.parametrize("size", [(600, 450), (700, 500), (389, 611)])
def test_near_target_resize_is_bilinear_with_bands_in_place(size: tuple[int, int]) -> None:
    """Within 1.4x of the target: every band lands where it was, on the pixel-centre grid, to +-1."""
    resized, _data = resize_and_encode(_ramps(*size), CONFIG)
    width, height = resized.size
    assert max(width, height) == 512 and resized.mode == "RGB"
    pixels = np.asarray(resized).astype(np.float64)
    assert np.abs(pixels[:, :, 0] - _expected_ramp(size[0], width)[None, :]).max() <= 1.0
    assert np.abs(pixels[:, :, 1] - _expected_ramp(size[1], height)[:, None]).max() <= 1.0
    assert (pixels[:, :, 2] == 77).all()


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_near_target_resize_keeps_grey_and_cmyk_modes(mode: str) -> None:
    """Grey and CMYK are resized as stored (one and four bands), before any colour conversion."""
    resized, _data = resize_and_encode(_ramps(640, 480, mode), ImageConfig(max_side=512, min_side=1))
    assert resized.mode == mode and resized.size == (512, 384)
    pixels = np.asarray(resized).astype(np.float64).reshape(384, 512, -1)
    assert np.abs(pixels[:, :, 0] - _expected_ramp(640, 512)[None, :]).max() <= 1.0
    if mode == "CMYK":
        assert np.abs(pixels[:, :, 1] - _expected_ramp(480, 384)[:, None]).max() <= 1.0
        assert (pixels[:, :, 2] == 77).all() and (pixels[:, :, 3] == 201).all()


def test_far_from_target_keeps_pillows_antialiased_bilinear() -> None:
    """Beyond 1.4x (no draft: PNG, GIF, video frames) the bytes are Pillow's reduce + antialiased bilinear."""
    picture = _ramps(1200, 900)
    picture.paste((250, 10, 10), (100, 100, 400, 101))  # a 1-pixel line: plain 2-tap sampling would drop or alias it
    resized, _data = resize_and_encode(picture, CONFIG)
    expected = picture.resize((512, 384), Image.Resampling.BILINEAR, reducing_gap=2.0)
    assert resized.tobytes() == expected.tobytes()


def test_the_switch_is_at_1_4x() -> None:
    """716 px (1.398x of 512) takes the linear path, 718 px (1.402x) Pillow's: they differ on a detailed picture."""
    rng = np.random.default_rng(5)
    for width, pillow_path in ((716, False), (718, True)):
        noise = Image.frombytes("RGB", (width, 300), rng.integers(0, 256, (300, width, 3), dtype=np.uint8).tobytes())
        target = (512, round(300 * 512 / width))
        resized, _data = resize_and_encode(noise, CONFIG)
        same_as_pillow = resized.tobytes() == noise.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0).tobytes()
        assert same_as_pillow is pillow_path, width


def test_jpeg_fast_path_is_deterministic_and_close_to_the_exact_path() -> None:
    """A photo-like JPEG: same bytes twice; against the exact path (full decode, LANCZOS) PSNR > 35 dB."""
    base = _ramps(1500, 1000)
    texture = np.asarray(base).astype(np.int16) + np.random.default_rng(3).integers(-20, 21, (1000, 1500, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(texture, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    first, second, exact = process_image(data), process_image(data), process_image(data, exact=True)
    assert first.image is not None and second.image is not None and exact.image is not None
    assert first.image.data == second.image.data and first.image.phash == second.image.phash
    assert (first.image.width, first.image.height) == (exact.image.width, exact.image.height) == (512, 341)
    with Image.open(io.BytesIO(first.image.data)) as a, Image.open(io.BytesIO(exact.image.data)) as b:
        mse = np.mean((np.asarray(a.convert("RGB"), np.float64) - np.asarray(b.convert("RGB"), np.float64)) ** 2)
    assert 10 * np.log10(255**2 / mse) > 35
