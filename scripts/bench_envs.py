"""Env frames/s per installed suite at 64 px: raw simulator vs our wrapped env, default vs fast render.

    python scripts/bench_envs.py [--steps 100] [--suites metaworld dmc maniskill libero]

A frame is one simulator step plus one rendered image (the wrapped envs run with action_repeat=1
so they render every simulator step too). Columns:
  raw      the simulator's own step + render API with its default render settings
  wrapped  make_env(...) with fast_render=false  (overhead = raw / wrapped)
  fast     make_env(...) with fast_render=true   (speedup = fast / wrapped)
Suites whose simulator is not installed are skipped. Last line: a one-line summary.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a source checkout
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from mbrl.envs import MissingSimulatorError, make_env  # noqa: E402
from mbrl.utils import positive_int  # noqa: E402

SIZE = 64
WARMUP = 5  # steps not timed (first renders compile shaders / JIT)
TASKS = {  # suite -> task config (action_repeat 1: one render per simulator step)
    "metaworld": dict(suite="metaworld", name="plate-slide-v3", camera="corner", flip_rows=True),
    "dmc": dict(suite="dmc", name="walker_walk", camera=0),
    "maniskill": dict(suite="maniskill", name="PickCube-v1", camera="base_camera",
                      control_mode="pd_ee_delta_pose", reward_mode="normalized_dense",
                      terminate_on_success=False),
    "libero": dict(suite="libero", name="libero_spatial", task_index=0, camera="agentview", flip_rows=False),
}
COMMON = dict(image_size=SIZE, frame_stack=3, action_repeat=1, episode_length=10**6, success_bonus=0.0)


def frames_per_second(step: Callable[[], None], steps: int) -> float:
    for _ in range(WARMUP):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def raw_env(suite: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """The simulator's own API: (one step + render, close)."""
    rng = np.random.default_rng(0)
    if suite == "metaworld":
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
        env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE["plate-slide-v3-goal-observable"](seed=0, render_mode="rgb_array")
        env.mujoco_renderer.camera_name, env.mujoco_renderer.camera_id = "corner", env.model.camera("corner").id
        env.mujoco_renderer.width = env.mujoco_renderer.height = SIZE
        # Meta-World refuses to step past max_path_length (500); lifted, as the wrapped env does
        env.max_path_length = 10**9
        env.reset()

        def step():
            env.step(rng.uniform(-1, 1, 4))
            env.render()
        return step, env.close
    if suite == "dmc":
        from mbrl.envs.dmc_env import _numpy2_compat
        from dm_control import suite as dmc_suite
        _numpy2_compat()
        env = dmc_suite.load("walker", "walk", task_kwargs={"random": 0, "time_limit": float("inf")})
        env.reset()

        def step():
            env.step(rng.uniform(-1, 1, 6))
            env.physics.render(SIZE, SIZE, camera_id=0)
        return step, env.close
    if suite == "maniskill":
        import gymnasium as gym
        from mbrl.envs.maniskill_env import RENDER_BACKEND, SIM_BACKEND, prepare_vulkan
        prepare_vulkan()
        import mani_skill.envs  # noqa: F401
        env = gym.make("PickCube-v1", obs_mode="rgb", control_mode="pd_ee_delta_pose", sim_backend=SIM_BACKEND,
                       render_backend=RENDER_BACKEND, sensor_configs=dict(width=SIZE, height=SIZE))
        env.reset(seed=0)
        return (lambda: env.step(env.action_space.sample())), env.close
    from mbrl.envs.libero_env import prepare_libero
    prepare_libero()
    from libero.libero import benchmark
    from libero.libero.envs import OffScreenRenderEnv
    task_suite = benchmark.get_benchmark_dict()["libero_spatial"]()
    env = OffScreenRenderEnv(bddl_file_name=task_suite.get_task_bddl_file_path(0), camera_names=["agentview"],
                             camera_heights=SIZE, camera_widths=SIZE)
    env.reset()
    return (lambda: env.step(rng.uniform(-1, 1, 7))), env.close


def wrapped_env(suite: str, fast: bool) -> tuple[Callable[[], None], Callable[[], None]]:
    env = make_env({**TASKS[suite], **COMMON, "fast_render": fast}, seed=0)
    env.reset()
    return (lambda: env.step(env.action_space.sample())), env.close


def measure(make: Callable[[], tuple[Callable[[], None], Callable[[], None]]], steps: int) -> float:
    step, close = make()
    try:
        return frames_per_second(step, steps)
    finally:
        close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive_int, default=100, help="timed steps per measurement")
    parser.add_argument("--suites", nargs="+", default=list(TASKS), choices=list(TASKS))
    args = parser.parse_args()
    rows = []
    print(f"{'suite':10s} {'task':16s} {'raw':>8s} {'wrapped':>8s} {'fast':>8s} {'overhead':>9s} {'speedup':>8s}")
    for suite in args.suites:
        # ManiSkill renders with SAPIEN, which fast_render does not touch: one wrapped column.
        steps = args.steps if suite in ("metaworld", "dmc") else max(10, args.steps // 4)
        try:
            raw = measure(lambda: raw_env(suite), steps)
        except (ImportError, MissingSimulatorError) as e:
            print(f"{suite:10s} skipped: {e}")
            continue
        wrapped = measure(lambda: wrapped_env(suite, fast=False), steps)
        fast = measure(lambda: wrapped_env(suite, fast=True), steps)
        rows.append((suite, raw, wrapped, fast))
        print(f"{suite:10s} {TASKS[suite]['name']:16s} {raw:8.1f} {wrapped:8.1f} {fast:8.1f} "
              f"{raw / wrapped:8.2f}x {fast / wrapped:7.2f}x", flush=True)
    summary = "; ".join(f"{s} {f:.0f} fps fast ({f / w:.1f}x default, overhead {r / w:.2f}x)"
                        for s, r, w, f in rows)
    print(f"env frames/s at {SIZE}px: {summary or 'no simulator installed'}")


if __name__ == "__main__":
    main()
