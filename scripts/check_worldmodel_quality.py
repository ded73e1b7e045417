"""Does a small iVideoGPT learn real dynamics? Train it briefly on Meta-World and compare with baselines.

    python scripts/check_worldmodel_quality.py                       # tiny sizes, ~32 CPU minutes (collection included)
    python scripts/check_worldmodel_quality.py --policy random --train-minutes 10 --episodes 40

Episodes of the scripted Meta-World expert with action noise (``--policy random``: uniform
random actions) are collected as demonstrations are, with ``mbrl.envs.make_env`` (64x64 corner
camera, action repeat 2, as in MBPO); the held-out episodes come from env seeds disjoint from the
training ones (``episode_seeds``). The model trains for a fixed wall-clock budget (or exactly
``--train-steps`` updates) on segments of ``context + horizon`` frames: the tokenizer alone for the
first 65%, then the transformer on the frozen tokenizer's codes (a tokenizer still changing under
it costs the transformer accuracy, and tokenizer updates cost more). Each part's learning rate
decays over the span it trains in. It then imagines ``horizon`` steps open loop from held-out real
context frames, driven by the real actions (``open_loop``). Reported (``evaluation_set``, ``score``):

* PSNR of the imagined frames vs. the real ones, against the copy-last-context-frame baseline;
* reward MSE of the imagined rewards vs. the real ones, against predicting the training mean.

PSNR is per frame with a peak of 255 (``worldmodel.training.metrics.psnr``), averaged over all
imagined frames of all windows. The judged rollouts are greedy (``--eval-temperature 0``): PSNR
scores a point prediction, and the most likely frames are the model's. Rollouts sampled as MBPO
samples them are printed too. ``--data`` keeps the collected episodes, with the settings that
collected them, in an .npz. The last line is a one-line summary. Exit status: 0 when the model
beats both baselines, 2 when it loses to either, 1 on any error (bad arguments included).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import NamedTuple, NoReturn

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from worldmodel.atomic_file import atomic_write  # noqa: E402
from worldmodel.interface import SegmentBatch, WorldModel, WorldModelConfigError  # noqa: E402
from worldmodel.ivideogpt import official  # noqa: E402
from worldmodel.ivideogpt.model import IVideoGPT  # noqa: E402
from worldmodel.registry import model_directory, pretrained_model_type  # noqa: E402
from worldmodel.training.metrics import psnr  # noqa: E402

PIXEL_MAX = 255.0
LR_FLOOR = 0.05  # the cosine schedule ends at this fraction of --lr
EVAL_SEED_OFFSET = 10_000  # held-out episodes start at env seed --seed + this (or after the training ones)
LOST_BASELINE = 2  # exit status when the model does not beat both baselines (1: an error)
# --data: the settings that collected the episodes, stored with them; all but the seed must match the
# arguments (--seed also seeds the training, and one episode set may serve several training seeds)
DATA_SETTINGS = ("task", "policy", "noise", "episodes", "eval_episodes", "episode_length", "image_size", "seed")
UNCHECKED_DATA_SETTINGS = ("seed",)

Episode = tuple[np.ndarray, np.ndarray, np.ndarray]  # frames uint8 [T+1, 3, H, W], actions [T, A], rewards [T]
Episodes = list[Episode]


class Split(NamedTuple):
    """Training episodes and held-out episodes (collected from disjoint env seeds)."""
    train: Episodes
    held_out: Episodes


class EvalSet(NamedTuple):
    """What a model's open-loop rollouts are judged against (``evaluation_set``)."""
    windows: SegmentBatch  # held-out windows: obs [N, T0 + k, 3, H, W], action [N, T0 + k - 1, A], reward
    context: int  # T0: real context frames
    real_frames: torch.Tensor  # [N, k, 3, H, W]: o_{T0} .., produced by a_{T0-1} ..
    real_rewards: torch.Tensor  # [N, k]: r for (o_{T0-1+i}, a_{T0-1+i})
    copy_last: torch.Tensor  # [N, k, 3, H, W]: the copy-last baseline, the last context frame held
    train_mean: float  # the mean-reward baseline: the training episodes' mean reward


