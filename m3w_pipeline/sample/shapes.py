"""What the sample images and videos show: N coloured shapes on a plain or textured background.

Why: the text next to each image names exactly what is drawn (`ShapeSpec.description`), so
a tiny Flamingo trained on the crawl has a learnable image -> text mapping, and tests can
check pixels (shape centres) against the truth file. Everything is seeded and encoded with
fixed settings, so the same seed gives the same bytes.
"""
from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from m3w_pipeline.sample.text import plural

COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (215, 35, 35)),
    ("green", (30, 150, 60)),
    ("blue", (35, 70, 215)),
    ("yellow", (240, 205, 25)),
    ("orange", (240, 125, 20)),
    ("purple", (125, 45, 170)),
)
BACKGROUNDS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("white", (250, 250, 250)),
    ("black", (18, 18, 18)),
    ("grey", (128, 128, 128)),
    ("cream", (243, 233, 205)),
)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "hexagon")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six")
MAX_SHAPES = 6
COLOUR_RGB = dict(COLOURS)
BACKGROUND_RGB = dict(BACKGROUNDS)

# Pillow format name -> (file extension, correct Content-Type)
FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("jpg", "image/jpeg"),
    "PNG": ("png", "image/png"),
    "WEBP": ("webp", "image/webp"),
}
TEXTURE_SIZE = 900  # textures are cropped, so no image side may exceed this
DENSE_NOISE_STD = 8.0  # JPEG/WebP background texture strength: sets typical file size
VIDEO_SIZE = (160, 120)  # H.264 clips (render_shape_video): small, so encoding stays fast


@dataclass(frozen=True)
class ShapeSpec:
    """What an image shows; `description()` is the text a model should learn to produce."""

    shape: str
    colour: str
    count: int
    background: str

    def description(self) -> str:
        noun = self.shape if self.count == 1 else plural(self.shape)
        count = "a single" if self.count == 1 else NUMBER_WORDS[self.count]
        return f"{count} {self.colour} {noun} on a {self.background} background"


@dataclass
class RenderedImage:
    """An encoded image and what the truth needs to know about it."""

    data: bytes
    width: int
    height: int
    format: str  # Pillow format name
    centres: list[tuple[int, int]]

    @classmethod
    def encode(cls, image: Image.Image, fmt: str, centres: Optional[list[tuple[int, int]]] = None) -> RenderedImage:
        return cls(encode_image(image, fmt), image.width, image.height, fmt, centres or [])


