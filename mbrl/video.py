"""mp4 writing with imageio's ffmpeg plugin."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def chw_to_hwc(frame: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(frame, -3, -1))


def write_video(path: str | os.PathLike, frames: np.ndarray | list[np.ndarray], fps: int = 10,
                scale: int = 1) -> Path:
    """Write uint8 frames [T, H, W, 3] as an mp4 (atomically), upscaled by an integer factor."""
    import imageio.v2 as imageio

    frames = np.asarray(frames, dtype=np.uint8)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    # H.264 wants even sizes; pad the bottom/right edge when needed.
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # (imageio picks the format by suffix)
    try:
        imageio.mimwrite(tmp, list(frames), fps=fps, macro_block_size=1)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# Border colours of the comparison video: real context frames vs imagined frames.
CONTEXT_RGB = (40, 200, 60)
IMAGINED_RGB = (220, 50, 50)


def comparison_video(real: np.ndarray, imagined: np.ndarray, context_frames: int) -> np.ndarray:
    """Frames [T, H', W', 3] of a grid video: one row per sample, columns real | imagined | error.

    ``real`` and ``imagined`` are uint8 [B, T, 3, H, W] with the first ``context_frames`` the same
    real context. Each tile gets a 1-pixel border: green while the model sees real frames, red
    once it imagines; the error column shows |real - imagined| amplified 4x.
    """
    real = chw_to_hwc(real).astype(np.int16)  # [B, T, H, W, 3]
    imagined = chw_to_hwc(imagined).astype(np.int16)
    error = np.clip(np.abs(real - imagined) * 4, 0, 255)
    tiles = np.stack([real, imagined, error], 2)  # [B, T, 3 columns, H, W, 3]
    tiles = np.pad(tiles, ((0, 0), (0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
    colour = np.zeros((tiles.shape[1], 3), np.int16)
    colour[:context_frames] = CONTEXT_RGB
    colour[context_frames:] = IMAGINED_RGB
    border = colour[None, :, None, None, :]  # [1, T, 1, 1, 3]
    tiles[:, :, :, 0, :] = border
    tiles[:, :, :, -1, :] = border
    tiles[:, :, :, :, 0] = border
    tiles[:, :, :, :, -1] = border
    b, t, c, h, w, _ = tiles.shape
    grid = tiles.transpose(1, 0, 3, 2, 4, 5).reshape(t, b * h, c * w, 3)
    return grid.astype(np.uint8)
