"""Image (and later video) bytes -> validated, normalised, resized, hashed media.

Every image a crawl hands us is untrusted: it may lie about its type, be cut
off at the crawler's size limit, declare gigapixels (a decompression bomb) or
simply be garbage. `process_image` never raises on bad input; it returns an
`ImageResult` whose `reason` is "ok" or one of `IMAGE_DROP_REASONS`, so that
the pipeline can count drops per reason instead of failing a bundle.

Pipeline for one image:
  sniff magic bytes -> open header (Pillow, restricted to the sniffed format)
  -> bomb / size / aspect checks from the header (nothing decoded yet)
  -> decode the first frame only (JPEG: DCT-domain downscale via draft)
  -> resize (never above the original size; bilinear: OpenCV's near the target, else Pillow's antialiased)
  -> RGB (alpha over white, 16-bit scaled, ICC -> sRGB)
  -> EXIF orientation -> deterministic re-encode -> sha256 + phash.
(Palette, alpha and 16-bit images become RGB before the resize.) `exact=True` is the slow
reference path: every pixel decoded, LANCZOS; same sizes, phash within a few bits.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import struct
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageCms, features

from m3w_pipeline.core.config import ImageConfig

IMAGE_OK = "ok"
IMAGE_DROP_REASONS: tuple[str, ...] = (
    "not-image",  # no known image magic bytes, or Pillow cannot identify it
    "unsupported-format",  # a known image type we do not decode (SVG, HEIC, ...)
    "zero-size",  # the header declares a width or height of 0
    "bomb",  # header declares more than max_image_pixels (decompression bomb)
    "truncated",  # the data ends before the image does
    "corrupt",  # any other decode failure
    "too-small",  # min(width, height) < min_side
    "bad-aspect",  # max(w, h) / min(w, h) > max_aspect_ratio
)

# sniff_image_type() name -> Pillow plugin that decodes it. Pillow is only ever
# asked to try the sniffed plugin: no EPS (Ghostscript), PSD, ... surprises.
_PILLOW_PLUGIN = {
    "jpeg": "JPEG",
    "png": "PNG",
    "gif": "GIF",
    "webp": "WEBP",
    "bmp": "BMP",
    "tiff": "TIFF",
    "ico": "ICO",
    "avif": "AVIF",
}
# WebP and AVIF are optional in a Pillow build; without them they are "unsupported-format".
_DECODABLE = frozenset(kind for kind in _PILLOW_PLUGIN if kind not in ("webp", "avif") or features.check(kind))

# output_format -> (Pillow format, file extension in a shard)
_ENCODERS = {"jpg": ("JPEG", "jpg"), "jpeg": ("JPEG", "jpg"), "png": ("PNG", "png"), "webp": ("WEBP", "webp")}

# Fast-path resampling (process_image(exact=False)); details of speed, not filter thresholds.
# A JPEG is decoded in the DCT domain at the smallest 1/2, 1/4 or 1/8 scale whose size is at
# least this fraction of the target, then scaled to the target: the output keeps at least 2/3
# of its nominal resolution (341 px of detail at max_side 512, above the 224 px a ViT sees),
# for a decode and resize that touch up to 4x fewer pixels.
_DRAFT_MIN_FRACTION = 2 / 3
# Then one bilinear step to the target. A draft lands within 4/3 of the target, where plain 2-tap
# interpolation needs no antialiasing: OpenCV's INTER_LINEAR_EXACT (vectorised, ~5x faster than
# Pillow's scalar resampler, and bit-exact across CPUs and builds) takes every image up to
# _LINEAR_MAX_SCALE times the target. Bigger ones (PNG, GIF, video frames, ...: their decode
# dominates) take Pillow's antialiased bilinear after an integer reduce() while the remaining
# filter still spans >= _REDUCING_GAP input pixels per output pixel.
_LINEAR_MAX_SCALE = 1.4
# 8-bit modes OpenCV resizes -> the raw layout they travel in, and its bytes per pixel: RGB as
# Pillow stores it (RGBX, 4 bytes), a plain copy each way, which OpenCV also resizes faster than 3.
_LINEAR_LAYOUT = {"L": ("L", 1), "RGB": ("RGBX", 4), "CMYK": ("CMYK", 4)}
_FAST_FILTER = Image.Resampling.BILINEAR
_REDUCING_GAP = 2.0
# One thread: each worker process is one core's worth of work; OpenCV's pool would oversubscribe it.
cv2.setNumThreads(1)
# phash: a 32x32 thumbnail (hash size 8 x high-frequency factor 4, as imagehash.phash), its
# reducing gap on the fast path, and the first 8 rows of the unnormalised DCT-II matrix.
_PHASH_SIDE = 32
_PHASH_BITS_SIDE = 8
_PHASH_REDUCING_GAP = 2.0
_PHASH_DCT = 2.0 * np.cos(
    np.pi * np.arange(_PHASH_BITS_SIDE)[:, None] * (2 * np.arange(_PHASH_SIDE)[None, :] + 1) / (2 * _PHASH_SIDE)
)
# Modes resized as stored and converted to RGB afterwards; palette, alpha (also a tRNS colour)
# and 16-bit images are normalised to RGB first.
_RESIZE_BEFORE_RGB = ("RGB", "L", "CMYK")
_WHITE = (255, 255, 255)
_SRGB_PROFILE = ImageCms.createProfile("sRGB")
_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# EXIF orientation -> the transpose that shows the stored pixels upright; 5-8 swap width and height.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = (5, 6, 7, 8)
_ORIENTATION_TAG = 0x0112
_BMP_DIB_HEADER_SIZES = (12, 16, 40, 52, 56, 64, 108, 124)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")
_AVIF_BRANDS = (b"avif", b"avis")


@dataclass
class ProcessedImage:
    data: bytes  # re-encoded bytes (JPEG by default)
    ext: str  # file extension of `data` in a shard: "jpg" | "png" | "webp"
    width: int
    height: int
    original_width: int  # as displayed, i.e. after EXIF orientation
    original_height: int
    original_format: str  # Pillow's format name of the input: JPEG, PNG, GIF, ...
    original_bytes: int
    sha256: str  # hex digest of `data`
    phash: str  # 64-bit perceptual hash of the resized pixels, hex (imagehash.phash's definition; ~= phash of `data`)
    original_sha256: str = ""  # hex digest of the input bytes (img2dataset's `sha256`: joins with source data)
    exif: str = "{}"  # the input's EXIF as a JSON object string, tag name -> value as text (`_exif_json`)


@dataclass
class ImageResult:
    """Either an image or the named reason it was dropped (see IMAGE_DROP_REASONS)."""

    image: Optional[ProcessedImage]
    reason: str  # "ok" or a drop reason
    detail: str = ""


class _Drop(Exception):
    """Internal: carries a drop reason out of the decode steps."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- sniffing


