"""Offscreen MuJoCo rendering of one camera at one size, with the fast settings.

Used by the Meta-World, DMC and LIBERO backends (all MuJoCo), so every suite renders the same
way: through ``mujoco.Renderer`` on the simulator's own ``MjModel``/``MjData``.

Fast settings (``fast=True``) give 4-8x more frames/s on a CPU (Mesa software GL): no
multisampling, an offscreen buffer the size of the frame, no shadow map, and no shadow,
reflection or skybox passes. They must be applied before the GL context exists, hence here.
"""
from __future__ import annotations

import mujoco
import numpy as np


def camera_id(model: mujoco.MjModel, camera: int | str) -> int:
    """Resolve a camera name or index; -1 is MuJoCo's free camera."""
    names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
    if isinstance(camera, str) and not camera.lstrip("-").isdigit():
        if camera not in names:
            raise ValueError(f"camera '{camera}' is not in this scene; cameras: {names}")
        return names.index(camera)
    index = int(camera)
    if not -1 <= index < model.ncam:
        raise ValueError(f"camera index {index} out of range; this scene has {model.ncam} cameras: {names}")
    return index


class MujocoRenderer:
    """Renders ``data`` from one camera into uint8 [size, size, 3] (rows top to bottom)."""

    def __init__(self, model: mujoco.MjModel, size: int, camera: int | str, fast: bool = True):
        self.model, self.size, self.fast = model, size, fast
        self.camera = camera_id(model, camera)
        if fast:
            model.vis.quality.offsamples = 0
            model.vis.quality.shadowsize = 0
            model.vis.global_.offwidth = size
            model.vis.global_.offheight = size
        else:  # keep the model's own settings; the buffer only has to be big enough
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, size)
            model.vis.global_.offheight = max(model.vis.global_.offheight, size)
        self._renderer: mujoco.Renderer | None = mujoco.Renderer(model, height=size, width=size)
        if fast:
            flags = self._renderer.scene.flags
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                         mujoco.mjtRndFlag.mjRND_SKYBOX):
                flags[flag] = 0

    def render(self, data: mujoco.MjData) -> np.ndarray:
        if self._renderer is None:
            raise RuntimeError("render() after close(); make a new environment")
        self._renderer.update_scene(data, camera=self.camera)
        return self._renderer.render()  # uint8 [H, W, 3], a fresh array

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()  # frees the GL context now rather than at interpreter exit
            self._renderer = None