class _Parser(argparse.ArgumentParser):
    """Usage errors exit with status 1, as every other error: status 2 means a lost baseline."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        sys.exit(f"{self.prog}: error: {message}")


def size_problems(episodes: int, eval_episodes: int, episode_length: int, context: int, horizon: int,
                  train_steps: int | None = None) -> list[str]:
    """What is wrong with these episode counts and sizes (an episode of N steps has N + 1 frames, so
    a window of context + horizon frames needs N >= context + horizon - 1) and update budget."""
    problems = [f"{flag} must be >= 1; got {value}" for flag, value in (
        ("--episodes", episodes), ("--eval-episodes", eval_episodes), ("--context", context),
        ("--horizon", horizon)) if value < 1]
    if train_steps is not None and train_steps < 0:
        problems.append(f"--train-steps must be >= 0; got {train_steps}")
    if episode_length < context + horizon - 1:
        problems.append(f"--episode-length {episode_length} steps is too short for a window of --context "
                        f"{context} + --horizon {horizon} frames: it needs at least {context + horizon - 1} steps")
    return problems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="plate-slide-v3", help="Meta-World v3 task")
    p.add_argument("--policy", default="expert", choices=["expert", "random"],
                   help="who acts in the collected episodes: the scripted expert (with --noise) or "
                        "uniform random actions")
    p.add_argument("--noise", type=float, default=0.3, help="std of the Gaussian noise on the expert's actions")
    p.add_argument("--episodes", type=int, default=200, help="training episodes (about 0.4 s each to collect)")
    p.add_argument("--eval-episodes", type=int, default=4, help="held-out episodes for the evaluation")
    p.add_argument("--episode-length", type=int, default=60, help="agent steps per episode")
    p.add_argument("--image-size", type=int, default=64, help="frame size rendered by the env")
    p.add_argument("--context", type=int, default=2, help="context frames")
    p.add_argument("--horizon", type=int, default=10, help="imagined steps (open loop)")
    p.add_argument("--batch", type=int, default=4, help="segments per update")
    p.add_argument("--tokenizer-frames", type=int, default=3,
                   help="future frames per segment the tokenizer trains on (its cost grows with them)")
    p.add_argument("--tokenizer-every", type=int, default=0,
                   help="one tokenizer update every N transformer updates after the tokenizer's share "
                        "(0: the tokenizer is frozen after it, so the transformer learns fixed codes)")
    p.add_argument("--train-minutes", type=float, default=30.0, help="wall-clock training budget")
    p.add_argument("--train-steps", type=int, default=None,
                   help="a fixed number of updates instead of the wall-clock budget (0: none; the tokenizer "
                        "warm-up is then --tokenizer-share of the steps)")
    p.add_argument("--codebook-size", type=int, default=512,
                   help="codes in each of the tiny tokenizer's two codebooks (its preset has 64: the "
                        "context codes' detail caps the reconstruction, and 512 gained ~0.6 dB here)")
    p.add_argument("--tokenizer-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="tokenizer config overrides, values in JSON (e.g. max_att_resolution=32)")
    p.add_argument("--tokenizer-share", type=float, default=0.65,
                   help="fraction of the budget spent on the tokenizer alone first (its reconstruction "
                        "caps the rollout's PSNR: 0.65 beat 0.5 by 0.4-0.5 dB on three seeds; 0.8 leaves the "
                        "transformer too few updates for sampled rollouts)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", default="cosine", choices=["cosine", "constant"],
                   help="cosine: each part's learning rate decays over the budget it trains in")
    p.add_argument("--eval-temperature", type=float, default=0.0,
                   help="sampling temperature of the judged rollouts (0: greedy, the most likely "
                        "frames: PSNR scores a point prediction); sampled rollouts are printed too")
    p.add_argument("--save", default=None, help="save_pretrained the trained model into this folder")
    p.add_argument("--load", default=None,
                   help="evaluate this saved iVideoGPT (a save_pretrained folder, a scripts/pretrain.py output "
                        "folder or an official download) instead of training one")
    p.add_argument("--transformer", default="tiny")
    p.add_argument("--tokenizer", default="tiny")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda (the check is meant for a CPU)")
    p.add_argument("--data", default=None,
                   help="an .npz of collected episodes: loaded if it exists (its stored collection settings "
                        "must match the arguments), else written after collecting (to train elsewhere, e.g. "
                        "on a GPU machine without simulators)")
    args = p.parse_args(argv)
    problems = size_problems(args.episodes, args.eval_episodes, args.episode_length, args.context, args.horizon,
                             args.train_steps)
    if problems:
        p.error("; ".join(problems) + ".")
    return args


def collect(task: str, episodes: int, length: int, seed: int, image_size: int, policy: str = "random",
            noise: float = 0.0) -> Episodes:
    """Episodes of the scripted expert (with action noise) or of random actions, collected as
    demonstrations are (``mbrl.demos.collect``) from env seeds ``seed`` .. ``seed + episodes - 1``:
    (frames uint8 [T+1, 3, H, W], actions [T, A], rewards [T])."""
    from omegaconf import OmegaConf

    from mbrl.demos.collect import make_policy, run_episode
    from mbrl.envs import make_env

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = OmegaConf.load(os.path.join(root, "cfgs", "suite", "metaworld.yaml"))
    cfg.name, cfg.episode_length, cfg.image_size = task, length, image_size
    env = make_env(cfg, seed=seed)
    actor = make_policy({"suite": "metaworld", "name": task}, policy)
    out = []
    for ep in range(episodes):
        e = run_episode(env, actor, seed=seed + ep, noise=noise)
        out.append((e.obs, e.action, e.reward.astype(np.float32)))
    env.close()
    return out


def episode_seeds(seed: int, episodes: int, eval_episodes: int) -> tuple[range, range]:
    """Env seeds of the training and of the held-out episodes: disjoint, the held-out ones from
    ``seed + EVAL_SEED_OFFSET`` (or right after the training ones when there are more)."""
    held_out = seed + max(EVAL_SEED_OFFSET, episodes)
    return range(seed, seed + episodes), range(held_out, held_out + eval_episodes)


def collect_split(task: str, episodes: int, eval_episodes: int, length: int, seed: int, image_size: int,
                  policy: str = "random", noise: float = 0.0) -> Split:
    """Training and held-out episodes from disjoint env seeds (``episode_seeds``)."""
    train, held_out = episode_seeds(seed, episodes, eval_episodes)
    return Split(collect(task, len(train), length, train.start, image_size, policy, noise),
                 collect(task, len(held_out), length, held_out.start, image_size, policy, noise))


def data_settings(args: argparse.Namespace) -> dict:
    """The arguments that decide which episodes are collected (stored with them by ``--data``)."""
    return {key: getattr(args, key) for key in DATA_SETTINGS}


def save_episodes(path: str, split: Split, settings: dict) -> None:
    """Both episode lists and the settings that collected them (JSON) in one compressed .npz,
    written atomically."""
    arrays = {"settings": np.array(json.dumps(settings))}
    for name, eps in (("train", split.train), ("eval", split.held_out)):
        for i, (f, a, r) in enumerate(eps):
            arrays.update({f"{name}_{i}_frames": f, f"{name}_{i}_actions": a, f"{name}_{i}_rewards": r})
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def load_episodes(path: str) -> tuple[Split, dict | None]:
    """``save_episodes``'s split and settings (None: a file written before settings were stored)."""
    with np.load(path) as z:
        def split(name: str) -> Episodes:
            n = len([k for k in z.files if k.startswith(f"{name}_") and k.endswith("_frames")])
            return [(z[f"{name}_{i}_frames"], z[f"{name}_{i}_actions"], z[f"{name}_{i}_rewards"])
                    for i in range(n)]
        settings = json.loads(str(z["settings"])) if "settings" in z.files else None
        return Split(split("train"), split("eval")), settings


