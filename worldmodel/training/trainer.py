"""World-model pretraining with ``accelerate``: stages, checkpoints, resume, evaluation, logs.

One loop for one CPU, one GPU, many GPUs and many nodes: the same script runs under
``python`` or ``accelerate launch`` (DDP, FSDP or DeepSpeed and mixed precision come from
accelerate's own config / launch flags). Each stage (``stages.py``) trains one part of the model;
only that part is prepared by accelerate.

Output directory ``out``::

    model/                       final weights: what ``world_model.pretrained=<out>/model`` loads
    stages/<i>-<stage>/          the whole model after stage i (resume and inspection)
    checkpoints/<i>-<stage>/step-<N>/   accelerate ``save_state`` (weights of the trained part,
                                 optimiser, LR schedule, step, every rank's RNG); the last
                                 ``checkpoint.keep`` are kept and removed once the stage is done
    logs/<stage>_train.csv, logs/<stage>_eval.csv, tensorboard/, wandb/, videos/*.mp4
    run_settings.json            the learning settings a re-run must keep (``run_settings.py``)
    wandb_run_id                 the wandb run every launch of this output logs to (resumed, not a new run)
    pretrain_done.json           written last; a re-run of a finished run says so and returns

Re-running the same command resumes: finished stages are skipped (their weights are loaded), and
the current stage continues from its newest checkpoint with the same next batch (the data
position is part of the step count, see ``data.py``) and the same random streams. A re-run with
other learning settings is refused (``run_settings.py``; ``run_settings.json`` keeps them).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from worldmodel.atomic_file import atomic_write
from worldmodel.host_memory import keep_freed_host_memory
from worldmodel.interface import CONFIG_NAME, WEIGHTS_NAME, WorldModel, WorldModelConfigError, load_weights_checked
from worldmodel.optim import adamw
from worldmodel.registry import (WORLD_MODELS, load_pretrained, model_directory, pretrained_model_type,
                                 world_model_class)
from worldmodel.training.csv_log import CsvLog
from worldmodel.training.data import (build_datasets, eval_batches, fvd_extra_batches, loader_workers,
                                      position_loader)
from worldmodel.training.evaluation import EvalTools, evaluate
from worldmodel.training.run_settings import check_resume_settings, command_line_keys, flatten
from worldmodel.training.stages import Stage, build_stage, freeze, stage_names

DONE_NAME = "pretrain_done.json"
WANDB_ID_NAME = "wandb_run_id"
PRECISIONS = ("auto", "no", "fp16", "bf16")
# transformers.SchedulerType names that this loop can drive: a schedule over (warm-up, total)
# steps that steps without a metric (reduce_lr_on_plateau and greedy step on a validation metric,
# warmup_stable_decay needs its own decay steps).
SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
             "inverse_sqrt", "cosine_with_min_lr", "cosine_warmup_with_min_lr")
MIN_LR_SCHEDULES = ("cosine_with_min_lr", "cosine_warmup_with_min_lr")  # take optim.min_lr_ratio
STAGE_DONE_NAME = "stage.json"
VIDEO_FPS = 8


def _plain(cfg: Any) -> Any:
    """An OmegaConf node (or anything) -> plain Python containers."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        pass
    return cfg


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def write_pretrained(directory: Path, model: WorldModel, state: dict[str, torch.Tensor]) -> None:
    """Write ``save_pretrained``'s files for ``model`` with weights ``state``, as a whole
    directory atomically (temp dir + rename)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / WEIGHTS_NAME))
    _write_json(tmp / CONFIG_NAME, {"model_type": model.model_type, **model.get_config()})
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def resolve_pretrained_dir(path: str | os.PathLike) -> Path:
    """A save_pretrained directory, or a pretraining output (its ``model/``)."""
    directory = Path(model_directory(path))
    if (directory / CONFIG_NAME).is_file():
        return directory
    path = Path(path)
    raise WorldModelConfigError(f"init_from={path} holds no world model ({CONFIG_NAME} missing there and in "
                                f"{path / 'model'}); give a save_pretrained directory or a pretraining output.")


def mixed_precision(setting: str, launch: str | None, bf16_gpu: bool) -> str:
    """The precision to train in: ``setting`` (no | fp16 | bf16), or for ``auto`` the one that
    accelerate's launch config asks for (``launch``), else bf16 on a GPU that has it. A plain
    ``accelerate launch`` sets ``launch="no"``: that is no request for fp32."""
    if setting != "auto":
        return setting
    if launch and launch != "no":
        return launch
    return "bf16" if bf16_gpu else "no"


def check_settings(cfg: Mapping[str, Any]) -> None:
    """Refuse settings the run would only trip over later (accelerate's constructor, the first
    step, the stage's LR schedule) with a one-line reason, before any data or model is set up."""
    name = cfg["world_model"]["name"]
    if name not in WORLD_MODELS:  # world_model=none (model-free MBPO) has nothing to pretrain
        raise WorldModelConfigError(f"world_model={name}: pretraining needs a world model; choose "
                                    f"{' or '.join(f'world_model={m}' for m in sorted(WORLD_MODELS))}.")
    workers = cfg["data_loader"]["num_workers"]
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise WorldModelConfigError(f"data_loader.num_workers={workers!r}: give a whole number >= 0 (0: load in "
                                    "the training process) or null (4, at most the CPUs this process may use).")
    if int(cfg["log"]["every"]) < 1:
        raise WorldModelConfigError(f"log.every={cfg['log']['every']}: train metrics are averaged and logged every "
                                    "N optimiser steps; give N >= 1.")
    if cfg["mixed_precision"] not in PRECISIONS:
        raise WorldModelConfigError(f"mixed_precision={cfg['mixed_precision']}: give one of {', '.join(PRECISIONS)}.")
    accum = cfg["grad_accum"]
    if isinstance(accum, bool) or not isinstance(accum, int) or accum < 1:
        raise WorldModelConfigError(f"grad_accum={accum}: the micro-batches per optimiser step; give an integer "
                                    ">= 1.")
    if cfg["optim"]["schedule"] not in SCHEDULES:
        raise WorldModelConfigError(f"optim.schedule={cfg['optim']['schedule']}: give one of {', '.join(SCHEDULES)} "
                                    "(transformers' LR schedules over the stage's steps).")


def launch_set_keys() -> set[str] | None:
    """The config keys this launch's Hydra command line sets (``run_settings.command_line_keys``),
    or None when no Hydra app is running (a ``Pretrainer`` built in code)."""
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover - hydra ships with the project
        return None
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return command_line_keys(hydra_cfg.overrides.task, hydra_cfg.runtime.choices)


def wandb_run_id(out: Path) -> str:
    """The id of ``out``'s wandb run: made and saved (atomically) at the first launch, read at
    every later one, so a relaunch resumes that run instead of starting another."""
    path = Path(out) / WANDB_ID_NAME
    if path.is_file():
        return path.read_text().strip()
    run_id = os.urandom(8).hex()
    atomic_write(path, lambda f: f.write(run_id.encode()))
    return run_id


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes and bytes), to compare ranks."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class TrainState:
    """Counters, the LR schedule of the current stage and the model's ``training_statistics``;
    saved in every checkpoint by accelerate (``register_for_checkpointing``). ``sums`` / ``count``:
    the train metrics summed over the micro-batches since the last logged row, so that the first
    row after a resume averages the same steps as an uninterrupted run's (a checkpoint falls
    between two rows when ``checkpoint.every`` is no multiple of ``log.every``). Accelerate saves
    the main process's copy only, so with several processes every rank resumes with rank 0's
    sums: that first row then differs slightly from an uninterrupted run's (logs only; training
    is not affected)."""

    def __init__(self) -> None:
        self.stage, self.step, self.skipped = 0, 0, 0
        self.scheduler: Any = None
        self.model: WorldModel | None = None
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "step": self.step, "skipped": self.skipped,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "statistics": self.model.training_statistics() if self.model is not None else {},
                "metric_sums": {k: torch.as_tensor(v).detach().cpu() for k, v in self.sums.items()},
                "metric_count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["stage"] != self.stage:
            raise RuntimeError(f"checkpoint of stage {state['stage']} loaded into stage {self.stage}.")
        self.step, self.skipped = int(state["step"]), int(state["skipped"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.model is not None:
            self.model.load_training_statistics(state.get("statistics", {}))
        # checkpoints written before the sums were kept: the first row averages the steps since the resume
        self.sums, self.count = dict(state.get("metric_sums", {})), int(state.get("metric_count", 0))


@contextlib.contextmanager
def isolated_rng(seed: int):
    """Evaluation draws from its own RNG, seeded with ``seed`` (the same noise at every evaluation,
    e.g. for a diffusion loss), and the training stream is unchanged."""
    np_state, py_state = np.random.get_state(), random.getstate()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class Pretrainer:
    """Runs ``cfg`` (``cfgs/pretrain.yaml``'s keys) to completion or resumes it."""

    def __init__(self, cfg: Mapping[str, Any]):
        from accelerate import Accelerator, DistributedDataParallelKwargs
        from accelerate.utils import ProjectConfiguration

        self.cfg = cfg = _plain(cfg)
        check_settings(cfg)
        self.out = Path(cfg["out"]).absolute()
        if cfg["keep_freed_memory"]:
            keep_freed_host_memory()
        log = cfg["log"]
        trackers = (["tensorboard"] if log["tensorboard"] else []) + (["wandb"] if log["wandb"] != "disabled" else [])
        # native bf16 only (Ampere and later): emulated bf16 on older GPUs is slower than fp32
        bf16_gpu = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        mixed = mixed_precision(cfg["mixed_precision"], os.environ.get("ACCELERATE_MIXED_PRECISION"), bf16_gpu)
        # cpu=True without CUDA: several processes then form a gloo group (MULTI_CPU), e.g. under
        # `accelerate launch --multi_gpu --num_processes 2` or torchrun on a CPU-only machine.
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(), mixed_precision=mixed, gradient_accumulation_steps=cfg["grad_accum"],
            log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "tensorboard")),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg["find_unused_parameters"])])
        self.state = TrainState()
        self.accelerator.register_for_checkpointing(self.state)

    # ----- setup -----
    def print(self, *args: Any) -> None:
        self.accelerator.print("[pretrain]", *args, flush=True)

    def _build_model(self, image_size: int, action_dim: int) -> WorldModel:
        cfg = self.cfg
        if cfg["world_model"].get("pretrained"):  # MBPO's key: here it would be ignored
            raise WorldModelConfigError(
                f"world_model.pretrained={cfg['world_model']['pretrained']} is what MBPO runs load; pretraining "
                f"starts from a checkpoint with init_from={cfg['world_model']['pretrained']} instead.")
        if cfg.get("init_from"):
            directory = resolve_pretrained_dir(cfg["init_from"])
            held, name = pretrained_model_type(directory), cfg["world_model"]["name"]
            # The run's training and sampling settings apply to a checkpoint of the configured kind.
            run_config = dict(cfg["world_model"]["model"]) if held == name else None
            model = load_pretrained(directory, run_config=run_config, action_dim=action_dim)
            self.print(f"initialised from {directory} ({model.model_type}, action_dim {action_dim})")
            if held != name:
                self.print(f"note: init_from holds a {held} model; world_model={name} is ignored")
        else:
            spec = dict(cfg["world_model"]["model"])
            model = world_model_class(cfg["world_model"]["name"]).from_config(
                {**spec, "image_size": image_size, "action_dim": action_dim})
        if model.needs_frame_keys:  # refused now, not when the first batch (or first imagined step) lacks them
            raise WorldModelConfigError(
                "this world model needs a state key per frame (memory.key=state), which pretraining data does not "
                "carry (episodes hold frames, actions and rewards), so neither its training clips nor its key "
                "dynamics could be fitted; pretrain with world_model.model.memory.key=pixel (or memory=history / "
                "memory=window).")
        model.check_segment_length(self.cfg["segment_length"] or self.cfg["world_model"]["segment_length"])
        if model.image_size != image_size:
            raise WorldModelConfigError(f"the model works on {model.image_size}x{model.image_size} frames but the "
                                        f"data has {image_size}x{image_size}; convert the data or change the model.")
        return model

    def _stages(self, model: WorldModel, train_reward: bool) -> list[str]:
        names = self.cfg.get("stages") or stage_names(model)
        if not train_reward and model.model_type == "vid2world" and not self.cfg.get("stages"):
            names = [n for n in names if n != "reward"]
        for n in names:
            if n not in stage_names(model):
                raise WorldModelConfigError(f"stages: '{n}' is not a stage of {model.model_type} "
                                            f"({stage_names(model)}).")
            if not self.cfg["steps"].get(n):
                raise WorldModelConfigError(f"steps.{n} is not set: give the optimiser steps of stage '{n}'.")
        return list(names)

    # ----- the run -----
    def run(self) -> Path:
        """Train every stage (or resume); returns the directory of the final weights."""
        from accelerate.utils import set_seed

        cfg, acc = self.cfg, self.accelerator
        self.out.mkdir(parents=True, exist_ok=True)
        done_file = self.out / DONE_NAME
        if done_file.exists():
            self.print(f"{self.out} already finished ({json.loads(done_file.read_text())}); nothing to do. Use "
                       "another out= to train again, or init_from=<out> to fine-tune these weights.")
            return self.out / "model"
        check_resume_settings(self.out, cfg, acc.num_processes, write=acc.is_main_process, set_keys=launch_set_keys())
        set_seed(cfg["seed"])  # the same initial weights on every rank
        segment_length = cfg["segment_length"] or cfg["world_model"]["segment_length"]
        ev, dl = cfg["eval"], cfg["data_loader"]
        self._check_fvd_settings(segment_length)
        try:
            self.train_data, self.val_data = build_datasets(
                cfg["data"], segment_length, seed=cfg["seed"], val_fraction=ev["val_fraction"] if ev["every"] else 0,
                val_folders=ev["val_folders"], root=dl["root"], allow_missing=dl["allow_missing"],
                cache_episodes=dl["cache_episodes"])
        except ValueError as e:  # the mix, its episodes or the held-out split cannot work; the message says why
            raise WorldModelConfigError(f"data: {e}") from None
        action_dim = self.train_data.segment_action_dim
        self.model = self.state.model = model = self._build_model(self.train_data.image_size, action_dim)
        train_reward = (cfg["train_reward"] if cfg["train_reward"] != "auto"
                        else not cfg["data"].get("action_free", False))
        if cfg.get("freeze"):
            frozen = freeze(model, list(cfg["freeze"]))
            self.print(f"frozen: {len(frozen)} parameter tensors ({', '.join(cfg['freeze'])})")
        stages = self._stages(model, train_reward)
        n_val = sum(len(e) for e in self.val_data.entries) if self.val_data is not None else 0
        self.print(f"{model.model_type}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params; "
                   f"stages {stages}; data {sum(len(e) for e in self.train_data.entries)} train / {n_val} held-out "
                   f"episodes, {self.train_data.image_size}px, action_dim {action_dim}; "
                   f"{acc.num_processes} process(es) on {acc.device}, mixed precision {acc.mixed_precision}")
        self.stage_order = stages
        if acc.is_main_process and acc.log_with:
            mode = cfg["log"]["wandb"]
            # TensorBoard hides the rows an earlier launch logged after the step this one resumes at;
            # wandb goes on with the output's one run (id saved at the first launch)
            wandb = ({"dir": str(self.out), "mode": mode, "id": wandb_run_id(self.out), "resume": "allow"}
                     if mode != "disabled" else {})
            acc.init_trackers(cfg["log"]["project"], config=flatten(cfg),
                              init_kwargs={"wandb": wandb,
                                           "tensorboard": {"purge_step": self._resumed_tracker_step() + 1}})
        model.to(acc.device)
        self.eval_data = (eval_batches(self.val_data, cfg["seed"], ev["batches"], ev["batch_size"] or self._batch())
                          if self.val_data is not None and ev["every"] else [])
        self.tools = self._eval_tools() if self.eval_data else None

        for idx, name in enumerate(stages):
            stage_dir = self.out / "stages" / f"{idx}-{name}"
            if (stage_dir / STAGE_DONE_NAME).exists():
                continue
            if idx > 0:  # the parts earlier stages trained
                load_weights_checked(model, self.out / "stages" / f"{idx - 1}-{stages[idx - 1]}" / WEIGHTS_NAME)
                model.to(acc.device)
            self._train_stage(idx, name, segment_length, train_reward)
        last = self.out / "stages" / f"{len(stages) - 1}-{stages[-1]}"
        if acc.is_main_process:
            shutil.rmtree(self.out / ".model.tmp", ignore_errors=True)
            shutil.copytree(last, self.out / ".model.tmp")
            (self.out / ".model.tmp" / STAGE_DONE_NAME).unlink(missing_ok=True)
            shutil.rmtree(self.out / "model", ignore_errors=True)
            os.replace(self.out / ".model.tmp", self.out / "model")
            _write_json(done_file, {"stages": stages, "steps": {n: cfg["steps"][n] for n in stages}})
            self.print(f"done: final weights in {self.out / 'model'} (world_model.pretrained={self.out / 'model'})")
        acc.wait_for_everyone()
        acc.end_training()
        return self.out / "model"

    def _tracker_offset(self, idx: int) -> int:
        """TensorBoard / wandb steps run on across stages (wandb drops a step lower than one it has
        seen): stage ``idx``'s step s is logged at this offset + s."""
        return sum(int(self.cfg["steps"][n]) for n in self.stage_order[:idx])

    def _resumed_tracker_step(self) -> int:
        """The tracker step this launch goes on from: the first unfinished stage's newest checkpoint."""
        for idx, name in enumerate(self.stage_order):
            if not (self.out / "stages" / f"{idx}-{name}" / STAGE_DONE_NAME).exists():
                ckpts = self._checkpoints(idx, name)
                meta = json.loads((ckpts[-1] / "meta.json").read_text()) if ckpts else {"step": 0}
                return self._tracker_offset(idx) + int(meta["step"])
        return self._tracker_offset(len(self.stage_order))

    def _batch(self) -> int:
        return int(self.cfg["batch_size"] or self.cfg["world_model"]["batch_size"])

    def _fvd_wanted(self) -> bool:
        """FVD runs when evaluation is on, an I3D is given and open-loop videos are made."""
        ev = self.cfg["eval"]
        return bool(ev["every"] and ev["fvd_i3d"] and ev["open_loop"])

    def _check_fvd_settings(self, segment_length: int) -> None:
        """Fail at start (not at the first evaluation) on FVD settings that cannot work."""
        from worldmodel.training.metrics import FVD, FVD_RECOMMENDED_VIDEOS

        ev = self.cfg["eval"]
        if ev["fvd_i3d"] and not ev["open_loop"]:
            self.print("note: eval.fvd_i3d is set but eval.open_loop=false: FVD needs imagined videos and is skipped")
        if not self._fvd_wanted():
            return
        try:
            FVD.check_frames(segment_length)
        except ValueError as e:
            raise WorldModelConfigError(str(e)) from None
        videos = int(ev["fvd_videos"])
        if videos < 2:
            raise WorldModelConfigError(f"eval.fvd_videos={videos}: FVD needs at least 2 videos per set "
                                        f"({FVD_RECOMMENDED_VIDEOS} or more to be meaningful).")
        if videos < FVD_RECOMMENDED_VIDEOS:
            self.print(f"warning: eval.fvd_videos={videos} is below {FVD_RECOMMENDED_VIDEOS}: FVD of 400-dim I3D "
                       "features over so few videos is biased upwards and noisy; compare it only with runs of "
                       "the same eval.fvd_videos")

    def _eval_tools(self) -> EvalTools:
        ev = self.cfg["eval"]
        from worldmodel.training.metrics import FVD, LPIPS

        device = self.accelerator.device
        tools = EvalTools(video_samples=ev["video_samples"], open_loop=ev["open_loop"], seed=self.cfg["seed"],
                          lpips=LPIPS(ev["lpips_weights"], device) if ev["lpips_weights"] else None)
        if self._fvd_wanted():  # nothing is loaded or drawn for FVD otherwise
            batch_size = ev["batch_size"] or self._batch()
            tools.fvd, tools.fvd_videos = FVD(ev["fvd_i3d"], device), int(ev["fvd_videos"])
            tools.fvd_batches = fvd_extra_batches(self.val_data, self.cfg["seed"], tools.fvd_videos, batch_size,
                                                  len(self.eval_data))
        return tools

    # ----- one stage -----
    def _optimizer(self, stage: Stage, steps: int):
        from transformers import get_scheduler

        o = self.cfg["optim"]
        lr = o["lr"] if o["lr"] is not None else self._model_lr(stage.name)
        params = [p for p in stage.parameters() if p.requires_grad]
        if not params:
            raise WorldModelConfigError(f"stage '{stage.name}' has nothing to train: every parameter is frozen.")
        opt = adamw(params, self.model, lr=lr, betas=o["betas"], eps=o["eps"], weight_decay=o["weight_decay"])
        kwargs = {"min_lr_rate": o["min_lr_ratio"]} if o["schedule"] in MIN_LR_SCHEDULES else {}
        sched = get_scheduler(o["schedule"], opt, num_warmup_steps=min(o["warmup_steps"], steps),
                              num_training_steps=steps, scheduler_specific_kwargs=kwargs)
        return opt, sched

    def _model_lr(self, part: str) -> float:
        """The peak lr of the model's own optimiser for ``part`` (its fine-tuning lr; each world
        model's config sets it). ``initial_lr``: a warm-up schedule has already scaled ``lr``."""
        if part not in self.model.optimizers:
            raise WorldModelConfigError(f"optim.lr=null takes the model's lr for stage '{part}', but the "
                                        f"model's optimisers are {sorted(self.model.optimizers)}: set optim.lr.")
        group = self.model.optimizers[part].param_groups[0]
        return float(group.get("initial_lr", group["lr"]))

    def _checkpoints(self, idx: int, name: str) -> list[Path]:
        root = self.out / "checkpoints" / f"{idx}-{name}"
        return sorted(root.glob("step-*")) if root.is_dir() else []

    def _train_stage(self, idx: int, name: str, segment_length: int, train_reward: bool) -> None:
        from accelerate.utils import set_seed
        from tqdm.auto import tqdm

        cfg, acc, model, state = self.cfg, self.accelerator, self.model, self.state
        steps, accum, batch_size = int(cfg["steps"][name]), int(cfg["grad_accum"]), self._batch()
        set_seed(cfg["seed"] + 1000 * (idx + 1), device_specific=True)  # this stage's random stream per rank
        stage = build_stage(model, name, train_reward=train_reward)
        opt, sched = self._optimizer(stage, steps)
        acc.free_memory()
        state.stage, state.step, state.skipped, state.scheduler = idx, 0, 0, sched
        state.sums, state.count = {}, 0
        self.tracker_offset = self._tracker_offset(idx)
        stage_p, opt_p = acc.prepare(stage, opt)
        ckpts = self._checkpoints(idx, name)
        if ckpts:
            acc.load_state(str(ckpts[-1]))
            self.print(f"resuming stage {name} at step {state.step} from {ckpts[-1]}")
        resumed_at = state.step
        logs = self.out / "logs"
        train_log = CsvLog(logs / f"{name}_train.csv", resume_step=resumed_at) if acc.is_main_process else None
        eval_log = CsvLog(logs / f"{name}_eval.csv", resume_step=resumed_at) if acc.is_main_process else None
        world = acc.num_processes
        frames_per_step = stage.frames_per_step(batch_size, segment_length) * accum * world
        tokens_per_step = stage.tokens_per_step(batch_size, segment_length) * accum * world
        loader = position_loader(self.train_data, cfg["seed"], idx, state.step * accum, acc.process_index,
                                 batch_size, loader_workers(cfg["data_loader"]["num_workers"]),
                                 pin_memory=acc.device.type == "cuda")
        batches = iter(loader)
        clip = cfg["optim"]["grad_clip"]
        clip = float(clip) if clip else math.inf
        log_every, eval_every, ckpt_every = cfg["log"]["every"], cfg["eval"]["every"], cfg["checkpoint"]["every"]
        bar = tqdm(total=steps, initial=state.step, desc=name, unit="step", dynamic_ncols=True,
                   disable=not (acc.is_main_process and cfg["log"]["progress_bar"]))
        sums = state.sums  # carried over from the checkpoint on a resume (TrainState)
        t_last, step_last = time.perf_counter(), state.step
        stage_p.train()
        while state.step < steps:
            for _ in range(accum):
                batch = next(batches).to(acc.device)
                if hasattr(stage, "global_step"):
                    stage.global_step = state.step
                with acc.accumulate(stage_p):
                    loss, metrics = stage_p(batch.obs, batch.action, batch.reward)
                    acc.backward(loss)
                    if acc.sync_gradients:
                        lr = sched.get_last_lr()[0]  # the rate this step applies (logged; sched.step moves on)
                        norm = acc.clip_grad_norm_(stage_p.parameters(), clip)
                        if acc.scaler is not None:  # fp16: the grad scaler skips a non-finite step and
                            opt_p.step()            # lowers its scale itself (it must see every step)
                            stepped = not opt_p.step_was_skipped
                        else:
                            stepped = bool(torch.isfinite(norm))  # synced grads: every rank decides alike
                            if stepped:
                                opt_p.step()
                        if stepped:
                            sched.step()
                        else:
                            state.skipped += 1
                        opt_p.zero_grad(set_to_none=True)
                for k, v in {"loss": loss.detach().float(), **metrics}.items():
                    sums[k] = sums.get(k, 0.0) + v.float()
                state.count += 1
            metrics_norm = norm.detach().float() if torch.is_tensor(norm) else torch.tensor(float(norm))
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + metrics_norm * accum
            state.step += 1
            bar.update(1)
            end = state.step == steps
            if state.step % log_every == 0 or end:
                keys = sorted(sums)
                # Metrics may live on the CPU (a python-float grad norm) or the GPU: gather on the device.
                means = acc.reduce(torch.stack([(sums[k] / state.count).to(acc.device) for k in keys]), "mean")
                now = time.perf_counter()
                rate = (state.step - step_last) / max(now - t_last, 1e-9)
                row = {"step": state.step, **{k: float(v) for k, v in zip(keys, means)},
                       "lr": lr, "skipped": state.skipped, "steps_per_s": rate,
                       "frames_per_s": rate * frames_per_step}
                if tokens_per_step:
                    row["tokens_per_s"] = rate * tokens_per_step
                if acc.is_main_process:
                    train_log.write(row)
                    acc.log({f"{name}/train/{k}": v for k, v in row.items() if k != "step"},
                            step=self.tracker_offset + state.step)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", fps=f"{row['frames_per_s']:.0f}")
                sums = state.sums = {}
                state.count, t_last, step_last = 0, now, state.step
            if self.eval_data and (state.step % eval_every == 0 or end):
                self._evaluate(name, eval_log)
                stage_p.train()
            if not end and ckpt_every and state.step % ckpt_every == 0:
                self._save_checkpoint(idx, name)
        bar.close()
        self._finish_stage(idx, name, stage, stage_p, steps)

    def _evaluate(self, name: str, eval_log: CsvLog | None) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            with isolated_rng(self.tools.seed):
                t0 = time.perf_counter()
                metrics, video = evaluate(self.model, name, self.eval_data, self.tools)
                metrics["eval_seconds"] = time.perf_counter() - t0
            eval_log.write({"step": self.state.step, **metrics})
            acc.log({f"{name}/eval/{k}": v for k, v in metrics.items()}, step=self.tracker_offset + self.state.step)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "eval_seconds")
            self.print(f"eval {name} step {self.state.step}: {shown}")
            if video is not None:
                self._write_video(self.out / "videos" / f"{name}_step{self.state.step:08d}.mp4", video)
        acc.wait_for_everyone()

    def _write_video(self, path: Path, video: torch.Tensor) -> None:
        import imageio.v2 as imageio

        scale = int(self.cfg["eval"]["video_scale"])
        frames = video.repeat_interleave(scale, -1).repeat_interleave(scale, -2).permute(0, 2, 3, 1).numpy()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}")
        imageio.mimwrite(tmp, list(frames), fps=VIDEO_FPS, macro_block_size=1)
        os.replace(tmp, path)

    def _save_checkpoint(self, idx: int, name: str) -> None:
        """accelerate ``save_state`` into a temp dir, renamed into place once every rank is done."""
        acc = self.accelerator
        root = self.out / "checkpoints" / f"{idx}-{name}"
        final, tmp = root / f"step-{self.state.step:08d}", root / f".tmp-step-{self.state.step:08d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            _write_json(tmp / "meta.json", {"stage": name, "stage_index": idx, "step": self.state.step})
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in self._checkpoints(idx, name)[:-max(1, int(self.cfg["checkpoint"]["keep"]))]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def _finish_stage(self, idx: int, name: str, stage: Stage, stage_p: torch.nn.Module, steps: int) -> None:
        """Check the ranks agree, write the whole model to stages/<i>-<name>, drop the stage's checkpoints."""
        from accelerate.utils import DistributedType

        acc = self.accelerator
        sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        if not sharded:
            digest = weights_digest(stage)
            print(f"[pretrain] rank {acc.process_index}/{acc.num_processes} stage {name} weights sha256 {digest}",
                  flush=True)
            if acc.num_processes > 1:
                mine = torch.tensor([int(digest[:15], 16)], device=acc.device)
                if not bool((acc.gather(mine) == mine).all()):
                    raise RuntimeError(f"stage {name}: the ranks' weights differ after training.")
        part_state = acc.get_state_dict(stage_p)  # full weights of the trained part (gathered if sharded)
        if acc.is_main_process:
            state = dict(self.model.state_dict())
            state.update({k: v for k, v in part_state.items() if k in state})
            stage_dir = self.out / "stages" / f"{idx}-{name}"
            write_pretrained(stage_dir, self.model, state)
            _write_json(stage_dir / STAGE_DONE_NAME, {"stage": name, "steps": steps, "skipped": self.state.skipped})
            shutil.rmtree(self.out / "checkpoints" / f"{idx}-{name}", ignore_errors=True)
            self.print(f"stage {name} done: {stage_dir}")
        acc.wait_for_everyone()
