"""Frames from corpora: decode encoded images and bring frames to the square training size.

Resize modes (``resize=``), for a frame of H x W going to S x S:

    center_crop  the central min(H, W) square, then resized: no borders, loses the sides of wide
                 frames (what iVideoGPT does for OXE at 64x64 and 256x256; the default)
    pad          black borders to a max(H, W) square, then resized: keeps the whole field of view
    stretch      resized to S x S directly: keeps everything, distorts the aspect ratio

Downscaling uses Pillow's antialiased bilinear filter (area-aware, no aliasing at 4x-5x).
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

RESIZE_MODES = ("center_crop", "pad", "stretch")
RGB_CHANNELS = 3


def decode_image(data: bytes, raw_shape: tuple[int, int] | None = None,
                 min_side: int | None = None) -> np.ndarray:
    """Encoded JPEG / PNG bytes (or raw RGB bytes of ``raw_shape`` = (H, W)) -> uint8 [H, W, 3].

    ``min_side``: the frame will be downscaled until its short side is this long, so a JPEG may
    be decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg's scaled decoding, several
    times faster), never below that side."""
    if raw_shape is not None and len(data) == raw_shape[0] * raw_shape[1] * RGB_CHANNELS:
        return np.frombuffer(data, dtype=np.uint8).reshape(*raw_shape, RGB_CHANNELS)
    try:
        with Image.open(io.BytesIO(data)) as image:
            if min_side is not None and image.format == "JPEG":
                scale = min_side / min(image.size)
                image.draft("RGB", (math.ceil(image.size[0] * scale), math.ceil(image.size[1] * scale)))
            return np.asarray(image.convert("RGB"))
    except Exception as e:  # Pillow raises several types for bad data
        raise ValueError(f"undecodable image of {len(data)} bytes ({type(e).__name__}: {e})") from None


def resize_frame(frame: np.ndarray, size: int, mode: str = "center_crop") -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3] (see the module doc for the modes)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode '{mode}' is not one of {RESIZE_MODES}")
    if frame.ndim == 2:  # grayscale
        frame = np.repeat(frame[..., None], RGB_CHANNELS, axis=-1)
    if frame.ndim != 3 or frame.shape[-1] not in (RGB_CHANNELS, RGB_CHANNELS + 1):
        raise ValueError(f"expected a frame [H, W, 3], got shape {frame.shape}")
    frame = frame[..., :RGB_CHANNELS]  # drop alpha
    h, w = frame.shape[:2]
    if mode == "center_crop" and h != w:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        frame = frame[top:top + side, left:left + side]
    elif mode == "pad" and h != w:
        side = max(h, w)
        canvas = np.zeros((side, side, RGB_CHANNELS), dtype=np.uint8)
        top, left = (side - h) // 2, (side - w) // 2
        canvas[top:top + h, left:left + w] = frame
        frame = canvas
    if frame.shape[0] == size and frame.shape[1] == size:
        return np.ascontiguousarray(frame, dtype=np.uint8)
    image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))


def to_chw(frames: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """Frames [T, H, W, 3] -> uint8 [T, 3, H, W] (the episode layout)."""
    return np.ascontiguousarray(np.stack(frames).transpose(0, 3, 1, 2), dtype=np.uint8)
