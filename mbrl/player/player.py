"""Everything one player process serves: the shared model, the sessions, the episodes, the task."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from mbrl.demos import collect_command, demo_dir
from mbrl.player.controls import action_layout, layout_json
from mbrl.player.errors import PlayerError
from mbrl.player.host import WorldModelHost
from mbrl.player.session import SessionManager, check_seed
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
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise PlayerError(f"device={device!r} is not a torch device ({e}); use auto, cpu, cuda or cuda:N.") from None


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

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], task_key: str, check_simulator: bool = True) -> "Player":
        """Build from the composed ``cfgs/play.yaml`` (``task_key``: the chosen task config).
        A bad checkpoint or episode path is a ``PlayerError`` naming it. ``cpu_threads`` (> 0) sets
        torch's CPU threads before the model is loaded, as training does; ``seed`` is the sampling
        seed new sessions start with. Start episodes come from ``episodes`` or, by default, the
        task's demonstration folder (``mbrl.demos.demo_dir``, where the collectors write)."""
        task_cfg = cfg["task"]
        pretrained = cfg["world_model"].get("pretrained")
        if not pretrained:
            raise PlayerError("give the world model to play: world_model.pretrained=<dir written by "
                              "save_pretrained or scripts/pretrain.py>.")
        seed = check_seed(cfg.get("seed", 0), "seed")
        threads = cfg.get("cpu_threads", 0)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise PlayerError(f"cpu_threads={threads!r} must be an integer >= 0 (0: torch's default).")
        if threads > 0:
            torch.set_num_threads(threads)
        if cfg.get("keep_freed_memory", True):
            keep_freed_host_memory()
        episodes = cfg.get("episodes")
        root = check_episode_root(episodes) if episodes else demo_dir(task_cfg)
        host = WorldModelHost(pretrained, int(task_cfg["image_size"]), resolve_device(str(cfg.get("device", "auto"))))
        catalog = EpisodeCatalog(root)
        sessions = SessionManager(host, task_cfg, catalog, max_sessions=int(cfg.get("max_sessions", 8)),
                                  replay_window=int(cfg.get("replay_window", 10)),
                                  state_budget_mb=float(cfg.get("state_budget_mb", 64)), seed=seed)
        simulator = simulator_status(task_cfg) if check_simulator else (False, "not checked")
        return cls(host=host, sessions=sessions, catalog=catalog, task_cfg=task_cfg, task_key=task_key,
                   out_dir=Path(str(cfg.get("out_dir", "play"))), video_fps=int(cfg.get("video_fps", 10)),
                   video_scale=int(cfg.get("video_scale", 4)), simulator=simulator)

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