_MOV_TOP_BOXES = (b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot")
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_TS_PACKET = 188


def sniff_video_type(data: bytes) -> str | None:
    """Container kind from magic bytes: mp4, mov, webm, mkv, ogv, avi, flv, ts, mpg, or None."""
    head = data[:64]
    if head[4:8] == b"ftyp":
        if sniff_image_type(data) in ("avif", "heic"):
            return None
        return "mov" if head[8:12] == b"qt  " else "mp4"
    if head[4:8] in _MOV_TOP_BOXES and len(data) >= 16:
        return "mov"
    if head.startswith(_EBML_MAGIC):
        return "webm" if b"webm" in data[:64] else "mkv"
    if head.startswith(b"OggS"):
        return "ogv"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"FLV\x01"):
        return "flv"
    if head[:4] == b"\x00\x00\x01\xba":
        return "mpg"
    if len(data) > 2 * _TS_PACKET and data[0] == data[_TS_PACKET] == data[2 * _TS_PACKET] == 0x47:
        return "ts"
    return None


def is_webvtt(data: bytes) -> bool:
    """A WebVTT caption track (the `<track>` files of `<video>`)."""
    return data.lstrip(b"\xef\xbb\xbf")[:6] == b"WEBVTT"


def sniff_image_type(data: bytes) -> str | None:
    """Image type from magic bytes, ignoring any Content-Type (which often lies).

    Returns one of jpeg, png, gif, webp, bmp, tiff, avif, heic, svg, ico, or None.
    """
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[4:8] == b"ftyp":
        return _sniff_isobmff(data)
    if _looks_like_bmp(head):
        return "bmp"
    if head[:4] == b"\x00\x00\x01\x00" and head[4:6] != b"\x00\x00":
        return "ico"
    if _looks_like_svg(data):
        return "svg"
    return None


