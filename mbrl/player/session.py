"""Player sessions: an imagined trajectory driven one action at a time, beside the real one.

Web-free and tensor-based: ``server.py`` maps requests onto ``SessionManager.call``, which runs
them on the host's worker thread (so one model serves every session, one call at a time, while
each session keeps its own imagination state, generator and simulator).

Undo replays, it never copies model state. A session keeps *anchors*: points it can replay from,
with the sampling generator's state there. Undo drops the last step, goes back to the last anchor
and re-runs the steps since then with their recorded actions and sampling settings; the same
generator state draws the same samples, so the trajectory is the one shown before (bit for bit on
CPU), and the next step samples exactly what it would have. Anchors are of two kinds:

* a *reset*: the model was reset there on the last ``context_frames`` frames so far, the imagined
  ones included (``WorldModel.reset`` takes T0 frames; passing the whole trajectory would copy
  every frame to the device at each reset). There is one at the start, and
  one whenever the model's own ``max_horizon`` (iVideoGPT's ``max_future_frames``) is used up, so
  play goes on beyond the trained horizon; the page marks those frames ("re-anchored").
* a *kept state*, every ``replay_window`` steps, for models whose state is a value (``step``
  returns a new state and leaves the old one intact: Vid2World). Keeping one costs no model
  call and changes nothing, so imagination stays exactly the continuous reset/step rollout;
  the kept states of a session are bounded by ``state_budget_mb`` (the oldest go first, and an
  undo past them replays from an earlier anchor: slower, same frames). iVideoGPT's state holds
  the transformer's KV cache and is advanced in place, so it cannot be kept: its undo replays
  from the last reset, at most ``max_future_frames`` steps. A model of neither kind (no horizon,
  in-place state) is re-anchored every ``replay_window`` steps instead.

A session holds at most ``max_steps`` steps (play.yaml's ``max_steps``): every step keeps its
frames (and their PNGs) and every full view sends them all, so an endless trajectory would grow
memory and response size without bound; past the cap a step is refused (save, undo or restart).

Ground truth: a session started from an env reset runs the same actions in a real env (same
seed) and reports its frames and per-frame PSNR; a session started from an episode file has the
recorded frames as ground truth for as long as its actions follow the recorded ones.
"""
from __future__ import annotations

import contextlib
import math
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

import numpy as np
import torch

from mbrl.player.errors import Conflict, NotFound, PlayerError
from mbrl.player.host import WorldModelHost
from mbrl.player.sources import EpisodeCatalog, episode_context
from worldmodel.episodes import Episode, save_episode

T = TypeVar("T")
PIXEL_MAX = 255.0
PSNR_CAP_DB = 100.0  # reported for identical frames instead of infinity
ACTION_ATOL = 1e-5  # an action "follows the demo" when it is this close to the recorded one
MAX_SEED = 2**63 - 1
RGB = 3
MB = 2**20
DEFAULT_MAX_STEPS = 2000  # steps one session may hold (play.yaml's max_steps); about 1 MB per 20 steps at 64x64