def load_data(path: str, wanted: dict, context: int, horizon: int) -> tuple[Split, dict | None]:
    """``load_episodes``, refused (sys.exit) when the stored collection settings differ from
    ``wanted`` (the seed aside) or the episodes cannot make a window; a file without settings is
    used with a warning."""
    split, stored = load_episodes(path)
    if stored is None:
        print(f"WARNING: {path} does not record the settings that collected it (written by an older version): "
              f"its task, policy, sizes and seed are unknown; using it as it is.", file=sys.stderr)
    else:
        differ = [f"--{key.replace('_', '-')} {stored.get(key)} (arguments: {wanted[key]})" for key in DATA_SETTINGS
                  if key not in UNCHECKED_DATA_SETTINGS and stored.get(key) != wanted[key]]
        if differ:
            sys.exit(f"{path} was collected with other settings: {'; '.join(differ)}. Pass the same arguments, "
                     f"or another --data path to collect anew.")
    steps = min((len(a) for _, a, _ in split.train + split.held_out), default=0)
    problems = size_problems(len(split.train), len(split.held_out), steps, context, horizon)
    if problems:
        sys.exit(f"{path} cannot serve this check ({len(split.train)} + {len(split.held_out)} episodes, the "
                 f"shortest {steps} steps): " + "; ".join(problems) + ".")
    return split, stored