def _sniff_isobmff(data: bytes) -> str | None:
    """AVIF vs HEIC from the ftyp box's major and compatible brands."""
    box_size = struct.unpack(">I", data[:4])[0]
    brands = [data[8:12]] + [data[i : i + 4] for i in range(16, min(box_size, len(data), 256) - 3, 4)]
    if any(brand in _AVIF_BRANDS for brand in brands):
        return "avif"
    if any(brand in _HEIF_BRANDS for brand in brands):
        return "heic"
    return None  # e.g. MP4/MOV video


def _looks_like_bmp(head: bytes) -> bool:
    """"BM" alone matches ordinary text, so also require a known DIB header size."""
    if head[:2] != b"BM" or len(head) < 18:
        return False
    return struct.unpack("<I", head[14:18])[0] in _BMP_DIB_HEADER_SIZES


def _looks_like_svg(data: bytes) -> bool:
    """An XML/SVG document whose first element is <svg> (HTML with inline SVG is not)."""
    text = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not text.startswith((b"<?xml", b"<svg", b"<!--", b"<!doctype svg")):
        return False
    svg_at = text.find(b"<svg")
    html_at = text.find(b"<html")
    return svg_at >= 0 and (html_at < 0 or svg_at < html_at)


def _declared_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """Width/height straight from a GIF or PNG header (Pillow refuses zero sizes)."""
    if kind == "gif" and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if kind == "png" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


def _container_is_short(data: bytes, kind: str) -> bool:
    """True when a RIFF (WebP) header declares more bytes than we have."""
    if kind != "webp" or len(data) < 8:
        return False
    return struct.unpack("<I", data[4:8])[0] + 8 > len(data)


# --------------------------------------------------------------------------- decoding


def _open_header(data: bytes, kind: str) -> Image.Image:
    """Parse only the header (Pillow decodes lazily), with the sniffed plugin only."""
    try:
        return Image.open(io.BytesIO(data), formats=[_PILLOW_PLUGIN[kind]])
    except Image.UnidentifiedImageError as exc:
        size = _declared_size(data, kind)
        if size is not None and 0 in size:
            raise _Drop("zero-size", f"{kind} header declares {size[0]}x{size[1]}") from exc
        raise _Drop("not-image", f"sniffed {kind} but Pillow cannot identify it") from exc


def _check_header(im: Image.Image, config: ImageConfig) -> None:
    """Drop bombs, tiny and extreme-aspect images before any pixel is decoded.

    Pillow's own guard (global MAX_IMAGE_PIXELS, left untouched) already raised
    inside Image.open for anything over twice its limit; this applies ours.
    """
    width, height = im.size
    if width <= 0 or height <= 0:
        raise _Drop("zero-size", f"{width}x{height}")
    if width * height > config.max_image_pixels:
        raise _Drop("bomb", f"{width}x{height} = {width * height} pixels > {config.max_image_pixels}")
    if min(width, height) < config.min_side:
        raise _Drop("too-small", f"{width}x{height}, min side < {config.min_side}")
    if max(width, height) / min(width, height) > config.max_aspect_ratio:
        raise _Drop("bad-aspect", f"{width}x{height}, aspect > {config.max_aspect_ratio}")


