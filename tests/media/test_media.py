"""process_image / sniff_image_type on the real Pillow test images in ../shared/corpus/images.

Every expectation here is a concrete value (reason, size, pixel statistics),
so a regression in decoding, normalising or filtering shows up as a failure.
"""
from __future__ import annotations

import hashlib
import io
import json
import struct
import time
import zlib
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile, features

from m3w_pipeline.core.config import ImageConfig
from m3w_pipeline.media.images import (
    IMAGE_DROP_REASONS,
    IMAGE_OK,
    ImageResult,
    process_image,
    sniff_image_type,
)

IMAGES = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "images"
# Lets the size/colour tests reach images the default min_side would drop.
NO_FILTERS = ImageConfig(min_side=1, max_aspect_ratio=1000.0)

if not IMAGES.is_dir():  # pragma: no cover - depends on the checkout layout
    pytest.skip(f"test corpus not found at {IMAGES}", allow_module_level=True)

_AVIF = bool(features.check("avif"))

# file -> (reason, output (width, height) or None, Pillow format of the input or None)
EXPECTED = {
    "pillow__16bit.cropped.tif": ("ok", (64, 64), "TIFF"),
    "pillow__apng_delay.png": ("ok", (128, 64), "PNG"),  # first frame of 5
    "pillow__avif_hopper.avif": ("ok", (128, 128), "AVIF") if _AVIF else ("unsupported-format", None, None),
    "pillow__broken.png": ("not-image", None, None),
    "pillow__chi.gif": ("ok", (320, 240), "GIF"),  # first frame of 31
    "pillow__decompression_bomb.gif": ("bomb", None, None),
    # frame 0 is a plain 100x100 image; the bomb is in frame 1, which is never decoded
    "pillow__decompression_bomb_extents.gif": ("ok", (100, 100), "GIF"),
    "pillow__dispose_bgnd.gif": ("ok", (100, 100), "GIF"),
    "pillow__flower.jpg": ("ok", (480, 360), "JPEG"),
    "pillow__flower2.webp": ("ok", (300, 225), "WEBP"),
    "pillow__hopper.gif": ("ok", (128, 128), "GIF"),
    "pillow__hopper.jpg": ("ok", (128, 128), "JPEG"),
    "pillow__hopper.png": ("ok", (128, 128), "PNG"),
    "pillow__hopper.tif": ("ok", (128, 128), "TIFF"),
    "pillow__hopper.webp": ("ok", (128, 128), "WEBP"),
    "pillow__hopper_16bit_qtables.jpg": ("ok", (128, 128), "JPEG"),
    "pillow__hopper_gray.jpg": ("ok", (128, 128), "JPEG"),
    "pillow__hopper_orientation_3.jpg": ("ok", (128, 128), "JPEG"),
    "pillow__hopper_orientation_6.jpg": ("ok", (128, 128), "JPEG"),
    "pillow__icc_profile.png": ("too-small", None, None),  # 57x57 < min_side 64
    "pillow__l_trns.png": ("ok", (64, 64), "PNG"),
    "pillow__p_trns_single.png": ("ok", (64, 64), "PNG"),
    "pillow__pil_sample_cmyk.jpg": ("ok", (100, 100), "JPEG"),
    "pillow__tRNS_null_1x1.png": ("too-small", None, None),
    "pillow__tiff_16bit_RGB.tiff": ("too-small", None, None),  # 100x40
    "pillow__transparent.gif": ("ok", (200, 150), "GIF"),
    "pillow__transparent.png": ("ok", (200, 150), "PNG"),
    "pillow__truncated_image.png": ("truncated", None, None),
    "pillow__truncated_jpeg.jpg": ("truncated", None, None),
    # Pillow refuses zero-area images as "cannot identify"; the GIF header itself
    # declares width 0, which is the more useful reason to count.
    "pillow__zero_width.gif": ("zero-size", None, None),
    "ukwa__16px-photo.jpg": ("too-small", None, None),
}