def segment_batch(cuts: list[tuple[Episode, int]], length: int) -> SegmentBatch:
    """The segments of ``length`` frames (and the ``length - 1`` actions and rewards between) that
    start at each (episode, start step) of ``cuts``."""
    obs = np.stack([f[s:s + length] for (f, _, _), s in cuts])
    act = np.stack([a[s:s + length - 1] for (_, a, _), s in cuts])
    rew = np.stack([r[s:s + length - 1] for (_, _, r), s in cuts])
    return SegmentBatch(torch.from_numpy(obs), torch.from_numpy(act), torch.from_numpy(rew))


def sample_segments(episodes: Episodes, batch: int, length: int, rng: np.random.Generator) -> SegmentBatch:
    """``batch`` random segments of ``length`` frames."""
    cuts = []
    for _ in range(batch):
        episode = episodes[rng.integers(len(episodes))]
        cuts.append((episode, rng.integers(0, len(episode[1]) - length + 2)))
    return segment_batch(cuts, length)


def eval_windows(episodes: Episodes, context: int, horizon: int) -> SegmentBatch:
    """Windows of context + horizon frames of the episodes, starting every ``horizon`` steps: their
    imagined frames do not overlap, while a window's context frames are the previous window's last
    frames."""
    length = context + horizon
    return segment_batch([(episode, s) for episode in episodes
                          for s in range(0, len(episode[1]) - length + 2, horizon)], length)


def evaluation_set(split: Split, context: int, horizon: int) -> EvalSet:
    """The held-out windows, their real future frames and rewards, and both baselines: the last
    context frame held (copy-last) and the training episodes' mean reward."""
    w = eval_windows(split.held_out, context, horizon)
    real_frames = w.obs[:, context:]
    train_mean = float(np.concatenate([r for _, _, r in split.train]).mean())
    return EvalSet(w, context, real_frames, w.reward[:, context - 1:],
                   w.obs[:, context - 1:context].expand_as(real_frames), train_mean)