def _fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Size with the longest side at most max_side, same aspect; never upscales."""
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _orientation(im: Image.Image) -> int:
    """EXIF (or XMP) orientation 1..8; 1 when absent or nonsense."""
    value = im.getexif().get(_ORIENTATION_TAG, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _classify_decode_error(exc: BaseException, data: bytes, kind: str) -> _Drop:
    """Map whatever Pillow raised on untrusted data to a drop reason."""
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return _Drop("bomb", str(exc))
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, EOFError) or "truncated" in message.lower() or _container_is_short(data, kind):
        return _Drop("truncated", message)
    return _Drop("corrupt", message)


def _decode(data: bytes, kind: str, config: ImageConfig, exact: bool) -> tuple[Image.Image, str, tuple[int, int], str]:
    """First frame as RGB at its final size, Pillow's format name, displayed original size, EXIF as JSON.

    Fast path: a JPEG is decoded in the DCT domain at the smallest 1/2, 1/4 or 1/8 scale that
    keeps _DRAFT_MIN_FRACTION of the target; RGB, grey and CMYK pixels are resized before any
    colour work and before the EXIF transpose, so both touch only output pixels. `exact`
    decodes every pixel and resamples with LANCZOS: the reference the fast path is checked against.

    Catches every exception from Pillow: on hostile input it raises a zoo of
    types (OSError, SyntaxError, ValueError, struct.error, ...), and one bad
    image must never fail the bundle it came in.
    """
    try:
        with _open_header(data, kind) as im:
            _check_header(im, config)
            exif = _exif_json(im.info.get("exif"))  # the block the header parse found: no second open
            fmt = im.format or kind.upper()
            stored_size = im.size
            target = _fit_size(*stored_size, config.max_side)
            icc = im.info.get("icc_profile")
            if not exact and target != stored_size:  # JPEG only: a DCT-scaled decode
                im.draft(None, (math.ceil(target[0] * _DRAFT_MIN_FRACTION), math.ceil(target[1] * _DRAFT_MIN_FRACTION)))
            im.load()  # the first frame only: we never seek() to later frames
            orientation = _orientation(im)
            if im.mode in _RESIZE_BEFORE_RGB and "transparency" not in im.info:
                rgb = _to_rgb(_resize(im, target, exact), icc, config)
            else:
                rgb = _resize(_to_rgb(im, icc, config), target, exact)
            if orientation != 1:
                rgb = rgb.transpose(_TRANSPOSE[orientation])
            displayed = stored_size[::-1] if orientation in _SWAPS_AXES else stored_size
            return rgb, fmt, displayed, exif
    except _Drop:
        raise
    except Exception as exc:
        raise _classify_decode_error(exc, data, kind) from exc


# --------------------------------------------------------------------------- normalising


def _to_rgb(im: Image.Image, icc: bytes | None, config: ImageConfig) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB in sRGB (from the embedded `icc` profile), transparent areas over white."""
    if im.mode in _HIGH_BIT_MODES:
        im = _high_bit_to_l(im)
    if im.mode in _ALPHA_MODES or im.info.get("transparency") is not None:
        im = _flatten_alpha(im)
    elif im.mode not in ("RGB", "CMYK"):  # CMYK waits: its ICC profile is a CMYK one
        im = im.convert("RGB")
    if icc and config.convert_icc_to_srgb:
        converted = _icc_to_srgb(im, icc)
        if converted is not None:
            return converted
    return im if im.mode == "RGB" else im.convert("RGB")


