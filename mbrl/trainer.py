"""The training loop: DrQ-v2 in the real env, plus MBPO when a world model is configured.

Counters: ``step`` counts agent steps, ``frame`` = step x action_repeat counts env frames (as in
DrQ-v2), ``episode`` counts finished training episodes. Finished episodes are written to
``episodes/`` as soon as they end; that folder *is* the persistent real replay buffer. A checkpoint
(agent, optimisers, world model, counters, RNG) is written atomically at episode ends. A resumed
run reloads the checkpoint and then every episode on disk, including those finished after the
checkpoint, so no finished episode is lost. Training episode i is reset with a seed drawn from
(seed, i), so a resumed run meets the same starts as an uninterrupted one.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mbrl.agent import DrQV2Agent
from mbrl.checkpoint import CHECKPOINT_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from mbrl.demos import SETTINGS_META_KEY, env_settings
from mbrl.envs import make_env
from mbrl.logger import Logger
from mbrl.mbpo import MBPO
from mbrl.replay.real_buffer import RealReplayBuffer
from mbrl.run_lock import RunInUseError, lock_run_dir
from mbrl.run_settings import check_new_run_dir, check_relaunch, restore_started_with
from mbrl.utils import ConfigValueError, SectionTimer, resolve_device, set_seed_everywhere
from mbrl.video import chw_to_hwc, write_video
from mbrl.world_models import build_world_model
from worldmodel.episodes import Episode, EpisodeRecorder, episode_paths, iter_episodes, save_episode
from worldmodel.host_memory import keep_freed_host_memory

log = logging.getLogger(__name__)

EVAL_STREAM = 1  # tags eval episodes' seeds apart from training episodes' (see eval_episode_seed)
EPISODES_DIR = "episodes"
CHECKPOINTS_DIR = "checkpoints"
WORLD_MODEL_DIR = "world_model"  # the run's world model, save_pretrained at each checkpoint
LOGS = ("train", "eval", "validation")  # the run's CSV logs (<name>.csv); a resumed run trims them to its frame


def check_loop_config(cfg: DictConfig) -> None:
    """Refuse loop settings that cannot work, at start (not thousands of frames in, or never)."""
    a = cfg.agent
    problems = [f"{name} must be >= {low}, got {value}" for name, value, low in (
        ("agent.update_every_steps", a.update_every_steps, 1), ("agent.update_times", a.update_times, 1),
        ("agent.batch_size", a.batch_size, 1), ("agent.nstep", a.nstep, 1), ("seed", cfg.seed, 0),
        ("num_eval_episodes", cfg.num_eval_episodes, 1), ("num_seed_frames", cfg.num_seed_frames, 0),
        ("save_every_frames", cfg.save_every_frames, 1)) if value < low]
    if not 0.0 < a.discount <= 1.0:
        problems.append(f"agent.discount must be in (0, 1], got {a.discount}")
    if not 0.0 <= cfg.mbpo.real_ratio <= 1.0:  # (the share of real rows in MBPO's agent batches)
        problems.append(f"mbpo.real_ratio must be in [0, 1], got {cfg.mbpo.real_ratio}")
    if problems:
        raise ConfigValueError("; ".join(problems) + ".")


def has_progress(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds training progress to resume: a checkpoint or stored episodes."""
    return ((run_dir / CHECKPOINTS_DIR / CHECKPOINT_NAME).exists()
            or ((run_dir / EPISODES_DIR).is_dir() and bool(episode_paths(run_dir / EPISODES_DIR))))


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds (part of) a training run: progress, or logs (a frame-0 eval)."""
    return has_progress(run_dir) or any((run_dir / f"{name}.csv").exists() for name in LOGS)


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: str | Path) -> None:
        check_loop_config(cfg)
        try:  # one process per run dir, before anything is read or written
            self.run_lock = lock_run_dir(Path(run_dir))
        except RunInUseError:
            restore_started_with(run_dir)  # the refused launch's Hydra rewrote the live run's settings
            raise
        try:
            self.start(cfg, Path(run_dir))
        except BaseException:
            self.release_run_dir()
            raise

    def start(self, cfg: DictConfig, run_dir: Path) -> None:
        """The rest of ``__init__``, which releases the run dir if this fails."""
        if not cfg.resume:
            check_new_run_dir(run_dir, holds_run=holds_run(run_dir))
        check_relaunch(run_dir, resume=bool(cfg.resume))  # before anything is loaded or written
        self.cfg, self.run_dir = cfg, run_dir
        self.device = resolve_device(cfg.device)
        if cfg.cpu_threads > 0:
            torch.set_num_threads(cfg.cpu_threads)
        if cfg.keep_freed_memory:
            keep_freed_host_memory()
        set_seed_everywhere(cfg.seed)
        self.train_env = make_env(cfg.task, seed=cfg.seed)
        self.eval_env = make_env(cfg.task, seed=self.eval_episode_seed(0))
        # make_env resolves a null task.episode_length (DMC: its time limit / action_repeat); from here
        # on the run's config states the length it runs (checks, logged config, episodes' settings)
        cfg.task.episode_length = self.train_env.episode_length
        self.action_repeat = int(cfg.task.action_repeat)
        self.frame_stack = int(cfg.task.frame_stack)
        obs_shape = tuple(self.train_env.observation_space.shape)  # [3*fs, H, W]
        self.image_size = obs_shape[-1]
        self.action_dim = int(self.train_env.action_space.shape[0])
        a = cfg.agent
        self.agent = DrQV2Agent.from_config(a, obs_shape, self.action_dim, self.device,
                                            num_expl_steps=cfg.num_seed_frames // self.action_repeat)
        self.replay = RealReplayBuffer(
            cfg.replay.capacity, self.image_size, self.action_dim, self.frame_stack, a.nstep, a.discount,
            memmap_dir=str(self.run_dir / "replay_memmap") if cfg.replay.memmap else None)
        self.rng = np.random.default_rng(cfg.seed)
        world_model = build_world_model(cfg.world_model, self.image_size, self.action_dim, self.device)
        self.mbpo = None if world_model is None else MBPO(
            cfg.mbpo, cfg.world_model, world_model, self.agent, self.replay, self.frame_stack, a.nstep,
            a.discount, self.device, cfg.seed)
        frames_per_episode = int(cfg.task.episode_length) + 1
        if self.mbpo is not None and frames_per_episode < self.mbpo.segment_length:
            raise ConfigValueError(
                f"world_model.segment_length={self.mbpo.segment_length} frames is longer than an episode "
                f"(task.episode_length={cfg.task.episode_length} steps, {frames_per_episode} frames): no segment "
                "could be cut; shorten the segments or lengthen the episodes.")
        if self.mbpo is not None and cfg.mbpo.validate_every_episodes:
            needed = self.mbpo.world_model.context_frames + int(cfg.mbpo.gen_horizon)
            if frames_per_episode < needed:
                raise ConfigValueError(
                    f"validation predicts mbpo.gen_horizon={cfg.mbpo.gen_horizon} frames after "
                    f"{self.mbpo.world_model.context_frames} context frames ({needed} in all), more than an episode "
                    f"holds ({frames_per_episode} frames, task.episode_length={cfg.task.episode_length}): shorten "
                    "the horizon, lengthen the episodes, or set mbpo.validate_every_episodes=0.")
        self.logger = Logger(self.run_dir, tensorboard=cfg.log.tensorboard, wandb_mode=cfg.log.wandb,
                             wandb_project=cfg.log.wandb_project,
                             config=OmegaConf.to_container(cfg, resolve=True))
        self.timer = SectionTimer(sync=torch.cuda.synchronize if self.device.type == "cuda" else None)
        self.step = self.episode = 0
        self.last_save_frame = 0
        self.last_eval_frame = -(10**12)  # none yet: evaluate at frame 0 too, for the curve's start
        self.wall_offset = 0.0  # wall time of earlier sessions of this run (resume)
        self.start_time = time.time()

    @property
    def frame(self) -> int:
        return self.step * self.action_repeat

    # ----- episodes on disk (the persistent replay) -----
    def episode_path(self, index: int, length: int) -> Path:
        return self.run_dir / EPISODES_DIR / f"episode_{index:06d}_{length}.npz"

    def store_episode(self, episode: Episode) -> None:
        save_episode(self.episode_path(self.episode, len(episode)), episode)
        self.replay.add_episode(episode)

    def load_demos(self) -> None:
        from mbrl.demos import load_demos

        demos = load_demos(self.cfg.task, self.image_size, self.action_dim)
        for demo in demos:
            self.replay.add_episode(demo)
        print(f"[train] seeded the replay buffer with {len(demos)} demonstrations "
              f"({sum(len(d) for d in demos)} transitions)")

    def train_episode_seed(self) -> int:
        """The seed of training episode ``self.episode``: a function of the run's seed and the
        episode's index, so a resumed run meets the starts an uninterrupted one would have."""
        return int(np.random.SeedSequence([self.cfg.seed, self.episode]).generate_state(1)[0])

    def eval_episode_seed(self, i: int) -> int:
        """The seed of the ``i``-th episode of every evaluation: the same starts at each evaluation
        of a run (comparable over time), independent ones for different run seeds (seed s and s+1
        must not share eval starts), apart from the training episodes' seeds."""
        return int(np.random.SeedSequence([self.cfg.seed, EVAL_STREAM, i]).generate_state(1)[0])

    # ----- acting -----
    def act(self, obs: np.ndarray, eval_mode: bool) -> np.ndarray:
        obs_t = torch.as_tensor(obs, device=self.device).unsqueeze(0)
        return self.agent.act(obs_t, self.step, eval_mode=eval_mode)[0].cpu().numpy()

    def run_episode(self, env, eval_mode: bool, seed: int | None = None,
                    record: bool = False) -> tuple[Episode, list[np.ndarray]]:
        """Play one episode; returns it (single frames) and, if ``record``, its frames for video."""
        obs, info = env.reset(seed=seed)
        recorder = EpisodeRecorder(obs[-3:])
        while True:
            with self.timer("agent_act"):
                action = self.act(obs, eval_mode)
            with self.timer("env"):
                obs, reward, terminated, truncated, info = env.step(action)
            recorder.add(obs[-3:], action, reward, info["success"], terminated)
            if not eval_mode:
                self.after_train_step()
            if terminated or truncated:
                break
        episode = recorder.episode({"task": str(self.cfg.task.name), "suite": str(self.cfg.task.suite),
                                    "source": "eval" if eval_mode else "train",
                                    "action_repeat": self.action_repeat,
                                    SETTINGS_META_KEY: env_settings(self.cfg.task)})  # usable as demos
        return episode, (recorder.frames if record else [])

    def train_row(self, episode: Episode, fps: float, wall_time: float) -> dict[str, Any]:
        """The base columns of train.csv for ``episode``, just stored as episode ``self.episode``."""
        return {"frame": self.frame, "step": self.step, "episode": self.episode,
                "episode_reward": float(episode.reward.sum()), "success": float(episode.success.any()),
                "fps": fps, "wall_time": wall_time, "buffer_size": len(self.replay)}

    def after_train_step(self) -> None:
        """Called after each training env step: agent and world-model updates."""
        prev_frame = self.frame
        self.step += 1
        if self.mbpo is not None:
            wm_metrics = self.mbpo.on_step(prev_frame, self.frame, self.step, self.timer)
            if wm_metrics:
                self.last_wm_metrics = wm_metrics
        a = self.cfg.agent
        if self.frame < self.cfg.num_seed_frames or len(self.replay) == 0 or self.step % a.update_every_steps:
            return
        with self.timer("agent_update"):
            for _ in range(a.update_times):
                batch = (self.mbpo.agent_batch(a.batch_size) if self.mbpo is not None
                         else self.replay.sample(a.batch_size, self.rng))
                self.last_agent_metrics = self.agent.update(batch.to(self.device), self.step)

    # ----- evaluation -----
    def evaluate(self) -> dict[str, Any]:
        returns, successes, video = [], [], []
        for i in range(self.cfg.num_eval_episodes):
            record = i == 0 and self.cfg.log.video
            episode, frames = self.run_episode(self.eval_env, eval_mode=True,
                                               seed=self.eval_episode_seed(i), record=record)
            returns.append(float(episode.reward.sum()))
            successes.append(float(episode.success.any()))
            video = frames or video
        if video:
            write_video(self.run_dir / "videos" / f"eval_{self.frame:08d}.mp4", chw_to_hwc(np.stack(video)),
                        fps=10, scale=self.cfg.log.video_scale)
        row = {"frame": self.frame, "step": self.step, "episode": self.episode,
               "episode_reward": float(np.mean(returns)), "success": float(np.mean(successes)),
               "fps": self.fps(), "wall_time": self.wall_time()}
        self.logger.log("eval", row)
        self.last_eval_frame = self.frame
        return row

    def wall_time(self) -> float:
        return self.wall_offset + time.time() - self.start_time

    def fps(self) -> float:
        return self.frame / max(self.wall_time(), 1e-6)

    # ----- checkpoints -----
    def save(self) -> None:
        state = {"step": self.step, "episode": self.episode, "last_eval_frame": self.last_eval_frame,
                 "wall_time": self.wall_time(), "agent": self.agent.state_dict(),
                 "rng": rng_state(), "replay_rng": self.rng.bit_generator.state,
                 "mbpo": self.mbpo.state_dict() if self.mbpo is not None else None,
                 "config": OmegaConf.to_container(self.cfg, resolve=True)}
        if self.mbpo is not None:  # first: a kill in between leaves an imagined buffer the checkpoint refuses
            self.mbpo.save_imagined(self.run_dir / CHECKPOINTS_DIR)
        save_checkpoint(self.run_dir / CHECKPOINTS_DIR, state)
        if self.mbpo is not None:  # also as a model folder the player, other runs and pretraining load
            self.mbpo.world_model.save_pretrained(self.run_dir / WORLD_MODEL_DIR)
        self.last_save_frame = self.frame

    def restore(self) -> bool:
        """Continue from the run dir's checkpoint and episodes; False if there is nothing to resume.
        A run stopped before its first checkpoint keeps its episodes (the env frames are the costly
        part on a CPU): it continues from them with the agent and world model it starts with now."""
        state = load_checkpoint(self.run_dir / CHECKPOINTS_DIR)
        episodes = self.run_dir / EPISODES_DIR
        if state is None and not (episodes.is_dir() and episode_paths(episodes)):
            self.logger.resume_after(-1, LOGS)  # rows of a start that stored nothing (its frame-0 eval): it starts over
            return False
        self.checkpoint_frame = None if state is None else state["step"] * self.action_repeat
        if state is not None:
            self.agent.load_state_dict(state["agent"])
            set_rng_state(state["rng"])
            self.rng.bit_generator.state = state["replay_rng"]
            if self.mbpo is not None and state["mbpo"] is not None:
                self.mbpo.load_state_dict(state["mbpo"])
                self.mbpo.load_imagined(self.run_dir / CHECKPOINTS_DIR)
            self.wall_offset = state["wall_time"]
        self.step = self.episode = 0
        stored = []  # each stored episode's train.csv row, in case the run was killed before logging it
        for path, episode in iter_episodes(episodes, self.image_size, self.action_dim):
            self.replay.add_episode(episode)
            self.step += len(episode)
            self.episode += 1
            stored.append(self.train_row(episode, fps=float("nan"), wall_time=self.wall_offset))
        self.last_save_frame = self.frame
        kept = self.logger.resume_after(self.frame, LOGS)
        self.last_eval_frame = max([int(float(r["frame"])) for r in kept["eval"]], default=self.last_eval_frame)
        logged = max((int(float(r["frame"])) for r in kept["train"]), default=-1)
        for row in stored:
            if row["frame"] > logged:  # stored, but killed before its row was written (or while writing it)
                self.logger.log("train", row)
        if state is None:
            print(f"[train] {self.run_dir} stopped before its first checkpoint (save_every_frames="
                  f"{self.cfg.save_every_frames}): continuing from its {self.episode} episodes (frame "
                  f"{self.frame}) with a fresh agent and world model", file=sys.stderr)
        else:
            trained = "agent and world model" if self.mbpo is not None else "agent"
            print(f"[train] resumed {self.run_dir} at frame {self.frame} (episode {self.episode}): the {trained} "
                  f"as trained up to its checkpoint at frame {self.checkpoint_frame}"
                  + (" (they replace the weights world_model.pretrained loaded at start)"
                     if self.mbpo is not None and self.cfg.world_model.get("pretrained") else ""))
        return True

    def finish_stopped_run(self) -> None:
        """A run whose episodes reached ``num_train_frames`` but that stopped before its final eval
        and checkpoint: the loop below only evaluates and saves it, with its checkpoint's agent
        (refused without one: a fresh agent's eval would pass for the run's result)."""
        if self.checkpoint_frame is None:
            self.close()
            raise ConfigValueError(
                f"{self.run_dir} holds {self.frame} frames of episodes (num_train_frames={self.cfg.num_train_frames}) "
                f"but no checkpoint: it stopped before its first (save_every_frames={self.cfg.save_every_frames}), "
                f"so its agent was never saved. Move {self.run_dir} away (or delete it) and run again, or resume "
                "with a larger num_train_frames to train a fresh agent on these episodes.")
        print(f"[train] {self.run_dir} reached {self.frame} frames but stopped before its final eval and checkpoint: "
              f"finishing it with the agent of its checkpoint at frame {self.checkpoint_frame}")

    # ----- the loop -----
    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.demo:  # demos live in demonstrations/, not in the run's episodes/
            self.load_demos()
        if cfg.resume and self.restore() and self.frame >= cfg.num_train_frames:
            if self.checkpoint_frame == self.frame and self.last_eval_frame == self.frame:
                print(f"[train] {self.run_dir} already finished ({self.frame} frames); nothing to do")
                self.close()
                return {}
            self.finish_stopped_run()
        bar = None
        if cfg.log.progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=cfg.num_train_frames, initial=self.frame, unit="frame", dynamic_ncols=True)
        last_eval: dict[str, Any] = {}
        # the bar's eval score: DMC has no success notion, so its bar shows the return
        score = ("eval_return", "episode_reward") if cfg.task.suite == "dmc" else ("eval_success", "success")
        while self.frame < cfg.num_train_frames:
            if cfg.eval_every_frames and self.frame - self.last_eval_frame >= cfg.eval_every_frames:
                last_eval = self.evaluate()
            start_frame, start_time = self.frame, time.time()
            episode, _ = self.run_episode(self.train_env, eval_mode=False, seed=self.train_episode_seed())
            self.store_episode(episode)
            self.episode += 1
            row = self.train_row(episode, fps=(self.frame - start_frame) / max(time.time() - start_time, 1e-6),
                                 wall_time=self.wall_time())
            row.update({f"time_{k}": v for k, v in self.timer.pop().items()})
            row.update({f"agent_{k}": v for k, v in getattr(self, "last_agent_metrics", {}).items()})
            if self.mbpo is not None:
                row.update({f"wm_{k}": v for k, v in getattr(self, "last_wm_metrics", {}).items()})
                # non-finite world-model losses are skipped and counted by the model itself
                row.update({f"wm_{k}": v for k, v in getattr(self.mbpo.world_model, "counters", {}).items()})
                row["imagined_size"] = len(self.mbpo.imagined)
                row["imagined_dropped"] = self.mbpo.imagined.total_dropped
                every = cfg.mbpo.validate_every_episodes
                if self.mbpo.started and every and self.episode % every == 0:
                    video = self.run_dir / "videos" / f"imagination_{self.frame:08d}.mp4" if cfg.log.video else None
                    self.logger.log("validation", {"frame": self.frame, "episode": self.episode,
                                                   **self.mbpo.validate(video, cfg.log.video_scale, self.frame)})
            self.logger.log("train", row)
            if self.frame - self.last_save_frame >= cfg.save_every_frames:
                self.save()
            if bar is not None:
                bar.update(self.frame - bar.n)
                shown = last_eval.get(score[1])
                bar.set_postfix(fps=f"{row['fps']:.0f}", episode=self.episode,
                                **{score[0]: "-" if shown is None else f"{shown:.2f}"})
        if self.last_eval_frame != self.frame or self.frame == 0:
            last_eval = self.evaluate()
        self.save()
        if bar is not None:
            bar.close()
        self.close()
        return last_eval

    def close(self) -> None:
        self.logger.close()
        self.train_env.close()
        self.eval_env.close()
        self.release_run_dir()

    def release_run_dir(self) -> None:
        if self.run_lock is not None:
            self.run_lock.close()
            self.run_lock = None