def score(frames: torch.Tensor, rewards: torch.Tensor, ev: EvalSet) -> tuple[torch.Tensor, float]:
    """Predicted frames uint8 [N, k, 3, H, W] and rewards [N, k] -> (PSNR per imagined step [k]: per-frame
    PSNR, peak 255, averaged over the windows; reward MSE)."""
    return psnr(ev.real_frames, frames.cpu()).mean(0), ((rewards.cpu().float() - ev.real_rewards) ** 2).mean().item()


def baseline_scores(ev: EvalSet) -> tuple[torch.Tensor, float]:
    """``score`` of the baselines: copy-last's PSNR per step, and the training mean's reward MSE."""
    return score(ev.copy_last, torch.full_like(ev.real_rewards, ev.train_mean), ev)


@torch.no_grad()
def open_loop(model: WorldModel, windows: SegmentBatch, context: int, horizon: int, seed: int,
              temperature: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Imagine ``horizon`` frames from the first ``context`` (T0) frames of each window, driven by its real
    actions: step i takes a_{T0-1+i} (``windows.action[:, T0 - 1 + i]``), the action taken in the latest
    frame so far, o_{T0-1+i}, and imagines o_{T0+i}. Returns (frames uint8 [N, k, 3, H, W], rewards [N, k]).
    ``temperature``: iVideoGPT's sampling temperature for these rollouts (<= 0: greedy; None: the model's
    own); models without one (Vid2World: DDIM from seeded noise) ignore it."""
    model.eval()
    sampling = getattr(model, "sampling", None)
    default = sampling.get("temperature") if isinstance(sampling, dict) else None
    if temperature is not None and default is not None:
        sampling["temperature"] = temperature
    try:
        state = model.reset(windows.obs[:, :context], torch.Generator(device=model.device).manual_seed(seed))
        frames, rewards = [], []
        for i in range(horizon):
            f, r, state = model.step(state, windows.action[:, context - 1 + i])
            frames.append(f.cpu())
            rewards.append(r.cpu())
    finally:
        if default is not None:
            sampling["temperature"] = default
    return torch.stack(frames, 1), torch.stack(rewards, 1)


def decoding(model: WorldModel, temperature: float | None) -> str:
    """How ``open_loop`` with this temperature decodes the model's frames, in words."""
    sampling = getattr(model, "sampling", None)
    if not isinstance(sampling, dict) or "temperature" not in sampling:
        return "its own seeded sampling (no temperature)"
    t = sampling["temperature"] if temperature is None else temperature
    return "greedy" if t <= 0 else f"sampled at temperature {t:g}, top-k {sampling.get('top_k')}"


def training_progress(step: int, elapsed_s: float, train_steps: int | None, train_minutes: float) -> float:
    """Fraction of the training budget spent: ``train_steps`` updates when given (0: none), else
    ``train_minutes`` of wall clock."""
    if train_steps is not None:
        return step / train_steps if train_steps > 0 else 1.0
    budget = train_minutes * 60
    return elapsed_s / budget if budget > 0 else 1.0