def _high_bit_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float grey -> 8-bit L by scaling, never clipping.

    Pillow's own I;16 -> L conversion clips at 255, which turns almost any
    16-bit image white. Integer data is scaled from its effective bit depth
    (the smallest of 8/10/12/14/16/.. bits that holds its maximum): sensor
    data stored as 10- or 12-bit values in 16-bit containers stays visible,
    and full-range 16-bit photos get the usual /257.
    """
    values = np.asarray(im).astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if im.mode != "F" and low >= 0:
        scaled = values * (255.0 / _full_scale(high))
    elif im.mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255.0
    else:  # negative or float data of unknown range: stretch what is there
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))  # 2-D uint8 -> L


def _full_scale(high: float) -> float:
    """Largest value of the smallest even bit depth >= 8 that holds `high`."""
    bits = 8
    while high > 2**bits - 1:
        bits += 2
    return float(2**bits - 1)


def _flatten_alpha(im: Image.Image) -> Image.Image:
    """Composite over white: web images assume a light page behind transparency."""
    rgba = im.convert("RGBA")  # also turns palette/grey tRNS into real alpha
    background = Image.new("RGB", rgba.size, _WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _icc_to_srgb(im: Image.Image, icc: bytes) -> Image.Image | None:
    """Convert from an embedded non-sRGB profile; None when not needed or not possible.

    Building an LCMS transform costs a few ms, so sRGB-tagged images (the
    common case) are recognised by profile description and skipped.
    """
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if "srgb" in ImageCms.getProfileDescription(source).lower():
            return None
        space = source.profile.xcolor_space.strip()
        if space != ("CMYK" if im.mode == "CMYK" else "RGB"):
            return None
        return ImageCms.profileToProfile(im, source, _SRGB_PROFILE, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None  # broken profile: fall back to a plain conversion


def _resize(im: Image.Image, target: tuple[int, int], exact: bool = False) -> Image.Image:
    """To target: exact is LANCZOS; fast is bilinear (up from a JPEG draft below the target, or
    down; antialiased beyond _LINEAR_MAX_SCALE). No-op at target size."""
    if im.size == target:
        return im
    if exact:
        return im.resize(target, Image.Resampling.LANCZOS)
    if im.mode in _LINEAR_LAYOUT and max(im.width / target[0], im.height / target[1]) <= _LINEAR_MAX_SCALE:
        raw, depth = _LINEAR_LAYOUT[im.mode]
        pixels = np.frombuffer(im.tobytes("raw", raw), dtype=np.uint8).reshape(im.height, im.width, depth)
        resized = cv2.resize(pixels, target, interpolation=cv2.INTER_LINEAR_EXACT)
        return Image.frombytes(im.mode, target, resized, "raw", raw)
    return im.resize(target, _FAST_FILTER, reducing_gap=_REDUCING_GAP)


def _phash(im: Image.Image, exact: bool) -> str:
    """64-bit perceptual hash (hex), bit for bit the definition imagehash.phash uses.

    Grey 32x32 LANCZOS thumbnail -> 2-D DCT-II -> its 8x8 lowest frequencies -> one bit per
    coefficient: above their median or not, row-major, most significant bit first. The fast
    path reduce()s by an integer factor before the LANCZOS step, and the 8x8 corner is two
    small matrix products rather than two full DCTs.
    """
    gap = None if exact else _PHASH_REDUCING_GAP
    thumb = im.convert("L").resize((_PHASH_SIDE, _PHASH_SIDE), Image.Resampling.LANCZOS, reducing_gap=gap)
    # Rounded so that float noise reads as the exact zeros a flat image's AC terms are.
    low = np.round(_PHASH_DCT @ np.asarray(thumb, dtype=np.float64) @ _PHASH_DCT.T, 6).ravel()
    middle = np.sort(low)[low.size // 2 - 1 : low.size // 2 + 1]  # np.median's two middle values, without its overhead
    return np.packbits(low > (middle[0] + middle[1]) / 2).tobytes().hex()


# --------------------------------------------------------------------------- encoding


def resize_and_encode(im: Image.Image, config: ImageConfig, pillow_format: str = "JPEG") -> tuple[Image.Image, bytes]:
    """An already decoded RGB picture (a video frame) at the size and encoding `process_image` gives images:
    the one entry point other media use, so they never depend on this module's private steps."""
    resized = _resize(im, _fit_size(im.width, im.height, config.max_side))
    return resized, _encode(resized, pillow_format, config)


def flatten_alpha(im: Image.Image) -> Image.Image:
    """Transparent areas over white, as every stored image shows them."""
    return _flatten_alpha(im)


def _encoder(output_format: str) -> tuple[str, str]:
    """(Pillow format, extension); a bad config is a bug, so it raises."""
    try:
        return _ENCODERS[output_format.lower()]
    except KeyError:
        raise ValueError(f"unknown ImageConfig.output_format {output_format!r}; use one of {sorted(_ENCODERS)}") from None


