"""The world-model interface: the one contract between the RL loop and any world model.

Time alignment (the same everywhere in this project, real data and imagination alike):

    obs[t] --action[t]--> obs[t+1], and reward[t] is the reward the env returned for that step.

So a segment holds ``obs`` [B, T, 3, H, W], ``action`` [B, T-1, A] and ``reward`` [B, T-1], and
``step(state, action_t)`` returns ``(obs_{t+1}, reward_t, state)``: the imagined reward for
(o_t, a_t) means exactly what the real replay buffer's r_t means. Frames are uint8 in [0, 255]
at the env's resolution, so a policy sees imagined frames scaled exactly as real ones.
"""
from __future__ import annotations

import abc
import contextlib
import json
import logging
import os
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from worldmodel.atomic_file import fsync_directory, fsync_file

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# A policy acting inside the world model: takes every frame so far, uint8 [B, t, 3, H, W]
# (context then imagined), and returns actions float [B, A] in [-1, 1].
Policy = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SegmentBatch:
    """Real training segments: contiguous steps inside one episode."""

    obs: torch.Tensor  # uint8 [B, T, 3, H, W]
    action: torch.Tensor | None  # float32 [B, T-1, A]; an action-free model (A = 0) also takes None
    reward: torch.Tensor  # float32 [B, T-1]

    def to(self, device: torch.device | str) -> "SegmentBatch":
        return SegmentBatch(self.obs.to(device, non_blocking=True),
                            None if self.action is None else self.action.to(device, non_blocking=True),
                            self.reward.to(device, non_blocking=True))

    def pin_memory(self) -> "SegmentBatch":
        """The batch in page-locked memory (what a DataLoader with ``pin_memory=True`` calls), so
        that ``to(cuda)`` copies asynchronously; a subclass's extra tensors are pinned too."""
        tensors = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v.pin_memory() for k, v in tensors.items() if isinstance(v, torch.Tensor)})


@dataclass
class Rollout:
    """An imagined rollout of horizon k from a real start."""

    obs: torch.Tensor  # uint8 [B, k+1, 3, H, W]; obs[:, 0] is the last real context frame
    action: torch.Tensor  # float32 [B, k, A]
    reward: torch.Tensor  # float32 [B, k]; reward[:, i] for (obs[:, i], action[:, i])


class WorldModelConfigError(ValueError):
    """A world model does not fit the env or the checkpoint it is given."""


def check_step_action(action: torch.Tensor | None, batch: int, action_dim: int) -> None:
    """Refuse a ``step`` action that is not [B, A] = (batch, action_dim) or that has NaN / inf
    entries (a diverged policy). Sampling from such an action would fail deep inside torch, and
    on a GPU as a device-side assert that ends the process. The finiteness check reads one bool
    back from the device: one wait per imagined frame, not per token."""
    if action is not None and not isinstance(action, torch.Tensor):
        raise WorldModelConfigError(f"action must be a torch.Tensor [B, A] = {(batch, action_dim)}; got a "
                                    f"{type(action).__name__} (convert with torch.as_tensor).")
    if action is None or tuple(action.shape) != (batch, action_dim):
        raise WorldModelConfigError(f"action must be [B, A] = {(batch, action_dim)}; got "
                                    f"{None if action is None else tuple(action.shape)}.")
    if not bool(torch.isfinite(action).all()):
        raise WorldModelConfigError("action has NaN or inf entries (a diverged policy?): imagination "
                                    "needs finite actions.")