class ImageFactory:
    """Draws shape images on cached noise textures; textures make JPEGs realistically large."""

    def __init__(self, seed: int) -> None:
        nprng = np.random.default_rng(seed)
        self._dense: dict[str, Image.Image] = {}
        self._sparse: dict[str, Image.Image] = {}
        half = (TEXTURE_SIZE // 2, TEXTURE_SIZE // 2)
        # 2x2-pixel noise blocks: JPEGs of 10-60 KB that still encode in ~1-2 ms.
        dense_noise = _upsample2(nprng.normal(0.0, DENSE_NOISE_STD, half + (3,)))
        # PNG: grey speckles on 20% of 2x2 blocks; dense noise made PNGs 150 KB and slow.
        sparse_noise = _upsample2((nprng.random(half + (1,)) < 0.2) * nprng.integers(-12, 13, half + (1,)))
        for name, rgb in BACKGROUNDS:
            base = np.array(rgb, dtype=np.float64)[None, None, :]
            self._dense[name] = Image.fromarray(np.clip(base + dense_noise, 0, 255).astype(np.uint8))
            self._sparse[name] = Image.fromarray(np.clip(base + sparse_noise, 0, 255).astype(np.uint8))

    def render(self, spec: ShapeSpec, width: int, height: int, fmt: str, rng: random.Random) -> RenderedImage:
        image, centres = self.draw(spec, width, height, fmt, rng)
        return RenderedImage.encode(image, fmt, centres)

    def draw(
        self, spec: ShapeSpec, width: int, height: int, fmt: str, rng: random.Random
    ) -> tuple[Image.Image, list[tuple[int, int]]]:
        """The unencoded image and each shape's centre (kept so smaller variants can be cut from it)."""
        texture = (self._sparse if fmt == "PNG" else self._dense)[spec.background]
        x0 = rng.randrange(TEXTURE_SIZE - width + 1)
        y0 = rng.randrange(TEXTURE_SIZE - height + 1)
        image = texture.crop((x0, y0, x0 + width, y0 + height))
        draw = ImageDraw.Draw(image)
        centres = []
        for cx, cy, radius in _shape_positions(spec.count, width, height, rng):
            _draw_shape(draw, spec.shape, cx, cy, radius, COLOUR_RGB[spec.colour])
            centres.append((int(round(cx)), int(round(cy))))
        return image, centres


def downscale(image: Image.Image, width: int, fmt: str) -> RenderedImage:
    """A smaller copy (a srcset/<picture> candidate) at `width`, same aspect ratio; no centres."""
    height = max(1, round(image.height * width / image.width))
    small = image.resize((width, height), Image.NEAREST)  # ~50x faster than BILINEAR here
    return RenderedImage.encode(small, fmt)


def _upsample2(array: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(array, 2, axis=0), 2, axis=1)


def encode_image(image: Image.Image, fmt: str) -> bytes:
    """Encode with fast settings: the generator must make thousands of images quickly."""
    out = io.BytesIO()
    if fmt == "JPEG":
        image.save(out, "JPEG", quality=75)
    elif fmt == "PNG":
        image.save(out, "PNG", compress_level=3)
    elif fmt == "WEBP":
        image.save(out, "WEBP", quality=70, method=0)
    else:
        raise ValueError(f"unsupported format {fmt}")
    return out.getvalue()


@dataclass
class RenderedVideo:
    """An encoded clip and what the truth records about it."""

    data: bytes  # an MP4 file
    width: int
    height: int
    fps: int
    frames: int
    duration: float  # seconds: frames / fps
    velocity: tuple[float, float]  # px per second every shape moves by


def render_shape_video(spec: ShapeSpec, seed_key: str, fps: int, seconds: float,
                       size: tuple[int, int] = VIDEO_SIZE) -> RenderedVideo:
    """Shapes of `spec` gliding across a plain background, as a deterministic H.264 MP4.

    Every shape moves by the same velocity (towards the far side of the frame), so
    consecutive frames differ and the description stays true in every frame.
    """
    import av  # only the generator needs PyAV here

    rng = random.Random(f"m3w-sample-video:{seed_key}")
    width, height = size
    margin = 0.3  # shapes are laid out in the middle 40%..70% and move by up to a quarter frame
    positions = _shape_positions(spec.count, round(width * (1 - margin)), round(height * (1 - margin)), rng)
    offset = (width * margin / 2, height * margin / 2)
    direction = rng.choice((-1, 1))
    velocity = (direction * width * 0.25 / seconds, rng.uniform(-0.1, 0.1) * height / seconds)
    n_frames = int(round(fps * seconds))
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4", container_options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23", "threads": "1",
                                                            "g": str(fps), "bf": "0"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for i in range(n_frames):
            t = i / fps
            frame = Image.new("RGB", size, BACKGROUND_RGB[spec.background])
            draw = ImageDraw.Draw(frame)
            for cx, cy, radius in positions:
                x = offset[0] + cx + velocity[0] * t
                y = offset[1] + cy + velocity[1] * t
                _draw_shape(draw, spec.shape, x, y, radius, COLOUR_RGB[spec.colour])
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return RenderedVideo(buffer.getvalue(), width, height, fps, n_frames, n_frames / fps, velocity)


def _shape_positions(
    count: int, width: int, height: int, rng: random.Random
) -> list[tuple[float, float, float]]:
    """Non-overlapping (cx, cy, radius): one shape per randomly chosen grid cell."""
    cols = max(1, min(count, round(math.sqrt(count * width / height))))
    rows = math.ceil(count / cols)
    cell_w, cell_h = width / cols, height / rows
    cells = rng.sample(range(rows * cols), count)
    positions = []
    for cell in sorted(cells):
        row, col = divmod(cell, cols)
        radius = 0.4 * min(cell_w, cell_h) * rng.uniform(0.7, 1.0)
        slack_x = max(0.0, cell_w / 2 - radius)
        slack_y = max(0.0, cell_h / 2 - radius)
        cx = (col + 0.5) * cell_w + rng.uniform(-slack_x, slack_x)
        cy = (row + 0.5) * cell_h + rng.uniform(-slack_y, slack_y)
        positions.append((cx, cy, max(radius, 2.0)))
    return positions


def _regular_polygon(cx: float, cy: float, radius: float, sides: int, start_deg: float) -> list[tuple[float, float]]:
    return [
        (cx + radius * math.cos(math.radians(start_deg + 360 * i / sides)),
         cy + radius * math.sin(math.radians(start_deg + 360 * i / sides)))
        for i in range(sides)
    ]


def _star(cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    points = []
    for i in range(10):
        r = radius if i % 2 == 0 else radius * 0.45
        angle = math.radians(-90 + 36 * i)
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float, rgb: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=rgb)
    elif shape == "square":
        half = radius * 0.8
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=rgb)
    elif shape == "triangle":
        # Centroid of the triangle is (cx, cy + radius/4) for start -90; shift so the
        # recorded centre lies well inside it.
        draw.polygon(_regular_polygon(cx, cy - radius * 0.2, radius * 1.1, 3, -90), fill=rgb)
    elif shape == "star":
        draw.polygon(_star(cx, cy, radius), fill=rgb)
    elif shape == "diamond":
        draw.polygon(_regular_polygon(cx, cy, radius, 4, -90), fill=rgb)
    elif shape == "hexagon":
        draw.polygon(_regular_polygon(cx, cy, radius, 6, 0), fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape}")