def _encode(im: Image.Image, pillow_format: str, config: ImageConfig) -> bytes:
    """Re-encode with no metadata (no EXIF, ICC, dpi, timestamps): same pixels, same bytes.

    JPEG uses the standard Huffman tables: optimize=True makes files ~3% smaller for ~10% more
    CPU per image, a poor trade for a crawl that re-encodes every image once.
    """
    im.info = {}  # Pillow's PNG/WebP writers fall back to im.info for icc/exif
    buffer = io.BytesIO()
    if pillow_format == "JPEG":
        im.save(buffer, "JPEG", quality=config.jpeg_quality)
    elif pillow_format == "WEBP":
        im.save(buffer, "WEBP", quality=config.jpeg_quality, method=4)
    else:
        im.save(buffer, "PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- entry point


def process_image(data: bytes, config: ImageConfig = ImageConfig(), *, exact: bool = False) -> ImageResult:
    """Validate, normalise, resize, re-encode and hash one image; never raises on bad data.

    Animated GIF/APNG/WebP keep their first frame only. Later frames are never
    decoded, so a bomb hidden in frame 2 is harmless and the image is kept (or
    dropped by the size filters) as its first frame. `exact=True` takes the slow
    reference path (full decode, LANCZOS): same sizes, near-identical pixels and phash.
    """
    pillow_format, ext = _encoder(config.output_format)
    kind = sniff_image_type(data)
    if kind is None:
        return ImageResult(None, "not-image", f"no image magic bytes in {len(data)} bytes")
    if kind not in _DECODABLE:
        return ImageResult(None, "unsupported-format", kind)
    try:
        rgb, original_format, (original_width, original_height), exif = _decode(data, kind, config, exact)
    except _Drop as drop:
        return ImageResult(None, drop.reason, drop.detail)
    encoded = _encode(rgb, pillow_format, config)
    image = ProcessedImage(
        data=encoded,
        ext=ext,
        width=rgb.width,
        height=rgb.height,
        original_width=original_width,
        original_height=original_height,
        original_format=original_format,
        original_bytes=len(data),
        sha256=hashlib.sha256(encoded).hexdigest(),
        phash=_phash(rgb, exact),
        original_sha256=hashlib.sha256(data).hexdigest(),
        exif=exif,
    )
    return ImageResult(image, IMAGE_OK)


_EXIF_IFD = 0x8769  # the Exif sub-IFD (exposure, lens, dates) beside the base IFD (make, model, ...)
_EXIF_MAX_TAGS = 256
_EXIF_MAX_VALUE_CHARS = 512


def _exif_json(raw: bytes | None) -> str:
    """EXIF as img2dataset stores it: a JSON object string, tag name -> value as text ("{}" when none).

    Parsed from the raw EXIF block (`info["exif"]`) the header parse already found: no second
    open, no pixel decode. Binary values (maker notes, thumbnails) and the GPS IFD (where a photo
    was taken) are left out; at most _EXIF_MAX_TAGS tags of at most _EXIF_MAX_VALUE_CHARS characters each.
    """
    if not raw:
        return "{}"
    try:
        exif = Image.Exif()
        exif.load(raw)
        tags = {**{k: v for k, v in exif.items() if k not in (_EXIF_IFD, ExifTags.IFD.GPSInfo)}, **exif.get_ifd(_EXIF_IFD)}
    except Exception:  # noqa: BLE001 - hostile EXIF makes Pillow raise many types; the image itself decoded
        return "{}"
    out: dict[str, str] = {}
    for tag, value in sorted(tags.items(), key=lambda kv: str(kv[0])):
        if isinstance(value, bytes) or len(out) >= _EXIF_MAX_TAGS:
            continue
        text = str(value).replace("\x00", "").strip()
        if text:
            out[ExifTags.TAGS.get(tag, str(tag))] = text[:_EXIF_MAX_VALUE_CHARS]
    return json.dumps(out, ensure_ascii=False, sort_keys=True)
