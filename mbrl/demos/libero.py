"""Convert the official LIBERO demonstration files (robomimic-style hdf5) to our episodes.

The schema (LIBERO ``scripts/create_dataset.py``):

    data.attrs: env_name, problem_info (JSON: language_instruction, ...), bddl_file_name, ...
    data/demo_<i>/actions             float64 [N, 7]   delta end-effector pose + gripper, in [-1, 1]
    data/demo_<i>/rewards             uint8   [N]      1 at the last step (the demo ends at success)
    data/demo_<i>/dones               uint8   [N]      1 at the last step of every demo
    data/demo_<i>/obs/agentview_rgb   uint8   [N, H, W, 3]   rows flipped (upside down, not mirrored)

Time alignment: LIBERO records the image *after* each action (``obs, r, done, info =
env.step(action_j)`` then stores ``obs``), so image ``j`` results from action ``j`` and the
frame before action 0 is not in the file. In our format (``obs[t] --action[t]--> obs[t+1]``)
that gives ``obs = images[0:N]`` and ``action / reward = actions / rewards[1:N]``: T = N - 1
steps, the first recorded action dropped.
Rewards: LIBERO's sparse 0/1 plus ``success_bonus`` on success steps, as our LIBERO env gives.
Ends: ``create_dataset.py`` sets ``dones[-1] = 1`` on every demo: it marks where the recording
stops, not an env termination. Our LIBERO env never terminates (only its time limit ends an
episode), so a demo's end is a truncation: ``terminal`` is all False, and value targets keep
bootstrapping past the last step as they do on the env's own episodes.
Task: the file must hold the run's task. LIBERO names a task after its bddl file, which the
file records (``bddl_file_name``; else its language instruction is compared); the expected
name is LIBERO's name of ``task.task_index`` (``libero_task_name``, needs LIBERO installed) or
given explicitly (``libero_task=`` of scripts/convert_demos.py).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from mbrl.demos import SETTINGS_META_KEY
from worldmodel.episodes import Episode, save_episode

log = logging.getLogger(__name__)

LIBERO_ACTION_DIM = 7
DEFAULT_CAMERA = "agentview_rgb"
LIBERO_FPS = 20.0  # robosuite control frequency of the LIBERO datasets
# The file's image streams and the robosuite cameras (task.camera) they come from.
STREAM_CAMERAS = {"agentview_rgb": "agentview", "eye_in_hand_rgb": "robot0_eye_in_hand"}


class LiberoFormatError(ValueError):
    """The file is not a LIBERO demonstration file (or lacks what the conversion needs)."""


class LiberoTaskError(ValueError):
    """task.name / task.task_index name no LIBERO task."""


def camera_stream(task_camera: str) -> str:
    """The file's image stream of a robosuite camera (task.camera): the inverse of ``STREAM_CAMERAS``."""
    streams = {camera: stream for stream, camera in STREAM_CAMERAS.items()}
    if task_camera not in streams:
        raise LiberoFormatError(f"LIBERO's files hold no image stream of task.camera={task_camera} (they have "
                                f"{', '.join(f'{c} ({s})' for s, c in STREAM_CAMERAS.items())}); pass "
                                "camera=<stream> to convert another one")
    return streams[task_camera]


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, H, W, 3] -> uint8 [N, 3, size, size] (antialiased bilinear)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # [N, 3, H, W]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return x.contiguous().numpy()


def task_language(task_name: str) -> str:
    """The language instruction LIBERO derives from a task name: its words after any scene
    prefix (``KITCHEN_SCENE3_turn_on_the_stove`` -> ``turn on the stove``)."""
    return re.sub(r"^[A-Z_]*SCENE\d+_", "", task_name).replace("_", " ")


def libero_task_name(suite: str, task_index: int) -> str | None:
    """LIBERO's name (= bddl file stem) of task ``task_index`` of ``suite``; None where LIBERO is
    not installed (then the converter cannot check the file's task by itself)."""
    from mbrl.envs.libero_env import prepare_libero

    prepare_libero()
    try:
        from libero.libero import benchmark
    except ImportError:
        return None
    suites = benchmark.get_benchmark_dict()
    if suite not in suites:
        raise LiberoTaskError(f"task.name={suite} is not a LIBERO suite; it has: {sorted(suites)}")
    tasks = suites[suite]()
    if not 0 <= task_index < tasks.n_tasks:
        raise LiberoTaskError(f"task.task_index={task_index} is out of range: {suite} has tasks "
                              f"0..{tasks.n_tasks - 1}")
    return str(tasks.get_task(task_index).name)


def _attr_text(attrs: Any, key: str) -> str | None:
    value = attrs.get(key)
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def file_task(path: Path, data: Any) -> tuple[str | None, str]:
    """(LIBERO task name from the file's bddl file, language instruction) of a ``data`` group."""
    bddl = _attr_text(data.attrs, "bddl_file_name")
    problem = _attr_text(data.attrs, "problem_info")
    language = ""
    if problem:
        try:
            language = str(json.loads(problem).get("language_instruction", ""))
        except (json.JSONDecodeError, AttributeError):
            raise LiberoFormatError(f"{path}: data.attrs['problem_info'] is not a JSON object") from None
    return (Path(bddl).stem if bddl else None), language


