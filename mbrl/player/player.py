"""Everything one player process serves: the shared model, the sessions, the episodes, the task."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from mbrl.demos import collect_command, demo_dir
from mbrl.player.controls import action_layout, layout_json
from mbrl.player.errors import PlayerError
from mbrl.player.host import WorldModelHost, check_device
from mbrl.player.session import DEFAULT_MAX_STEPS, SessionManager, check_seed
from mbrl.player.sources import EpisodeCatalog, check_episode_root
from worldmodel.host_memory import keep_freed_host_memory


def simulator_status(task_cfg: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether this task's simulator is installed (needed for env-reset starts and ground truth)."""
    from mbrl.envs import MissingSimulatorError, UnknownTaskError, list_tasks

    try:
        names = list_tasks(str(task_cfg.get("suite")))
    except (MissingSimulatorError, UnknownTaskError) as e:
        return False, str(e)
    if task_cfg.get("name") not in names:
        return False, f"unknown task {task_cfg.get('name')!r} for suite {task_cfg.get('suite')!r}"
    return True, "ok"


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; any other value must be a usable torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return check_device(torch.device(device))
    except RuntimeError as e:
        raise PlayerError(f"device={device!r} is not a torch device ({e}); use auto, cpu, cuda or cuda:N.") from None


def config_int(cfg: Mapping[str, Any], key: str, default: int, low: int, high: int | None = None,
               note: str = "") -> int:
    """``cfg[key]`` as an integer in [low, high]; anything else is a ``PlayerError`` naming the key."""
    value = cfg.get(key, default)
    integer = (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer())
    if not integer or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise PlayerError(f"{key}={value!r} must be an integer {bound}{note}; fix it in cfgs/play.yaml "
                          f"or on the command line ({key}=...).")
    return int(value)


def config_number(cfg: Mapping[str, Any], key: str, default: float, low: float, note: str = "") -> float:
    """``cfg[key]`` as a finite number >= low; anything else is a ``PlayerError`` naming the key."""
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise PlayerError(f"{key}={value!r} must be a number >= {low}{note}; fix it in cfgs/play.yaml "
                          f"or on the command line ({key}=...).")
    return float(value)


def check_out_dir(out_dir: str | Path) -> Path:
    """``out_dir`` must be a writable folder or one that can be made (nothing is made here), so a
    bad value stops the player at startup rather than failing the user's first save."""
    path = Path(str(out_dir)).expanduser()
    fix = "give a folder to save into (out_dir=...)"
    existing = path
    while not existing.exists() and existing != existing.parent:  # the nearest existing ancestor
        existing = existing.parent
    if not existing.is_dir():
        what = "is not a folder" if existing == path else f"cannot be made: {existing} is not a folder"
        raise PlayerError(f"out_dir={out_dir}: {what}; {fix}.")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be made: {existing} is not writable"
        raise PlayerError(f"out_dir={out_dir}: {what}; {fix}.")
    return path


@dataclass
class Player:
    host: WorldModelHost
    sessions: SessionManager
    catalog: EpisodeCatalog
    task_cfg: Mapping[str, Any]
    task_key: str  # the task config's name, e.g. metaworld/plate_slide
    out_dir: Path
    video_fps: int = 10
    video_scale: int = 4
    simulator: tuple[bool, str] = (False, "not checked")
    address: str = "127.0.0.1"  # play.yaml's host: the address the page is served on
    port: int = 7860

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], task_key: str, check_simulator: bool = True) -> "Player":
        """Build from the composed ``cfgs/play.yaml`` (``task_key``: the chosen task config).
        A bad checkpoint, episode path, device or setting is a ``PlayerError`` naming it (settings
        are checked before the model loads). ``cpu_threads`` (> 0) sets
        torch's CPU threads before the model is loaded, as training does; ``seed`` is the sampling
        seed new sessions start with. Start episodes come from ``episodes`` or, by default, the
        task's demonstration folder (``mbrl.demos.demo_dir``, where the collectors write)."""
        task_cfg = cfg["task"]
        pretrained = cfg["world_model"].get("pretrained")
        if not pretrained:
            raise PlayerError("give the world model to play: world_model.pretrained=<dir written by "
                              "save_pretrained or scripts/pretrain.py>.")
        seed = check_seed(cfg.get("seed", 0), "seed")
        # Every key is checked before the model is loaded: a typo costs no load and leaks no worker.
        threads = config_int(cfg, "cpu_threads", 0, 0, note=" (0: torch's default)")
        settings = dict(max_sessions=config_int(cfg, "max_sessions", 8, 1),
                        replay_window=config_int(cfg, "replay_window", 10, 1),
                        state_budget_mb=config_number(cfg, "state_budget_mb", 64, 0, " (0: keep no model states)"),
                        max_steps=config_int(cfg, "max_steps", DEFAULT_MAX_STEPS, 1))
        video = dict(video_fps=config_int(cfg, "video_fps", 10, 1), video_scale=config_int(cfg, "video_scale", 4, 1))
        address = str(cfg.get("host", "127.0.0.1"))
        if not address:
            raise PlayerError("host= is empty; give the address to serve on, e.g. host=127.0.0.1.")
        port = config_int(cfg, "port", 7860, 1, 65535)
        out_dir = check_out_dir(str(cfg.get("out_dir", "play")))
        device = resolve_device(str(cfg.get("device", "auto")))
        episodes = cfg.get("episodes")
        root = check_episode_root(episodes) if episodes else demo_dir(task_cfg)
        if threads > 0:
            torch.set_num_threads(threads)
        if cfg.get("keep_freed_memory", True):
            keep_freed_host_memory()
        host = WorldModelHost(pretrained, int(task_cfg["image_size"]), device)
        try:
            catalog = EpisodeCatalog(root, task_cfg)
            sessions = SessionManager(host, task_cfg, catalog, seed=seed, **settings)
            simulator = simulator_status(task_cfg) if check_simulator else (False, "not checked")
        except BaseException:
            host.close()
            raise
        return cls(host=host, sessions=sessions, catalog=catalog, task_cfg=task_cfg, task_key=task_key,
                   out_dir=out_dir, simulator=simulator, address=address, port=port,
                   **video)

    def info(self) -> dict[str, Any]:
        model = self.host.info()
        return {"task": self.task_key, "suite": str(self.task_cfg.get("suite")), "model": model,
                "controls": layout_json(action_layout(str(self.task_cfg.get("suite")), model["action_dim"])),
                "episodes": self.catalog.names(), "episode_root": str(self.catalog.root),
                "collect_command": collect_command(self.task_cfg),
                "env": {"available": self.simulator[0], "reason": self.simulator[1]},
                "max_sessions": self.sessions.max_sessions}

    def close(self) -> None:
        """Close every session's env and stop the worker; a second call does nothing."""
        if not self.host.closed:
            self.sessions.close_all()
            self.host.close()