def has_value_states(model: Any) -> bool:
    """Whether a state ``model.step`` was given can be stepped again later
    (``WorldModel.value_states``), so a session can keep states for undo."""
    return bool(getattr(model, "value_states", False))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 frames [3, H, W]."""
    mse = (a.float() - b.float()).pow(2).mean().item()
    return PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10.0 * math.log10(PIXEL_MAX ** 2 / mse))


@dataclass
class Step:
    """One imagined step a_t -> (o_{t+1}, r_t), with the real outcome when known."""

    action: torch.Tensor  # float32 [A]
    sampling: dict[str, Any]  # the sampling settings it was imagined with
    frame: torch.Tensor  # uint8 [3, H, W]: imagined o_{t+1}
    reward: float  # imagined r_t
    anchored: bool  # the model was (re)set on the frames before this step
    real_frame: torch.Tensor | None = None  # uint8 [3, H, W]: the real o_{t+1}
    real_reward: float | None = None
    real_success: bool | None = None
    # The web layer's encodings of this step's frames, by attribute name: (frame encoded, its encoding),
    # so a trajectory is encoded once however often it is sent (undo, restart and reloads send it whole).
    encoded: dict[str, tuple[torch.Tensor, str]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def psnr(self) -> float | None:
        return None if self.real_frame is None else psnr(self.frame, self.real_frame)


@dataclass(frozen=True)
class Start:
    """Where the trajectory starts: an episode file at a frame, or an env reset with a seed."""

    kind: str  # "episode" | "env"
    episode: str | None = None
    start: int | None = None
    env_seed: int | None = None

    def describe(self) -> str:
        if self.kind == "env":
            return f"env reset, seed {self.env_seed}"
        return f"{self.episode} @ frame {self.start}"


@dataclass(eq=False)  # compared by identity (it holds tensors)
class Anchor:
    """A point undo can replay from (see the module doc)."""

    step: int  # len(steps) there
    rng_state: torch.Tensor  # the sampling generator's state there (before the reset, for a reset)
    state: Any = None  # the model's state after ``step`` steps; None: the model was reset here
    nbytes: int = 0  # what ``state`` holds

    @property
    def is_reset(self) -> bool:
        return self.state is None


class PlaySession:
    """One page's trajectory. Not thread-safe: call it through ``SessionManager.call``."""

    def __init__(self, sid: str, host: WorldModelHost, task_cfg: Mapping[str, Any], catalog: EpisodeCatalog,
                 replay_window: int = 10, state_budget_mb: float = 64.0, seed: int = 0,
                 max_steps: int = DEFAULT_MAX_STEPS):
        if replay_window < 1:
            raise PlayerError(f"replay_window={replay_window} must be >= 1.")
        if not state_budget_mb >= 0:
            raise PlayerError(f"state_budget_mb={state_budget_mb} must be >= 0 (0: keep no model states).")
        if max_steps < 1:
            raise PlayerError(f"max_steps={max_steps} must be >= 1.")
        self.max_steps = int(max_steps)
        self.sid, self.host, self.task_cfg, self.catalog = sid, host, task_cfg, catalog
        self.replay_window = int(replay_window)
        self.state_budget = int(state_budget_mb * MB)
        self.start: Start | None = None
        self.context: torch.Tensor | None = None  # uint8 [T0, 3, H, W] real frames; the last is o_0
        self.steps: list[Step] = []
        self.sampling: dict[str, Any] = host.sampling_defaults()
        self.seed = check_seed(seed, "sampling seed")  # applies at the next restart / re-imagination
        self.revision = 0  # bumped whenever ``steps`` change other than by one appended step
        self.saved_dir: Path | None = None
        self.saved_files: dict[str, Path] = {}  # what the last save wrote, by kind
        self._saves = 0
        self._anchors: list[Anchor] = []
        self._state: Any = None
        self._generator: torch.Generator | None = None
        self._generation = host.generation
        self._episode: Episode | None = None
        self._env: Any = None
        self._env_done = False

    # ----- starting -----
    @property
    def model(self):
        return self.host.model

    def start_from_episode(self, name: str, start: int | None = None) -> None:
        """Context = the model's ``context_frames`` frames of episode ``name`` ending at ``start``
        (default: the earliest possible frame)."""
        m = self.model
        episode = self.catalog.load(name, m.image_size, m.action_dim)
        start = m.context_frames - 1 if start is None else int(start)
        context = episode_context(episode, start, m.context_frames)
        self._close_env()
        self._episode, self.start = episode, Start("episode", episode=name, start=start)
        self.context = torch.from_numpy(context.copy())
        self._reset_imagination()
        self.revision += 1

    def start_from_env(self, seed: int) -> None:
        """Context = a real env reset with ``seed``, then ``context_frames - 1`` zero-action steps
        (real consecutive frames, as the model saw in training); the env keeps running beside.
        If the reset fails, the session keeps its previous start and trajectory."""
        seed = check_seed(seed, "env seed")
        self._open_env(seed)
        try:
            context = torch.from_numpy(np.stack(self._env_reset(seed)))
        except BaseException:
            self._restore_env()
            raise
        self._episode, self.start, self.context = None, Start("env", env_seed=seed), context
        self._reset_imagination()
        self.revision += 1

    def restart(self) -> None:
        """Back to the start context with an empty trajectory (and a fresh generator from ``seed``)."""
        self._require_started()
        if self.start.kind == "env":
            self._env_reset(self.start.env_seed)
        self._reset_imagination()
        self.revision += 1

    # ----- playing -----
    def step(self, action: torch.Tensor) -> Step:
        """Imagine one step with ``action`` float [A] in [-1, 1]; returns the new ``Step``."""
        action = self._check_action(action)
        self._require_started()
        if len(self.steps) >= self.max_steps:
            raise Conflict(f"the trajectory holds max_steps={self.max_steps} steps, the most one session keeps "
                           "(play.yaml's max_steps): save it, then undo or restart to go on.")
        self.sync()
        step = self._imagine(action, dict(self.sampling))
        self._add_truth(step)
        self.steps.append(step)
        return step

    def undo(self) -> None:
        """Drop the last step; the model, generator and env are back where they were before it."""
        self._require_started()
        if not self.steps:
            raise Conflict("nothing to undo: the trajectory is at its start context.")
        self.sync()
        keep = self.steps[:-1]
        anchor = [a for a in self._anchors if a.step <= len(keep)][-1]
        with self._unchanged_on_failure():
            self._rewind(anchor)
            self.steps = keep[:anchor.step]
            self._replay(keep[anchor.step:])
        self._restore_env()
        self.revision += 1

    def reimagine(self) -> None:
        """Imagine the same actions again with the current sampling settings and seed. If that
        fails, the trajectory stays as it was (and a switched model is tried again next call)."""
        self._require_started()
        old = self.steps
        with self._unchanged_on_failure():
            self._reset_imagination()
            self._replay(old, sampling=self.sampling)
        self.revision += 1

    def set_sampling(self, settings: Mapping[str, Any] | None = None, seed: int | None = None) -> None:
        """New sampling settings (used from the next step on) and / or seed (used from the next
        restart or re-imagination, so the current trajectory stays reproducible)."""
        if settings:
            self.sampling.update(self.host.check_sampling(dict(settings)))
        if seed is not None:
            self.seed = check_seed(seed, "sampling seed")

    def demo_action(self) -> torch.Tensor | None:
        """The episode's recorded next action while the trajectory follows it, else None."""
        if self.start is None or self.start.kind != "episode" or not self._following():
            return None
        t = self.start.start + len(self.steps)
        return torch.from_numpy(self._episode.action[t].copy()) if t < len(self._episode) else None

    # ----- results -----
    def frames(self) -> torch.Tensor:
        """uint8 [n + 1, 3, H, W]: o_0 (the last context frame) and the n imagined frames."""
        self._require_started()
        return torch.stack([self.context[-1]] + [s.frame for s in self.steps])

    def to_episodes(self) -> tuple[Episode, Episode | None]:
        """The imagined trajectory as an episode (success unknown: all False), and the real one
        for the steps whose real outcome is known (None when there is none)."""
        self._require_started()
        if not self.steps:
            raise Conflict("nothing to save yet: take at least one step.")
        self.sync()  # after a checkpoint switch: the new model's frames, as the meta says
        m = self.model
        meta = {"task": f"{self.task_cfg.get('suite')}/{self.task_cfg.get('name')}", "fps": None,
                "context": self.start.describe(), "world_model": m.model_type,
                "checkpoint": self.host.checkpoint, "sampling_seed": self.seed,
                "sampling": [s.sampling for s in self.steps],
                "anchored_steps": [i for i, s in enumerate(self.steps) if s.anchored]}
        actions = torch.stack([s.action for s in self.steps]).numpy().astype(np.float32)
        imagined = Episode(obs=self.frames().numpy(), action=actions,
                           reward=np.array([s.reward for s in self.steps], np.float32),
                           success=np.zeros(len(self.steps), bool),
                           meta={**meta, "source": "world_model_player/imagined"})
        known = 0
        while known < len(self.steps) and self.steps[known].real_frame is not None:
            known += 1
        real = None
        if known:
            real_obs = torch.stack([self.context[-1]] + [s.real_frame for s in self.steps[:known]])
            real = Episode(obs=real_obs.numpy(), action=actions[:known],
                           reward=np.array([s.real_reward for s in self.steps[:known]], np.float32),
                           success=np.array([bool(s.real_success) for s in self.steps[:known]], bool),
                           meta={**meta, "source": "world_model_player/real"})
        return imagined, real

    def save(self, out_dir: str | Path, fps: int = 10, scale: int = 4) -> dict[str, Path]:
        """Write ``imagined.npz`` (+ ``real.npz``) and ``trajectory.mp4`` (imagined | real side by
        side) into a new folder under ``out_dir``; returns the paths by kind."""
        from mbrl.video import chw_to_hwc, write_video

        imagined, real = self.to_episodes()
        imagined.meta["fps"] = fps
        self._saves += 1
        folder = Path(out_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}_{self.sid[:8]}_{self._saves}"
        try:  # the folder is the user's to fix (a file in the way, no permission, a full disk): not a bug
            paths = {"imagined_npz": save_episode(folder / "imagined.npz", imagined)}
            video = imagined.obs  # [n + 1, 3, H, W]
            if real is not None:
                real.meta["fps"] = fps
                paths["real_npz"] = save_episode(folder / "real.npz", real)
                right = np.zeros_like(video)  # black where the real outcome is unknown
                right[:len(real.obs)] = real.obs
                video = np.concatenate([video, right], axis=-1)  # side by side
            paths["video"] = write_video(folder / "trajectory.mp4", chw_to_hwc(video), fps=fps, scale=scale)
        except OSError as e:
            raise PlayerError(f"cannot save into out_dir={out_dir} ({type(e).__name__}: {e}); make it a writable "
                              "folder (out_dir=... in cfgs/play.yaml or on the command line) and save again.") from None
        self.saved_dir, self.saved_files = folder, dict(paths)
        return paths

    def close(self) -> None:
        self._close_env()
        self._state = None

    # ----- imagination internals -----
    @property
    def window(self) -> int | None:
        """Steps between resets of the model: its trained horizon; ``replay_window`` for a model
        with neither a horizon nor value states; None: never after the start."""
        if self.host.horizon is not None:
            return self.host.horizon
        return None if has_value_states(self.model) else self.replay_window

    @property
    def kept_state_bytes(self) -> int:
        """Bytes of the model states this session keeps for undo."""
        return sum(a.nbytes for a in self._anchors)

    def _reset_imagination(self) -> None:
        if self._generation != self.host.generation:  # a switched model: its own runtime switches
            self.sampling = self.host.merge_sampling(self.sampling)
        self.steps, self._anchors, self._state = [], [], None
        self._generator = self.host.generator(self.seed)
        self._generation = self.host.generation

    @contextlib.contextmanager
    def _unchanged_on_failure(self) -> Iterator[None]:
        """Undo every change to the imagination (steps, anchors, model state, generator and its
        state, sampling) if the body fails, e.g. out of memory, so undo / redo still reproduce
        what was shown. Model states are taken back by reference: a failed ``step`` leaves its
        state as it was (``WorldModel.step``), and replays build new states from anchors."""
        saved = (list(self.steps), list(self._anchors), self._state, self._generator, self._generation,
                 dict(self.sampling))
        rng_state = self._generator.get_state() if self._generator is not None else None
        try:
            yield
        except BaseException:
            self.steps, self._anchors, self._state, self._generator, self._generation, self.sampling = saved
            if rng_state is not None:
                self._generator.set_state(rng_state)
            raise

    def _next_anchor(self) -> str | None:
        """What to do before the next step: "reset" the model, "keep" its state, or nothing."""
        if self._state is None:
            return "reset"
        n, last = len(self.steps), self._anchors[-1]
        last_reset = max(a.step for a in self._anchors if a.is_reset)
        if self.host.horizon is not None and n - last_reset >= self.host.horizon:
            return "reset"
        if n - last.step >= self.replay_window:
            if has_value_states(self.model):
                return "keep"
            if self.host.horizon is None:
                return "reset"
        return None

    def _reset_model(self) -> None:
        """Reset the model on the last ``context_frames`` frames (real context, then imagined)."""
        T0 = self.model.context_frames
        recent = [s.frame[None] for s in self.steps[max(0, len(self.steps) - T0):]]
        frames = torch.cat([self.context] + recent)[-T0:]  # [T0, 3, H, W]
        rng_state = self._generator.get_state()
        self._state = self.model.reset(frames[None].to(self.host.device), generator=self._generator)
        self._anchors.append(Anchor(len(self.steps), rng_state))

    def _keep_state(self) -> None:
        """Keep the current state as an anchor, dropping the oldest kept ones beyond the budget."""
        self._anchors.append(Anchor(len(self.steps), self._generator.get_state(), self._state,
                                    self._state.nbytes()))
        kept = [a for a in self._anchors if not a.is_reset]
        while kept and self.kept_state_bytes > self.state_budget:
            self._anchors.remove(kept.pop(0))

    def _rewind(self, anchor: Anchor) -> None:
        """Model and generator back to ``anchor`` (the steps after it are the caller's to replay)."""
        self._generator.set_state(anchor.rng_state)
        if anchor.is_reset:  # the next step resets the model there again
            self._anchors = [a for a in self._anchors if a.step < anchor.step]
            self._state = None
        else:
            self._anchors = [a for a in self._anchors if a.step <= anchor.step]
            self._state = anchor.state

    def _imagine(self, action: torch.Tensor, sampling: dict[str, Any]) -> Step:
        with self._unchanged_on_failure():
            todo = self._next_anchor()
            if todo == "reset":
                self._reset_model()
            elif todo == "keep":
                self._keep_state()
            with torch.no_grad(), self.host.sampling(sampling):
                frame, reward, self._state = self.model.step(self._state, action[None].to(self.host.device))
        return Step(action=action, sampling=dict(sampling), frame=frame[0].cpu(), reward=float(reward[0]),
                    anchored=todo == "reset")

    def _replay(self, old: list[Step], sampling: dict[str, Any] | None = None) -> None:
        """Re-imagine ``old``'s actions after the current steps; real outcomes are kept."""
        for s in old:
            new = self._imagine(s.action, dict(sampling) if sampling is not None else s.sampling)
            new.real_frame, new.real_reward, new.real_success = s.real_frame, s.real_reward, s.real_success
            new.encoded = dict(s.encoded)  # the real frame's encoding still holds (encodings check their frame)
            self.steps.append(new)

    def sync(self) -> None:
        """After a checkpoint switch, re-imagine this trajectory with the new model."""
        if self.start is None or self._generation == self.host.generation:
            return
        self.reimagine()

    # ----- ground truth -----
    def _following(self) -> bool:
        """An episode-started trajectory follows the recording while every step had a real frame."""
        return not self.steps or self.steps[-1].real_frame is not None

    def _add_truth(self, step: Step) -> None:
        if self.start.kind == "env":
            outcome = self._env_step(step.action)
            if outcome is not None:
                step.real_frame, step.real_reward, step.real_success = outcome
            return
        t, ep = self.start.start + len(self.steps), self._episode
        if (self._following() and t < len(ep)
                and np.allclose(step.action.numpy(), ep.action[t], atol=ACTION_ATOL)):
            step.real_frame = torch.from_numpy(ep.obs[t + 1].copy())
            step.real_reward, step.real_success = float(ep.reward[t]), bool(ep.success[t])

    def _open_env(self, seed: int) -> None:
        if self._env is not None:
            return
        from mbrl.envs import MissingSimulatorError, UnknownTaskError, make_env

        try:
            env = make_env(self.task_cfg, seed)
        except (MissingSimulatorError, UnknownTaskError, ValueError) as e:
            raise PlayerError(f"cannot start from an env reset: {e}") from None
        want = (self.model.action_dim,)
        if env.action_space.shape != want:
            env.close()
            raise PlayerError(f"the env takes {env.action_space.shape[0]}-dim actions but the world model "
                              f"{self.model.action_dim}-dim ones: the checkpoint is not for this task.")
        self._env = env

    def _env_reset(self, seed: int) -> list[np.ndarray]:
        """Reset the env with ``seed`` and take the zero-action context steps; the frames."""
        obs, _ = self._env.reset(seed=seed)
        frames = [obs[-RGB:]]
        zero = np.zeros(self.model.action_dim, np.float32)
        for _ in range(self.model.context_frames - 1):
            obs, _, terminated, truncated, _ = self._env.step(zero)
            if terminated or truncated:
                raise PlayerError("the env episode ended during the context steps: raise task.episode_length.")
            frames.append(obs[-RGB:])
        self._env_done = False
        return frames

    def _env_step(self, action: torch.Tensor) -> tuple[torch.Tensor, float, bool] | None:
        """The real outcome of ``action``, or None once the env episode is over (task.episode_length)."""
        if self._env_done:
            return None
        obs, reward, terminated, truncated, info = self._env.step(action.numpy())
        self._env_done = bool(terminated or truncated)
        return torch.from_numpy(obs[-RGB:].copy()), float(reward), bool(info.get("success", False))

    def _restore_env(self) -> None:
        """Bring the env back to the end of the current trajectory (reset with the start seed, then
        its actions), or close it when the trajectory does not start from an env reset."""
        if self.start is None or self.start.kind != "env":
            self._close_env()
            return
        self._env_reset(self.start.env_seed)
        for s in self.steps:
            self._env_step(s.action)

    def _close_env(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    # ----- checks -----
    def _require_started(self) -> None:
        if self.start is None:
            raise Conflict("choose a start context first (an episode or an env reset).")

    def _check_action(self, action: torch.Tensor) -> torch.Tensor:
        A = self.model.action_dim
        action = torch.as_tensor(action, dtype=torch.float32).detach().cpu()
        if tuple(action.shape) != (A,):
            raise PlayerError(f"an action has {A} values (one per action dimension); got shape "
                              f"{tuple(action.shape)}.")
        if not torch.isfinite(action).all():
            raise PlayerError(f"the action has NaN or infinite values: {action.tolist()}.")
        if (action.abs() > 1).any():
            raise PlayerError(f"action values must lie in [-1, 1]; got {action.tolist()}.")
        return action


def check_seed(seed: Any, what: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_SEED:
        raise PlayerError(f"{what} must be an integer in [0, 2^63); got {seed!r}.")
    return int(seed)


@dataclass
class SessionManager:
    """Sessions by id, at most ``max_sessions`` (least recently used dropped first)."""

    host: WorldModelHost
    task_cfg: Mapping[str, Any]
    catalog: EpisodeCatalog
    max_sessions: int = 8
    replay_window: int = 10
    state_budget_mb: float = 64.0  # per session: model states kept for undo (value-state models)
    seed: int = 0  # the sampling seed new sessions start with (play.yaml's seed)
    max_steps: int = DEFAULT_MAX_STEPS  # per session (play.yaml's max_steps)
    _sessions: OrderedDict = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise PlayerError(f"max_sessions={self.max_sessions} must be >= 1.")
        if self.max_steps < 1:
            raise PlayerError(f"max_steps={self.max_steps} must be >= 1.")
        self.seed = check_seed(self.seed, "seed")

    def create(self) -> str:
        """A new empty session; returns its id."""
        def run() -> str:
            sid = secrets.token_urlsafe(12)
            self._sessions[sid] = PlaySession(sid, self.host, self.task_cfg, self.catalog, self.replay_window,
                                              self.state_budget_mb, self.seed, self.max_steps)
            while len(self._sessions) > self.max_sessions:
                _, old = self._sessions.popitem(last=False)
                old.close()
            return sid
        return self.host.call(run)

    def call(self, sid: str, fn: Callable[[PlaySession], T]) -> T:
        """Run ``fn(session)`` on the worker thread; an unknown id is ``NotFound``."""
        def run() -> T:
            session = self._sessions.get(sid)
            if session is None:
                raise NotFound(f"unknown session '{sid}': it expired (at most {self.max_sessions} pages are "
                               "served at once, least recently used dropped first) or the server restarted; "
                               "reload the page.")
            self._sessions.move_to_end(sid)
            return fn(session)
        return self.host.call(run)

    def close(self, sid: str) -> None:
        def run() -> None:
            session = self._sessions.pop(sid, None)
            if session is not None:
                session.close()
        self.host.call(run)

    def close_all(self) -> None:
        def run() -> None:
            while self._sessions:
                self._sessions.popitem()[1].close()
        self.host.call(run)

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, sid: str) -> bool:
        return sid in self._sessions
