"""Convert the official LIBERO demonstration files (robomimic-style hdf5) to our episodes.

The schema (LIBERO ``scripts/create_dataset.py``):

    data.attrs: env_name, problem_info (JSON: language_instruction, ...), bddl_file_name, ...
    data/demo_<i>/actions             float64 [N, 7]   delta end-effector pose + gripper, in [-1, 1]
    data/demo_<i>/rewards             uint8   [N]      sparse: 1 at the success step
    data/demo_<i>/dones               uint8   [N]      1 at the last step
    data/demo_<i>/obs/agentview_rgb   uint8   [N, H, W, 3]   rendered upside down (rotated 180)

Time alignment: LIBERO records the image *after* each action (``obs, r, done, info =
env.step(action_j)`` then stores ``obs``), so image ``j`` results from action ``j`` and the
frame before action 0 is not in the file. In our format (``obs[t] --action[t]--> obs[t+1]``)
that gives ``obs = images[0:N]`` and ``action / reward / dones = actions / rewards /
dones[1:N]``: T = N - 1 steps, the first recorded action dropped.
Rewards: LIBERO's sparse 0/1 plus ``success_bonus`` on success steps, as our LIBERO env gives.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from worldmodel.episodes import Episode, save_episode

LIBERO_ACTION_DIM = 7
DEFAULT_CAMERA = "agentview_rgb"
LIBERO_FPS = 20.0  # robosuite control frequency of the LIBERO datasets


class LiberoFormatError(ValueError):
    """The file is not a LIBERO demonstration file (or lacks what the conversion needs)."""


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, H, W, 3] -> uint8 [N, 3, size, size] (antialiased bilinear)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # [N, 3, H, W]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return x.contiguous().numpy()


def libero_episodes(path: str | Path, image_size: int, *, rotate_180: bool = True,
                    camera: str = DEFAULT_CAMERA, success_bonus: float = 0.0,
                    max_demos: int | None = None) -> Iterator[Episode]:
    """Yield one ``Episode`` per ``data/demo_<i>`` of a LIBERO hdf5 file, in demo order.

    rotate_180: rotate the stored frames by 180 degrees; True makes LIBERO's upside-down
    frames upright (what our env renders with ``task.rotate_180=false``)."""
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise LiberoFormatError(f"{path} is not a readable hdf5 file ({e})") from None
    with f:
        if "data" not in f:
            raise LiberoFormatError(f"{path} has no 'data' group; is it a LIBERO demo file?")
        data = f["data"]
        demos = sorted((k for k in data.keys() if k.startswith("demo_")), key=lambda k: int(k[5:]))
        if not demos:
            raise LiberoFormatError(f"{path} holds no data/demo_<i> groups")
        language = ""
        if "problem_info" in data.attrs:
            language = json.loads(data.attrs["problem_info"]).get("language_instruction", "")
        for name in demos[:max_demos]:
            demo = data[name]
            for key in ("actions", f"obs/{camera}"):
                if key not in demo:
                    raise LiberoFormatError(f"{path}: data/{name} has no '{key}'")
            images = demo[f"obs/{camera}"][()]  # uint8 [N, H, W, 3]
            actions = demo["actions"][()].astype(np.float32)  # [N, 7]
            n = len(actions)
            rewards = demo["rewards"][()] if "rewards" in demo else np.zeros(n)
            dones = demo["dones"][()] if "dones" in demo else np.zeros(n)
            if images.ndim != 4 or images.shape[-1] != 3 or len(images) != n or n < 2:
                raise LiberoFormatError(f"{path}: data/{name} has {len(images)} images of shape "
                                        f"{images.shape[1:]} for {n} actions (expected N >= 2 "
                                        "images [N, H, W, 3] for N actions)")
            if rotate_180:
                images = images[:, ::-1, ::-1]
            success = np.asarray(rewards[1:]) > 0
            yield Episode(
                obs=resize_frames(images, image_size),
                action=np.clip(actions[1:], -1.0, 1.0),
                reward=(np.asarray(rewards[1:], np.float32) + success_bonus * success).astype(np.float32),
                success=success, terminal=np.asarray(dones[1:]).astype(bool),
                meta={"source": "libero_hdf5", "file": path.name, "demo": name, "fps": LIBERO_FPS,
                      "language": language, "rotate_180": rotate_180, "camera": camera})


def convert_libero(path: str | Path, out_dir: str | Path, image_size: int, *,
                   task: str = "", rotate_180: bool = True, camera: str = DEFAULT_CAMERA,
                   success_bonus: float = 0.0, max_demos: int | None = None) -> list[Path]:
    """Write every demo of a LIBERO hdf5 file as ``<out_dir>/<file stem>_demo_<i>.npz``."""
    written = []
    for episode in libero_episodes(path, image_size, rotate_180=rotate_180, camera=camera,
                                   success_bonus=success_bonus, max_demos=max_demos):
        episode.meta["task"] = task
        stem = Path(path).stem
        written.append(save_episode(Path(out_dir) / f"{stem}_{episode.meta['demo']}.npz", episode))
    return written