def merge_config(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` laid over it, nested dicts merged key by key (a
    ``sampling={"top_k": 10}`` override keeps the other sampling keys)."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


class WorldModel(nn.Module, abc.ABC):
    """Base class of every world model. Subclasses implement the abstract methods.

    Attributes every model sets: ``image_size`` (H = W), ``action_dim`` (0 for action-free)
    and ``context_frames`` (how many real frames ``reset`` wants).
    """

    model_type: str = ""  # registry name, written into config.json
    parts: tuple[str, ...] = ()  # separately trained sub-models, e.g. ("tokenizer", "transformer")
    # Config keys (dotted for nested ones) that say how the model is trained and imagines, not
    # what its weights are: when a run loads a checkpoint (``world_model.pretrained``), the run's
    # values of these keys replace the checkpoint's (``run_overrides``); the rest is the checkpoint's.
    run_settings: tuple[str, ...] = ()
    # Weight-name prefixes of modules that a run setting adds or removes: ``from_pretrained``
    # starts them fresh when the checkpoint lacks them and leaves them out when the model does.
    optional_weights: tuple[str, ...] = ()
    # True when ``step`` returns a new state and leaves the one it was given intact (only the
    # sampling generator, shared by reference, moves on): a caller may keep states and step
    # from them again (the player's undo; such states tell their size with ``nbytes()``). False
    # when a state grows in place (a KV cache).
    value_states: bool = False
    image_size: int
    action_dim: int
    context_frames: int
    # One optimiser (and optional LR scheduler) per part, created by the subclass, and the
    # counters "updates_<part>" / "skipped_<part>" that optimizer_step keeps.
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    counters: dict[str, int]

    # ----- training -----
    @abc.abstractmethod
    def update(self, batch: SegmentBatch, parts: tuple[str, ...] | None = None) -> dict[str, float]:
        """One optimiser step on real segments; ``parts`` names the sub-models to train
        (None: all). Returns scalar metrics. A non-finite loss skips the step and is counted."""

    def optimizer_step(self, part: str, loss: torch.Tensor, params: Iterable[nn.Parameter],
                       grad_clip: float | None) -> dict[str, float]:
        """Backward and a clipped optimiser (+ scheduler) step for one part. A non-finite loss or
        gradient norm skips the step and counts it in ``counters["skipped_<part>"]``; taken steps
        count in ``counters["updates_<part>"]``."""
        opt = self.optimizers[part]
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self.counters[f"skipped_{part}"] += 1
            return {f"{part}/skipped": 1.0}
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(list(params), grad_clip if grad_clip else float("inf"))
        if not torch.isfinite(norm):
            opt.zero_grad(set_to_none=True)
            self.counters[f"skipped_{part}"] += 1
            return {f"{part}/skipped": 1.0}
        lr = opt.param_groups[0]["lr"]  # the rate this step used
        opt.step()
        if part in getattr(self, "schedulers", {}):
            self.schedulers[part].step()
        self.counters[f"updates_{part}"] += 1
        return {f"{part}/grad_norm": float(norm), f"{part}/lr": lr}

    def training_state(self) -> dict[str, Any]:
        """Optimiser / scheduler states, counters and ``training_statistics``, for checkpoints
        (weights excluded)."""
        return {
            "optimizers": {k: o.state_dict() for k, o in getattr(self, "optimizers", {}).items()},
            "schedulers": {k: s.state_dict() for k, s in getattr(self, "schedulers", {}).items()},
            "counters": dict(getattr(self, "counters", {})),
            "statistics": self.training_statistics(),
        }

    def training_statistics(self) -> dict[str, torch.Tensor]:
        """Running statistics that training reads and the weights leave out (e.g. codebook usage),
        so that a resumed run continues exactly; none by default."""
        return {}

    def load_training_statistics(self, statistics: dict[str, torch.Tensor]) -> None:
        """Restore what ``training_statistics`` returned."""

    def load_training_state(self, state: dict[str, Any]) -> None:
        for k, o in getattr(self, "optimizers", {}).items():
            if k in state.get("optimizers", {}):
                o.load_state_dict(state["optimizers"][k])
        for k, s in getattr(self, "schedulers", {}).items():
            if k in state.get("schedulers", {}):
                s.load_state_dict(state["schedulers"][k])
        if "counters" in state and hasattr(self, "counters"):
            self.counters.update(state["counters"])
        self.load_training_statistics(state.get("statistics", {}))

    @classmethod
    def run_overrides(cls, model_cfg: Mapping[str, Any]) -> dict:
        """The ``run_settings`` that a run's model config holds, as nested overrides for
        ``from_pretrained``."""
        out: dict = {}
        for path in cls.run_settings:
            *parents, leaf = path.split(".")
            source = model_cfg
            for key in parents:
                source = source.get(key) if isinstance(source, Mapping) else None
            if isinstance(source, Mapping) and leaf in source:
                target = out
                for key in parents:
                    target = target.setdefault(key, {})
                target[leaf] = source[leaf]
        return out

    # ----- what a run may ask of the model -----
    def check_segment_length(self, length: int) -> None:
        """Refuse training segments of ``length`` frames that this model cannot learn from, before
        any training starts (the default: the context plus at least one future frame)."""
        if length < self.context_frames + 1:
            raise WorldModelConfigError(
                f"segments of {length} frames leave no future frame after the model's {self.context_frames} "
                f"context frames; use segment_length >= {self.context_frames + 1}.")

    @property
    def needs_frame_keys(self) -> bool:
        """Whether training and imagination need a state key per frame besides the pixels (e.g. a
        VRAG memory on camera poses); a loop that records only frames cannot drive such a model."""
        return False

    @property
    def max_horizon(self) -> int | None:
        """The most imagined steps one ``reset`` allows; None: unbounded (the default)."""
        return None

    def check_horizon(self, horizon: int) -> None:
        """Refuse a rollout of ``horizon`` imagined steps before any is imagined: it needs
        1 <= horizon <= ``max_horizon``."""
        if horizon < 1:
            raise WorldModelConfigError(f"a rollout needs horizon >= 1 imagined steps; got {horizon}.")
        if self.max_horizon is not None and horizon > self.max_horizon:
            raise WorldModelConfigError(f"a rollout of {horizon} steps is longer than the {self.max_horizon} this "
                                        f"{self.model_type} model imagines after one reset; shorten it.")

    # ----- step-level imagination -----
    @abc.abstractmethod
    def reset(self, context_obs: torch.Tensor, generator: torch.Generator | None = None) -> Any:
        """Start imagination from real frames uint8 [B, T0, 3, H, W]; returns an opaque state."""

    @abc.abstractmethod
    def step(self, state: Any, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Imagine one step: action [B, A] -> (next frame uint8 [B, 3, H, W], reward [B], state).
        Implementations refuse a bad action with ``check_step_action`` before changing ``state``."""

    @contextlib.contextmanager
    def sampling_mode(self) -> Iterator[None]:
        """Eval mode for imagination (no dropout: seeded steps repeat), restoring the mode after. A
        model already in eval mode (``rollout`` sets it once) is left alone: switching walks every
        module, a cost per step."""
        was_training = self.training
        if was_training:
            self.eval()
        try:
            yield
        finally:
            if was_training:
                self.train()

    @torch.no_grad()
    def rollout(self, context_obs: torch.Tensor, policy: Policy, horizon: int,
                generator: torch.Generator | None = None) -> Rollout:
        """Batched k-step imagination built on ``reset``/``step``; the policy acts on the
        frames so far. Models may override it with a faster path with the same result."""
        self.check_horizon(horizon)
        if isinstance(context_obs, torch.Tensor):  # (reset names what else is wrong with it)
            context_obs = context_obs.to(next(self.parameters()).device)  # frames stack with imagined ones
        with self.sampling_mode():
            state = self.reset(context_obs, generator=generator)
            frames = [context_obs[:, i] for i in range(context_obs.shape[1])]
            actions, rewards = [], []
            for _ in range(horizon):
                action = policy(torch.stack(frames, 1))  # [B, A]
                if not isinstance(action, torch.Tensor):
                    raise WorldModelConfigError(f"the policy must return a torch.Tensor [B, A]; it returned a "
                                                f"{type(action).__name__}.")
                action = action.to(torch.float32)
                frame, reward, state = self.step(state, action)
                frames.append(frame)
                actions.append(action)
                rewards.append(reward)
        start = context_obs.shape[1] - 1
        return Rollout(obs=torch.stack(frames[start:], 1), action=torch.stack(actions, 1),
                       reward=torch.stack(rewards, 1))

    # ----- persistence -----
    @abc.abstractmethod
    def get_config(self) -> dict:
        """The JSON-serialisable config that rebuilds this model (``model_type`` excluded)."""

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: dict) -> "WorldModel":
        """Build a fresh model from ``get_config()``'s output."""

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` such that a config.json
        there always describes the weights beside it, even when writing stops half way.

        A new directory is written whole into a hidden sibling folder that is then renamed into
        place. An existing one (other files in it are kept) first gets both files under temp names;
        then its old config.json is removed, the weights renamed in, and the config renamed in
        last: a crash in between leaves no config.json (loading says the folder is no checkpoint)
        instead of new weights under the old config. Write failures raise ``OSError``."""
        import errno
        import shutil
        import uuid

        from safetensors import SafetensorError
        from safetensors.torch import save_file

        directory = os.fspath(directory)
        config = {"model_type": self.model_type, **self.get_config()}
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}

        def write(folder: str, suffix: str) -> None:
            """Both files, each on disk (fsynced) before the caller renames it in: else a power loss
            could leave a renamed-in config.json beside empty weights."""
            path = os.path.join(folder, WEIGHTS_NAME + suffix)
            try:
                save_file(state, path)
            except SafetensorError as e:  # safetensors' I/O errors (disk full, ...) are no OSError
                raise OSError(f"cannot write {path}: {e}") from e
            fsync_file(path)
            with open(os.path.join(folder, CONFIG_NAME + suffix), "w") as f:
                json.dump(config, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())

        if not os.path.exists(directory):
            parent, name = os.path.split(os.path.abspath(directory))
            os.makedirs(parent, exist_ok=True)
            tmp = os.path.join(parent, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
            os.mkdir(tmp)
            try:
                write(tmp, "")
                fsync_directory(tmp)
                os.replace(tmp, directory)
                fsync_directory(parent)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
            return
        if not os.path.isdir(directory):
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", directory)
        temps = [os.path.join(directory, name + ".tmp") for name in (WEIGHTS_NAME, CONFIG_NAME)]
        try:
            write(directory, ".tmp")
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, CONFIG_NAME))
            fsync_directory(directory)  # the old config is gone on disk before new weights are there
            os.replace(temps[0], os.path.join(directory, WEIGHTS_NAME))
            os.replace(temps[1], os.path.join(directory, CONFIG_NAME))
            fsync_directory(directory)
        finally:
            for tmp in temps:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides: Any) -> "WorldModel":
        """Rebuild from ``save_pretrained`` output; ``overrides`` replace config entries (nested
        dicts key by key, ``merge_config``).
        Weights whose shapes disagree with the config fail naming the key and both shapes."""
        config = read_config(directory)
        model_type = config.pop("model_type")
        if cls.model_type and model_type != cls.model_type:
            raise WorldModelConfigError(
                f"{directory} holds a '{model_type}' world model, not '{cls.model_type}'.")
        config = merge_config(config, overrides)
        model = cls.from_config(config)
        load_weights_checked(model, os.path.join(directory, WEIGHTS_NAME), optional=cls.optional_weights)
        return model


def read_config(directory: str | os.PathLike) -> dict:
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise WorldModelConfigError(
            f"{directory} is not a world-model checkpoint: {CONFIG_NAME} is missing "
            "(expected the output of save_pretrained or scripts/pretrain.py).")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WorldModelConfigError(f"{path} is not valid UTF-8 JSON ({e}): the checkpoint is damaged "
                                    "(save it again).") from None
    if not isinstance(config, dict):
        raise WorldModelConfigError(f"{path} holds a JSON {type(config).__name__}, not an object: it is no "
                                    "world-model config (save the checkpoint again).")
    if "model_type" not in config:
        raise WorldModelConfigError(f"{path} has no 'model_type' entry.")
    if not isinstance(config["model_type"], str):
        from worldmodel.registry import WORLD_MODELS  # the registry imports this module

        raise WorldModelConfigError(f"{path}: 'model_type' must be a string naming one of the world models "
                                    f"{sorted(WORLD_MODELS)}; got {config['model_type']!r}.")
    return config


def load_weights_checked(model: nn.Module, path: str | os.PathLike, strict: bool = True,
                         optional: tuple[str, ...] = ()) -> None:
    """Load safetensors weights, failing with the key and both shapes on any mismatch. Weights
    whose names start with one of ``optional`` may be missing (they keep their fresh values) or
    left over (they are not loaded); a shape mismatch fails for them too."""
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise WorldModelConfigError(f"weights file {path} is missing.")
    try:
        state = load_file(path)
    except Exception as e:  # safetensors raises several types for corrupt files
        raise WorldModelConfigError(f"{path} is not a readable safetensors file ({e}).") from None
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise WorldModelConfigError(
                f"weight '{key}' in {path} has shape {tuple(value.shape)} but the config builds "
                f"{tuple(own[key].shape)}: the checkpoint was made with a different config "
                "(action dim, vocabulary or size).")
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    fresh = [k for k in missing if k.startswith(optional)] if optional else []
    left_out = [k for k in unexpected if k.startswith(optional)] if optional else []
    if strict and (len(missing) > len(fresh) or len(unexpected) > len(left_out)):
        missing, unexpected = sorted(set(missing) - set(fresh)), sorted(set(unexpected) - set(left_out))
        raise WorldModelConfigError(
            f"{path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    if fresh or left_out:
        log.warning("%s: %s start fresh, %s are not loaded (modules this run's settings add or remove).",
                    path, fresh or "none", left_out or "none")
    model.load_state_dict({k: v for k, v in state.items() if k not in left_out}, strict=strict and not fresh)
