"""ManiSkill 3 tasks on the CPU: PhysX CPU simulation, SAPIEN rendering on lavapipe (Vulkan).

Observations are the task's RGB camera (``camera``, "base_camera" by default) rendered at the
frame size; ``info["state"]`` is the flattened proprioception and task extras (qpos, qvel,
tcp pose, goal, ...). ManiSkill ends an episode on success by default; with
``terminate_on_success: false`` (our default, as in Meta-World) only a failure terminates.

Scenes depend on the env's seed only: ManiSkill 3 draws an unseeded ``reset()``'s scene from the
global torch RNG, so the agent's own torch draws (and the player's plain resets) would change it.
``enhanced_determinism=True`` makes every reset draw its episode seed from the env's own RNG.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

SIMS_DIR = Path(os.environ.get("MBRL_SIMS_DIR", Path(__file__).resolve().parents[2] / ".sims"))
ICD_FILE = SIMS_DIR / "vulkan" / "lvp_icd.json"  # written by scripts/install_sims.sh maniskill
SIM_BACKEND, RENDER_BACKEND = "physx_cpu", "cpu"
SKIPPED_OBS_KEYS = ("sensor_data", "sensor_param")  # pixels and camera matrices: not state
# What SAPIEN's RuntimeError says when Vulkan cannot start (no driver, an incompatible one, no device)
VULKAN_FAILURES = ("Vulkan", "vk::", "physical device", "IncompatibleDriver")


def prepare_vulkan() -> None:
    """Use the project's lavapipe (Debian 12's is too old for SAPIEN) unless told otherwise."""
    if "VK_ICD_FILENAMES" not in os.environ and ICD_FILE.is_file():
        os.environ["VK_ICD_FILENAMES"] = str(ICD_FILE)


def task_names() -> list[str]:
    from mani_skill.utils.registration import REGISTERED_ENVS
    return sorted(REGISTERED_ENVS)


def _numpy(x: Any) -> np.ndarray:
    return x.cpu().numpy() if hasattr(x, "cpu") else np.asarray(x)


def _flatten_state(obs: dict) -> np.ndarray:
    parts = []
    for key, value in obs.items():
        if key in SKIPPED_OBS_KEYS:
            continue
        if isinstance(value, dict):
            parts.append(_flatten_state(value))
        else:
            parts.append(_numpy(value).reshape(-1).astype(np.float32))  # batch of 1 flattened
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class ManiSkillBackend:
    def __init__(self, name: str, seed: int, image_size: int, control_mode: str, reward_mode: str,
                 camera: str, terminate_on_success: bool, max_sim_steps: int):
        prepare_vulkan()
        import gymnasium as gym
        import mani_skill.envs  # noqa: F401  (registers the tasks)

        try:
            self.env = gym.make(name, obs_mode="rgb", control_mode=control_mode, reward_mode=reward_mode,
                                sim_backend=SIM_BACKEND, render_backend=RENDER_BACKEND,
                                sensor_configs=dict(width=image_size, height=image_size),
                                max_episode_steps=max_sim_steps + 1, enhanced_determinism=True)
        except (AssertionError, NotImplementedError) as e:  # ManiSkill's checks of the two modes
            from mbrl.utils import ConfigValueError  # a ValueError the entry points print as one line
            raise ConfigValueError(f"ManiSkill {name} refused task.control_mode={control_mode} or "
                                   f"task.reward_mode={reward_mode}: {e}") from None
        except RuntimeError as e:
            if any(sign in str(e) for sign in VULKAN_FAILURES):
                from mbrl.envs.errors import MissingSimulatorError
                raise MissingSimulatorError("maniskill", message=(
                    f"ManiSkill could not start Vulkan rendering ({e}): no usable Vulkan driver. Run 'bash "
                    f"scripts/install_sims.sh maniskill' (it installs lavapipe to {ICD_FILE}; .sims/ is per "
                    "checkout: MBRL_SIMS_DIR=<a checkout's .sims> reuses another's), or set VK_ICD_FILENAMES "
                    "to your Vulkan driver's ICD json")) from None
            raise
        self.camera, self.terminate_on_success = camera, terminate_on_success
        self.action_low = self.env.action_space.low.astype(np.float32)
        self.action_high = self.env.action_space.high.astype(np.float32)
        self._seed: int | None = seed  # used by the first reset
        self.reset(None)
        cameras = list(self._obs["sensor_data"])
        if camera not in cameras:
            raise ValueError(f"{name} has no camera '{camera}'; cameras: {cameras}")
        self.state_dim = self.state().shape[0]

    def reset(self, seed: int | None) -> None:
        seed, self._seed = (self._seed if seed is None else seed), None
        self._obs, _ = self.env.reset(seed=seed)

    def step(self, action: np.ndarray) -> tuple[float, bool, bool]:
        self._obs, reward, terminated, _, info = self.env.step(action)
        success = bool(_numpy(info.get("success", False)).any())
        fail = bool(_numpy(info.get("fail", False)).any())
        terminated = fail or (success and self.terminate_on_success)
        return float(_numpy(reward).reshape(-1)[0]), terminated, success

    def render(self) -> np.ndarray:
        return _numpy(self._obs["sensor_data"][self.camera]["rgb"])[0]  # uint8 [H, W, 3]

    def state(self) -> np.ndarray:
        return _flatten_state(self._obs)

    def close(self) -> None:
        self.env.close()
