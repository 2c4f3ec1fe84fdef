"""Image preprocessing with Pillow and NumPy only (no torchvision).

CLIP's recipe: RGB, resize the shorter side to the encoder's size (bicubic), centre crop,
scale to [0, 1], normalise per channel. The encoder says which size and statistics it wants
(`image_size`, `image_mean`, `image_std`); `preprocess_for(encoder, images)` reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BUILTIN_MEAN = (0.5, 0.5, 0.5)
BUILTIN_STD = (0.5, 0.5, 0.5)

ImageLike = Union[Image.Image, str, Path]


def preprocess_image(
    image: ImageLike, size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> torch.Tensor:
    """One image -> float32 tensor (3, size, size), normalised."""
    if not isinstance(image, Image.Image):
        with Image.open(image) as opened:
            image = opened.convert("RGB")
    else:
        image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    resized = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    cropped = resized.crop((left, top, left + size, top + size))
    array = np.asarray(cropped, dtype=np.float32) / 255.0
    array = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def preprocess_images(
    images: Sequence[ImageLike], size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> torch.Tensor:
    """Several images (or the frames of one video) -> (N, 3, size, size)."""
    return torch.stack([preprocess_image(im, size, mean, std) for im in images])


def preprocess_for(encoder: object, images: Sequence[ImageLike]) -> torch.Tensor:
    """Preprocess with the size and statistics a vision encoder declares."""
    return preprocess_images(
        images,
        int(getattr(encoder, "image_size")),
        getattr(encoder, "image_mean", CLIP_MEAN),
        getattr(encoder, "image_std", CLIP_STD),
    )