def _words(text: str) -> list[str]:
    return text.lower().split()


def check_task(path: Path, file_name: str | None, file_language: str, expected: str | None) -> None:
    """Refuse a file that holds another task's demonstrations than ``expected`` (a LIBERO task
    name); compares the bddl file name, else the language instruction."""
    if expected is None:
        held = file_name or (repr(file_language) if file_language else "an unnamed task")
        log.warning("cannot check that %s holds the run's LIBERO task: no expected task name (pass "
                    "libero_task=<LIBERO task name>, or install LIBERO to look it up from "
                    "task.task_index); the file holds %s", path, held)
        return
    if file_name is not None:
        found, matches = file_name, file_name == expected
    elif file_language:
        found, matches = repr(file_language), _words(file_language) == _words(task_language(expected))
    else:
        log.warning("%s records neither bddl_file_name nor a language instruction: cannot check that "
                    "it holds %s", path, expected)
        return
    if not matches:
        raise LiberoFormatError(
            f"{path} holds demonstrations of LIBERO task {found}, but the task to convert for is "
            f"{expected} (task.name / task.task_index); convert that task's file ({expected}_demo.hdf5), "
            "or set task.task_index to the file's task.")


def demo_settings(*, flip_rows: bool, camera: str, success_bonus: float) -> dict[str, Any]:
    """The env settings (task keys) that converted frames and rewards correspond to."""
    return {"action_repeat": 1,  # one recorded action per control step
            "success_bonus": float(success_bonus),
            "camera": STREAM_CAMERAS.get(camera, camera),
            "flip_rows": not flip_rows}  # flipping the upside-down files makes them upright


def libero_episodes(path: str | Path, image_size: int, *, flip_rows: bool = True,
                    camera: str = DEFAULT_CAMERA, success_bonus: float = 0.0,
                    max_demos: int | None = None, expected_task: str | None = None) -> Iterator[Episode]:
    """Yield one ``Episode`` per ``data/demo_<i>`` of a LIBERO hdf5 file, in demo order.

    flip_rows: flip the stored frames' rows; True makes LIBERO's upside-down frames upright
    (what our env renders with ``task.flip_rows=false``).
    expected_task: LIBERO's name of the task the file must hold (``libero_task_name``); None:
    not checked (a warning)."""
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
        task_name, language = file_task(path, data)
        check_task(path, task_name, language, expected_task)
        settings = demo_settings(flip_rows=flip_rows, camera=camera, success_bonus=success_bonus)
        for name in demos[:max_demos]:
            demo = data[name]
            for key in ("actions", f"obs/{camera}"):
                if key not in demo:
                    raise LiberoFormatError(f"{path}: data/{name} has no '{key}'")
            images = demo[f"obs/{camera}"][()]  # uint8 [N, H, W, 3]
            actions = demo["actions"][()].astype(np.float32)  # [N, 7]
            n = len(actions)
            rewards = demo["rewards"][()] if "rewards" in demo else np.zeros(n)
            if images.ndim != 4 or images.shape[-1] != 3 or len(images) != n or n < 2:
                raise LiberoFormatError(f"{path}: data/{name} has {len(images)} images of shape "
                                        f"{images.shape[1:]} for {n} actions (expected N >= 2 "
                                        "images [N, H, W, 3] for N actions)")
            if flip_rows:
                images = images[:, ::-1]
            success = np.asarray(rewards[1:]) > 0
            yield Episode(
                obs=resize_frames(images, image_size),
                action=np.clip(actions[1:], -1.0, 1.0),
                reward=(np.asarray(rewards[1:], np.float32) + success_bonus * success).astype(np.float32),
                success=success,
                terminal=np.zeros(n - 1, bool),  # dones[-1] is the recording's end: a truncation
                meta={"source": "libero_hdf5", "file": path.name, "demo": name, "fps": LIBERO_FPS,
                      "language": language, "libero_task": task_name, "flip_rows": flip_rows,
                      "camera": camera, SETTINGS_META_KEY: settings})


def convert_libero(path: str | Path, out_dir: str | Path, image_size: int, *,
                   task: str = "", flip_rows: bool = True, camera: str = DEFAULT_CAMERA,
                   success_bonus: float = 0.0, max_demos: int | None = None,
                   expected_task: str | None = None) -> list[Path]:
    """Write every demo of a LIBERO hdf5 file as ``<out_dir>/<file stem>_demo_<i>.npz``
    (after checking that the file holds ``expected_task``, see ``libero_episodes``)."""
    written = []
    for episode in libero_episodes(path, image_size, flip_rows=flip_rows, camera=camera,
                                   success_bonus=success_bonus, max_demos=max_demos,
                                   expected_task=expected_task):
        episode.meta["task"] = task
        stem = Path(path).stem
        written.append(save_episode(Path(out_dir) / f"{stem}_{episode.meta['demo']}.npz", episode))
    return written