def resolve_load(path: str) -> str:
    """The checkpoint folder ``--load`` names (a save_pretrained folder, a scripts/pretrain.py output
    folder or an official thuml/iVideoGPT download); exits unless it holds an iVideoGPT."""
    directory = model_directory(path)
    try:
        kind = pretrained_model_type(directory)
    except WorldModelConfigError as e:
        sys.exit(f"--load {path}: {e}")
    if kind != "ivideogpt":
        sys.exit(f"--load {path} holds a {kind} model; this check trains and evaluates iVideoGPT only.")
    return directory


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_dir = resolve_load(args.load) if args.load else None  # before collecting: a wrong model fails fast
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    length = args.context + args.horizon

    t0 = time.time()
    task = args.task
    if args.data and os.path.exists(args.data):
        split, stored = load_data(args.data, data_settings(args), args.context, args.horizon)
        if stored is None:
            task = f"{args.task}? (settings of {args.data} unknown)"
            source = f"loaded from {args.data} (collection settings unknown)"
        else:
            source = f"loaded from {args.data} (collected from {stored['task']}, seed {stored['seed']})"
    else:
        split = collect_split(args.task, args.episodes, args.eval_episodes, args.episode_length, args.seed,
                              args.image_size, args.policy, args.noise)
        if args.data:
            save_episodes(args.data, split, data_settings(args))
        source = f"collected from {args.task}"
    train_eps = split.train
    n_frames = sum(len(a) for _, a, _ in train_eps)
    print(f"{len(train_eps)} + {len(split.held_out)} episodes {source} ({n_frames} training transitions) "
          f"in {time.time() - t0:.0f}s")

    image_size = train_eps[0][0].shape[-1]
    action_dim = train_eps[0][1].shape[-1]
    # Cross-attention on the 16x16 (64 px) or 8x8 (32 px) latent maps and below.
    tokenizer = {"size": args.tokenizer, "max_att_resolution": image_size // 4,
                 "context_vocab_size": args.codebook_size, "future_vocab_size": args.codebook_size}
    for item in args.tokenizer_set:
        key, _, value = item.partition("=")
        tokenizer[key] = json.loads(value)
    if load_dir:  # evaluate a saved model (ours or an official one) without training
        # an official download is imported for the data's actions: an action-free one gets a zero
        # action head (reported), so it imagines as the checkpoint does (no action conditioning)
        extra = {"action_dim": action_dim} if official.looks_official(load_dir) else {}
        model = IVideoGPT.from_pretrained(load_dir, **extra).to(args.device)
        have = (model.image_size, model.action_dim, model.context_frames)
        if have != (image_size, action_dim, args.context) or model.max_future_frames < args.horizon:
            sys.exit(f"{args.load} has image size, action dim, context frames {have} and max_future_frames "
                     f"{model.max_future_frames}; this check needs {(image_size, action_dim, args.context)} "
                     f"and at least --horizon {args.horizon}.")
    else:
        model = IVideoGPT(image_size=image_size, action_dim=action_dim, context_frames=args.context,
                          tokenizer=tokenizer, transformer=args.transformer, max_future_frames=args.horizon,
                          training={"lr": args.lr, "tokenizer_future_frames": args.tokenizer_frames}
                          ).to(args.device)
    t0 = time.time()
    step, last = 0, {}

    def progress() -> float:  # fraction of the training budget spent
        if load_dir:
            return 1.0
        return training_progress(step, time.time() - t0, args.train_steps, args.train_minutes)

    def set_lr(part: str, start: float, end: float = 1.0) -> None:
        """Cosine decay of a part's learning rate over the span of the budget it trains in."""
        if args.lr_schedule == "cosine" and part in model.optimizers:
            frac = min(max((progress() - start) / max(end - start, 1e-9), 0.0), 1.0)
            for group in model.optimizers[part].param_groups:
                group["lr"] = args.lr * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * frac)))

    while progress() < 1:
        set_lr("tokenizer", 0.0, args.tokenizer_share if args.tokenizer_every == 0 else 1.0)
        set_lr("transformer", args.tokenizer_share)
        tokenizer_phase = progress() < args.tokenizer_share
        if tokenizer_phase:
            parts = ("tokenizer",)
        elif args.tokenizer_every and step % args.tokenizer_every == 0:
            parts = ("tokenizer", "transformer")
        else:
            parts = ("transformer",)
        last.update(model.update(sample_segments(train_eps, args.batch, length, rng), parts=parts))
        step += 1
        if step % 25 == 0:
            print(f"step {step:4d} {time.time() - t0:5.0f}s  rec {last.get('tokenizer/rec_loss', float('nan')):.4f}  "
                  f"token_ce {last.get('transformer/token_ce', float('nan')):.3f}  "
                  f"acc {last.get('transformer/token_accuracy', float('nan')):.3f}  "
                  f"reward_mse {last.get('transformer/reward_mse', float('nan')):.4f}", flush=True)
    print(f"trained {step} steps in {time.time() - t0:.0f}s ({model.counters})")

    # ----- open-loop evaluation on held-out episodes: windows of context + horizon frames
    ev = evaluation_set(split, args.context, args.horizon)
    obs, T0 = ev.windows.obs, args.context
    if args.save:
        model.save_pretrained(args.save)
        print(f"saved the trained model to {args.save}")
    sampled = open_loop(model, ev.windows, T0, args.horizon, args.seed)
    pred_frames, pred_rew = open_loop(model, ev.windows, T0, args.horizon, args.seed, args.eval_temperature)
    sampled_psnr, sampled_rmse = score(*sampled, ev)
    sampled_psnr = sampled_psnr.mean().item()

    model_per_step, model_rmse = score(pred_frames, pred_rew, ev)  # [k], float
    copy_per_step, mean_rmse = baseline_scores(ev)
    model_psnr, copy_psnr = model_per_step.mean().item(), copy_per_step.mean().item()
    with torch.no_grad():  # the tokenizer's own ceiling: reconstruct the real future frames
        unit = obs.to(args.device).float() / (PIXEL_MAX / 2) - 1
        ctx_codes, cache = model.tokenizer.encode_context(unit[:, :T0])
        recon = model.tokenizer.decode_future(model.tokenizer.encode_future(unit[:, T0:], cache), cache)
        recon = ((recon.clamp(-1, 1) + 1) * (PIXEL_MAX / 2)).round().to(torch.uint8).cpu()
        ctx_recon = model.tokenizer.decode_context(ctx_codes)
        ctx_recon = ((ctx_recon.clamp(-1, 1) + 1) * (PIXEL_MAX / 2)).round().to(torch.uint8).cpu()
    recon_psnr = psnr(ev.real_frames, recon).mean().item()
    ctx_recon_psnr = psnr(obs[:, :T0], ctx_recon).mean().item()

    print(f"\nopen loop, {obs.shape[0]} held-out windows, {args.horizon} steps from {T0} real frames "
          f"(PSNR: per frame, peak 255, averaged over the imagined frames):")
    print(f"{'':<28}{'model':>10}{'baseline':>10}")
    print(f"{'PSNR dB (copy last frame)':<28}{model_psnr:>10.2f}{copy_psnr:>10.2f}   tokenizer recon: "
          f"future {recon_psnr:.2f}, context {ctx_recon_psnr:.2f}")
    print(f"{'reward MSE (train mean)':<28}{model_rmse:>10.4f}{mean_rmse:>10.4f}")
    print("PSNR per imagined step, model / copy-last: " + ", ".join(
        f"{i + 1}: {m:.1f}/{c:.1f}" for i, (m, c) in enumerate(zip(model_per_step.tolist(), copy_per_step.tolist()))))
    print(f"(sampled as in MBPO, temperature {model.sampling['temperature']}, top-k {model.sampling['top_k']}: "
          f"PSNR {sampled_psnr:.2f} dB, reward MSE {sampled_rmse:.4f})")
    beats = (model_psnr > copy_psnr, model_rmse < mean_rmse)
    which = f"loaded from {args.load}" if load_dir else f"{args.transformer}/{args.tokenizer} after {step} steps"
    print(f"SUMMARY {task} {which} ({decoding(model, args.eval_temperature)}): "
          f"PSNR {model_psnr:.2f} vs "
          f"copy-last {copy_psnr:.2f} dB ({'beats' if beats[0] else 'LOSES'}), reward MSE {model_rmse:.4f} vs "
          f"mean {mean_rmse:.4f} ({'beats' if beats[1] else 'LOSES'})")
    sys.exit(0 if all(beats) else LOST_BASELINE)


if __name__ == "__main__":
    main()