SNIFFED = {
    ".jpg": "jpeg",
    ".png": "png",
    ".gif": "gif",
    ".webp": "webp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".avif": "avif",
}


def _read(name: str) -> bytes:
    return (IMAGES / name).read_bytes()


def _pixels(result: ImageResult) -> np.ndarray:
    """Decode the output bytes, checking they are a plain RGB image."""
    assert result.image is not None, result
    with Image.open(io.BytesIO(result.image.data)) as im:
        assert im.mode == "RGB"
        assert im.size == (result.image.width, result.image.height)
        return np.asarray(im, dtype=np.int16)


def _encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _hamming(a: str, b: str) -> int:
    return imagehash.hex_to_hash(a) - imagehash.hex_to_hash(b)


# --------------------------------------------------------------------------- corpus table


def test_expectation_table_covers_the_whole_corpus() -> None:
    """A new fixture file must get an explicit expectation."""
    assert sorted(p.name for p in IMAGES.iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_image(name: str) -> None:
    reason, size, fmt = EXPECTED[name]
    data = _read(name)
    result = process_image(data)
    assert result.reason == reason, result.detail
    assert reason in IMAGE_DROP_REASONS + (IMAGE_OK,)
    if reason != IMAGE_OK:
        assert result.image is None and result.detail
        return
    image = result.image
    assert image is not None
    assert (image.width, image.height) == size
    assert (image.original_width, image.original_height) == size  # all corpus images are <= 512
    assert image.original_format == fmt
    assert image.original_bytes == len(data)
    assert image.ext == "jpg" and image.data[:3] == b"\xff\xd8\xff"
    _pixels(result)


def test_drop_reasons_are_unique_and_exclude_ok() -> None:
    assert len(set(IMAGE_DROP_REASONS)) == len(IMAGE_DROP_REASONS)
    assert IMAGE_OK not in IMAGE_DROP_REASONS
    assert {"bomb", "truncated", "not-image", "zero-size", "corrupt", "unsupported-format",
            "too-small", "bad-aspect"} == set(IMAGE_DROP_REASONS)


def test_size_filters_off_keeps_small_and_16bit_rgb_images() -> None:
    """With filters off, the images dropped above decode to the right sizes."""
    expected = {
        "pillow__icc_profile.png": (57, 57),  # RGBA with an sRGB ICC profile
        "pillow__tRNS_null_1x1.png": (1, 1),
        "pillow__tiff_16bit_RGB.tiff": (100, 40),
        "ukwa__16px-photo.jpg": (16, 16),
    }
    for name, size in expected.items():
        result = process_image(_read(name), NO_FILTERS)
        assert result.reason == IMAGE_OK, (name, result.detail)
        assert _pixels(result).shape == (size[1], size[0], 3)


# --------------------------------------------------------------------------- orientation and colour


@pytest.mark.parametrize(
    "name, stored_as",
    [
        ("pillow__hopper_orientation_3.jpg", Image.Transpose.ROTATE_180),
        ("pillow__hopper_orientation_6.jpg", Image.Transpose.ROTATE_270),
    ],
)
def test_exif_orientation_is_applied(name: str, stored_as: Image.Transpose) -> None:
    """The output looks like the upright hopper.jpg, the stored pixels do not."""
    upright = np.asarray(Image.open(IMAGES / "pillow__hopper.jpg").convert("RGB"))
    with Image.open(IMAGES / name) as stored:
        stored_rgb = stored.convert("RGB")  # raw pixels, EXIF ignored
    assert _mean_abs_diff(np.asarray(stored_rgb), upright) > 50  # sideways/upside down as stored
    assert _mean_abs_diff(np.asarray(stored_rgb.transpose(stored_as)), upright) < 8  # fixture sanity
    output = _pixels(process_image(_read(name)))
    assert _mean_abs_diff(output, upright) < 8  # JPEG re-encode tolerance


def test_alpha_is_composited_over_white() -> None:
    """Fully transparent pixels become exactly white (PNG output: no JPEG ringing)."""
    png = ImageConfig(output_format="png")
    for name in ("pillow__transparent.png", "pillow__l_trns.png", "pillow__p_trns_single.png",
                 "pillow__transparent.gif"):
        with Image.open(IMAGES / name) as source:
            alpha = np.asarray(source.convert("RGBA"))[..., 3]
        assert (alpha == 0).sum() > 100, name
        output = _pixels(process_image(_read(name), png))
        assert (output[alpha == 0] == 255).all(), name
        assert output[alpha == 255].mean() < 250, name  # opaque content is not washed out


def test_16bit_grey_is_scaled_not_clipped() -> None:
    """Values 291..694 (10-bit data in a 16-bit TIFF) map to x*255/1023, not to 255."""
    with Image.open(IMAGES / "pillow__16bit.cropped.tif") as im:
        assert im.mode == "I;16"
        source = np.asarray(im).astype(np.float64)
    output = _pixels(process_image(_read("pillow__16bit.cropped.tif")))
    grey = output[..., 0]
    assert 60 < grey.min() and grey.max() < 200  # Pillow's convert("L") would give all 255
    assert abs(grey.mean() - source.mean() * 255 / 1023) < 2
    assert np.corrcoef(source.ravel(), grey.ravel())[0, 1] > 0.9


def test_cmyk_and_grey_become_rgb_with_the_right_colours() -> None:
    for name in ("pillow__pil_sample_cmyk.jpg", "pillow__hopper_gray.jpg"):
        with Image.open(IMAGES / name) as im:
            assert im.mode in ("CMYK", "L")
            reference = np.asarray(im.convert("RGB"))
        assert _mean_abs_diff(_pixels(process_image(_read(name))), reference) < 10, name


def _swapped_primaries_profile() -> bytes:
    """An RGB ICC profile that is sRGB with red and green primaries swapped."""
    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    offsets = {}
    for i in range(struct.unpack(">I", profile[128:132])[0]):
        entry = 132 + 12 * i
        offsets[bytes(profile[entry : entry + 4])] = entry + 4
    red, green = offsets[b"rXYZ"], offsets[b"gXYZ"]
    profile[red : red + 8], profile[green : green + 8] = profile[green : green + 8], profile[red : red + 8]
    # rename it, so it is not taken for sRGB ("sRGB built-in" is stored as UTF-16)
    return bytes(profile).replace("sRGB".encode("utf-16-be"), "GRBx".encode("utf-16-be"))


def test_non_srgb_icc_profile_is_converted() -> None:
    red = _encode(Image.new("RGB", (128, 128), (255, 0, 0)), "PNG", icc_profile=_swapped_primaries_profile())
    converted = _pixels(process_image(red))[64, 64]
    assert converted[1] > 200 and converted[0] < 60  # the profile says "red" means green
    untouched = _pixels(process_image(red, ImageConfig(convert_icc_to_srgb=False)))[64, 64]
    assert untouched[0] > 200 and untouched[1] < 60


def test_output_has_no_metadata() -> None:
    """EXIF and ICC from the input are not copied (they would also break determinism)."""
    for output_format in ("jpg", "png", "webp"):
        config = ImageConfig(output_format=output_format)
        for name in ("pillow__hopper_orientation_6.jpg", "pillow__flower2.webp", "pillow__flower.jpg"):
            result = process_image(_read(name), config)
            assert result.image is not None
            with Image.open(io.BytesIO(result.image.data)) as im:
                assert "exif" not in im.info and "icc_profile" not in im.info, (name, output_format)
                assert not im.getexif()


# --------------------------------------------------------------------------- bombs and broken data


def test_gigapixel_bomb_is_dropped_fast() -> None:
    start = time.perf_counter()
    result = process_image(_read("pillow__decompression_bomb.gif"))
    assert result.reason == "bomb"
    assert "4364696535" in result.detail  # the declared pixel count, from the header
    assert time.perf_counter() - start < 0.5


def test_bomb_limit_from_config_drops_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """480x360 = 172800 px > 100000: dropped from the header, load() never runs."""

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    result = process_image(_read("pillow__flower.jpg"), ImageConfig(max_image_pixels=100_000))
    assert result.reason == "bomb"
    assert "172800" in result.detail


def test_pillow_global_limit_is_not_mutated() -> None:
    before = Image.MAX_IMAGE_PIXELS
    process_image(_read("pillow__flower.jpg"), ImageConfig(max_image_pixels=10**12))
    process_image(_read("pillow__flower.jpg"), ImageConfig(max_image_pixels=10))
    assert Image.MAX_IMAGE_PIXELS == before


def test_pillow_bomb_error_and_warning_are_handled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's own guard (unchanged by us) raises over 2x its limit and warns over 1x."""
    data = _read("pillow__flower.jpg")  # 172800 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    assert process_image(data, ImageConfig(max_image_pixels=10**9)).reason == "bomb"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    with pytest.warns(Image.DecompressionBombWarning):
        assert process_image(data, ImageConfig(max_image_pixels=10**9)).reason == IMAGE_OK


def test_extents_bomb_keeps_first_frame_and_never_seeks() -> None:
    """Frame 1 really is a bomb (fixture check); we keep frame 0 as a 100x100 image."""
    with Image.open(IMAGES / "pillow__decompression_bomb_extents.gif") as im:
        with pytest.raises(Image.DecompressionBombError):
            im.seek(1)
    result = process_image(_read("pillow__decompression_bomb_extents.gif"))
    assert result.reason == IMAGE_OK
    assert _pixels(result).shape == (100, 100, 3)


def test_truncated_inputs() -> None:
    hopper_webp = _read("pillow__hopper.webp")
    flower = _read("pillow__flower.jpg")
    cases = {
        "corpus png": _read("pillow__truncated_image.png"),
        "corpus jpeg": _read("pillow__truncated_jpeg.jpg"),
        "half jpeg": flower[: len(flower) // 2],
        "half webp": hopper_webp[: len(hopper_webp) // 2],  # RIFF header declares more bytes
        "half png": _read("pillow__hopper.png")[:15000],
    }
    for label, data in cases.items():
        result = process_image(data)
        assert result.reason == "truncated", (label, result.detail)


def test_not_images() -> None:
    cases = {
        "corpus broken.png": _read("pillow__broken.png"),  # PNG signature, then garbage
        "empty": b"",
        "html": b"<!doctype html><html><body><svg></svg></body></html>",
        "text starting BM": b"BMW cars are fast " * 4,
        "mp4": b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2",
    }
    for label, data in cases.items():
        result = process_image(data)
        assert result.reason == "not-image", (label, result.detail)


def test_corrupt_image_data() -> None:
    """A valid header whose compressed data is garbage is corrupt, not truncated."""
    png = bytearray(_read("pillow__hopper.png"))
    idat = png.index(b"IDAT")
    length = struct.unpack(">I", png[idat - 4 : idat])[0]
    png[idat + 4 : idat + 4 + length] = bytes((7 * i + 3) % 256 for i in range(length))
    png[idat + 4 + length : idat + 8 + length] = struct.pack(">I", zlib.crc32(png[idat : idat + 4 + length]))
    result = process_image(bytes(png))
    assert result.reason == "corrupt", result.detail
    assert "broken data stream" in result.detail


def test_unsupported_formats() -> None:
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"></svg>'
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    for data in (svg, heic):
        assert process_image(data).reason == "unsupported-format"


# --------------------------------------------------------------------------- filters and resizing


def test_bad_aspect() -> None:
    wide = _encode(Image.new("RGB", (800, 200), (10, 120, 200)), "PNG")  # 4:1
    result = process_image(wide)
    assert result.reason == "bad-aspect" and "800x200" in result.detail
    assert process_image(wide, ImageConfig(max_aspect_ratio=4.0)).reason == IMAGE_OK
    apng = _read("pillow__apng_delay.png")  # 128x64
    assert process_image(apng, ImageConfig(max_aspect_ratio=1.5)).reason == "bad-aspect"


def test_min_side_boundary() -> None:
    hopper = _read("pillow__hopper.jpg")  # 128x128
    assert process_image(hopper, ImageConfig(min_side=128)).reason == IMAGE_OK
    assert process_image(hopper, ImageConfig(min_side=129)).reason == "too-small"


def test_resize_obeys_max_side_and_keeps_aspect() -> None:
    flower = _read("pillow__flower.jpg")  # 480x360
    small = process_image(flower, ImageConfig(max_side=100)).image
    assert small is not None
    assert (small.width, small.height) == (100, 75)
    assert (small.original_width, small.original_height) == (480, 360)
    never_upscaled = process_image(flower, ImageConfig(max_side=2000)).image
    assert never_upscaled is not None and (never_upscaled.width, never_upscaled.height) == (480, 360)


def test_large_jpeg_draft_resize_matches_plain_lanczos() -> None:
    """The DCT-domain draft shortcut for big JPEGs must look like a full resize."""
    with Image.open(IMAGES / "pillow__flower.jpg") as im:
        big = im.convert("RGB").resize((3000, 2250), Image.Resampling.BICUBIC)
    data = _encode(big, "JPEG", quality=95)
    result = process_image(data)
    assert result.image is not None
    assert (result.image.width, result.image.height) == (512, 384)
    with Image.open(io.BytesIO(data)) as full:
        reference = np.asarray(full.convert("RGB").resize((512, 384), Image.Resampling.LANCZOS))
    assert _mean_abs_diff(_pixels(result), reference) < 4


def test_resize_portrait_with_orientation() -> None:
    """Orientation 6 swaps the axes: a stored 600x300 landscape is a 300x600 portrait."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = _encode(Image.new("RGB", (900, 450), (200, 30, 30)), "JPEG", exif=exif.tobytes())
    result = process_image(stored, ImageConfig(max_side=300))
    assert result.image is not None
    assert (result.image.width, result.image.height) == (150, 300)
    assert (result.image.original_width, result.image.original_height) == (450, 900)


# --------------------------------------------------------------------------- encoding and hashing


def test_same_input_gives_same_bytes() -> None:
    for output_format in ("jpg", "png", "webp"):
        config = ImageConfig(output_format=output_format)
        for name in ("pillow__flower.jpg", "pillow__transparent.png", "pillow__chi.gif"):
            first = process_image(_read(name), config).image
            second = process_image(_read(name), config).image
            assert first is not None and second is not None
            assert first.data == second.data and first.phash == second.phash


def test_output_formats() -> None:
    expected = {"jpg": ("jpg", "JPEG"), "png": ("png", "PNG"), "webp": ("webp", "WEBP")}
    for output_format, (ext, pillow_format) in expected.items():
        image = process_image(_read("pillow__hopper.png"), ImageConfig(output_format=output_format)).image
        assert image is not None and image.ext == ext
        with Image.open(io.BytesIO(image.data)) as im:
            assert im.format == pillow_format
    lossless = _pixels(process_image(_read("pillow__hopper.png"), ImageConfig(output_format="png")))
    assert (lossless == np.asarray(Image.open(IMAGES / "pillow__hopper.png"))).all()
    with pytest.raises(ValueError, match="output_format"):
        process_image(_read("pillow__hopper.png"), ImageConfig(output_format="gif"))


def test_jpeg_quality_is_used() -> None:
    flower = _read("pillow__flower.jpg")
    low = process_image(flower, ImageConfig(jpeg_quality=30)).image
    high = process_image(flower, ImageConfig(jpeg_quality=95)).image
    assert low is not None and high is not None
    assert len(low.data) < len(high.data) / 2


def test_sha256_matches_hashlib() -> None:
    image = process_image(_read("pillow__flower.jpg")).image
    assert image is not None
    assert image.sha256 == hashlib.sha256(image.data).hexdigest()


def test_phash_is_stable_and_similar_images_are_close() -> None:
    flower = process_image(_read("pillow__flower.jpg")).image
    smaller = process_image(_read("pillow__flower.jpg"), ImageConfig(max_side=160)).image
    hopper = process_image(_read("pillow__hopper.jpg")).image
    hopper_png = process_image(_read("pillow__hopper.png")).image
    assert flower and smaller and hopper and hopper_png
    assert len(flower.phash) == 16 and int(flower.phash, 16) >= 0
    with Image.open(io.BytesIO(flower.data)) as decoded:
        assert _hamming(flower.phash, str(imagehash.phash(decoded))) <= 2
    assert _hamming(flower.phash, smaller.phash) <= 4  # resized copy
    assert _hamming(hopper.phash, hopper_png.phash) <= 4  # same picture, other codec
    assert _hamming(flower.phash, hopper.phash) >= 16  # different pictures


# --------------------------------------------------------------------------- fast path vs exact path

# The real photographs of the corpus, and long sides that reach every JPEG draft case at
# max_side 512: 1/2 then up (700), 1/2 then down (1100), 1/4 then up (1500), 1/8 (3000).
PHOTOS = ("pillow__flower.jpg", "pillow__flower2.webp", "pillow__hopper.png", "pillow__hopper_gray.jpg", "pillow__pil_sample_cmyk.jpg")
LONG_SIDES = (700, 1100, 1500, 3000)


def _photo_jpeg(name: str, long_side: int, **params: object) -> bytes:
    """A real photo scaled to `long_side` and saved as JPEG in its own mode (RGB, L or CMYK)."""
    with Image.open(IMAGES / name) as im:
        scale = long_side / max(im.size)
        big = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
    return _encode(big, "JPEG", **params)


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("long_side", LONG_SIDES)
@pytest.mark.parametrize("progressive", [False, True])
def test_fast_path_matches_exact_path_on_real_photos(name: str, long_side: int, progressive: bool) -> None:
    """DCT-scaled decode + bilinear must give the exact path's sizes, phash and (nearly) pixels."""
    data = _photo_jpeg(name, long_side, quality=88, progressive=progressive)
    fast, exact = process_image(data), process_image(data, exact=True)
    assert fast.image is not None and exact.image is not None
    assert (fast.image.width, fast.image.height) == (exact.image.width, exact.image.height)
    assert max(fast.image.width, fast.image.height) == 512
    assert (fast.image.original_width, fast.image.original_height) == (exact.image.original_width, exact.image.original_height)
    assert _hamming(fast.image.phash, exact.image.phash) <= 4
    assert _mean_abs_diff(_pixels(fast), _pixels(exact)) < 4  # out of 255: the same picture, a little softer
    again = process_image(data)
    assert again.image is not None
    assert again.image.data == fast.image.data and again.image.phash == fast.image.phash
    assert fast.image.sha256 == again.image.sha256 == hashlib.sha256(fast.image.data).hexdigest()


def test_fast_path_with_orientation_matches_exact_path() -> None:
    """Resizing before the EXIF transpose must land on the same displayed size and picture."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _photo_jpeg("pillow__flower.jpg", 1100, quality=90, exif=exif.tobytes())
    fast, exact = process_image(data), process_image(data, exact=True)
    assert fast.image is not None and exact.image is not None
    assert (fast.image.width, fast.image.height) == (exact.image.width, exact.image.height) == (384, 512)
    assert (fast.image.original_width, fast.image.original_height) == (825, 1100)
    assert _hamming(fast.image.phash, exact.image.phash) <= 4
    assert _mean_abs_diff(_pixels(fast), _pixels(exact)) < 4


@pytest.mark.parametrize("name", ("pillow__flower.jpg", "pillow__flower2.webp", "pillow__hopper.png", "pillow__chi.gif", "pillow__transparent.png"))
def test_phash_is_imagehash_phash_of_the_pixels(name: str) -> None:
    """Our phash is imagehash.phash's definition: equal on the exact path's (lossless PNG) pixels."""
    png = ImageConfig(output_format="png", max_side=200)
    exact, fast = process_image(_read(name), png, exact=True).image, process_image(_read(name), png).image
    assert exact is not None and fast is not None
    with Image.open(io.BytesIO(exact.data)) as decoded:
        assert exact.phash == str(imagehash.phash(decoded))
    with Image.open(io.BytesIO(fast.data)) as decoded:
        assert _hamming(fast.phash, str(imagehash.phash(decoded))) <= 2  # only the thumbnail's reduce() differs


# --------------------------------------------------------------------------- sniffing


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sniff_corpus(name: str) -> None:
    expected = {
        "pillow__broken.png": "png",  # the signature is intact, the rest is garbage
        "pillow__tiff_16bit_RGB.tiff": "tiff",
    }.get(name, SNIFFED[Path(name).suffix])
    assert sniff_image_type(_read(name)) == expected


def test_sniff_other_types() -> None:
    bmp = _encode(Image.new("RGB", (4, 4)), "BMP")
    ico = _encode(Image.new("RGB", (16, 16)), "ICO")
    cases = {
        "bmp": bmp,
        "ico": ico,
        "svg": b"\xef\xbb\xbf  <svg xmlns='http://www.w3.org/2000/svg'/>",
        "heic": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
    }
    for expected, data in cases.items():
        assert sniff_image_type(data) == expected
    assert sniff_image_type(b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf") == "avif"
    assert sniff_image_type(b"MM\x00*\x00\x00\x00\x08") == "tiff"
    for not_image in (b"", b"BM", b"<html><svg/></html>", b"GIF8", b"\x00\x00\x00\x18ftypisom" + b"\x00" * 12):
        assert sniff_image_type(not_image) is None


def test_bmp_and_ico_decode() -> None:
    source = Image.open(IMAGES / "pillow__hopper.png").convert("RGB")
    for fmt in ("BMP", "ICO"):
        result = process_image(_encode(source, fmt))
        assert result.reason == IMAGE_OK and result.image is not None
        assert result.image.original_format == fmt
        assert _mean_abs_diff(_pixels(result), np.asarray(source)) < 8


def test_exif_is_read_from_the_header_parse_as_json() -> None:
    """The pair rows' `exif`: base and Exif sub-IFD tags as text, from the block the header parse found."""
    flower = process_image(_read("pillow__flower.jpg")).image
    assert flower is not None
    tags = json.loads(flower.exif)
    assert (tags["Make"], tags["Model"], tags["DateTimeOriginal"]) == ("Canon", "Canon PowerShot S40", "2003:12:14 12:01:44")
    assert tags["FNumber"] == "4.9" and tags["ExifImageWidth"] == "2272"  # Exif sub-IFD tags join the base IFD's
    assert len(tags) == 33 and "MakerNote" not in tags  # binary values are left out
    assert json.loads(process_image(_read("pillow__hopper.png")).image.exif) == {}


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's, on the broken block below
@pytest.mark.parametrize("fmt", ("JPEG", "PNG", "WEBP"))
def test_exif_leaves_out_gps_binary_and_nul_and_survives_a_broken_block(fmt: str) -> None:
    exif = Image.Exif()
    exif[0x010F] = "Make\x00r"  # NULs dropped
    exif[0x927C] = b"\x01\x02binary maker note"
    exif.get_ifd(0x8825)[2] = (51.0, 30.0, 0.0)  # GPSLatitude: never stored
    exif.get_ifd(0x8769)[0x9003] = "2020:01:02 03:04:05"
    data = _encode(Image.new("RGB", (300, 200), (10, 200, 30)), fmt, exif=exif.tobytes())
    image = process_image(data).image
    assert image is not None
    assert json.loads(image.exif) == {"Make": "Maker", "DateTimeOriginal": "2020:01:02 03:04:05"}
    broken = _encode(Image.new("RGB", (300, 200), (10, 200, 30)), fmt, exif=b"Exif\x00\x00MM\x00*\x00\x00\xff\xff")
    kept = process_image(broken)
    assert kept.reason == IMAGE_OK and kept.image is not None and kept.image.exif == "{}"
