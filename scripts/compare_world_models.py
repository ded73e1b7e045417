"""Vid2World vs. iVideoGPT on the same Meta-World data, through the world-model interface only.

    OMP_NUM_THREADS=1 python scripts/compare_world_models.py --image-size 32 --train-minutes 4
    python scripts/compare_world_models.py --models ivideogpt vid2world --episodes 12 --batch 4

Random-action episodes are collected once (``check_worldmodel_quality.collect_split``: training and
held-out episodes from disjoint env seeds) and every model trains on segments of ``context + horizon``
frames drawn from them with the same seed, for the same wall-clock budget (or exactly
``--train-steps`` updates, for a reproducible run), calling ``update(batch)`` with all its parts.
Each model is then evaluated on the same held-out windows, open loop (``reset`` + ``step`` driven by
the real actions), scored as ``check_worldmodel_quality.py`` scores (``evaluation_set``, ``score``):

* PSNR of the imagined frames vs. the real ones, against the copy-last-context-frame baseline (per
  frame, peak 255, averaged over all imagined frames of all windows);
* reward MSE of the imagined rewards vs. the real ones, against predicting the training mean;
* imagined transitions/s of ``rollout`` (B = ``--rollout-batch``, k = horizon, random policy);
* parameter counts (iVideoGPT's transformer is widened to 4 layers x 128 by default so that both
  models hold ~1.6M parameters at 32 px: tiny tokenizer + transformer vs. tiny U-Net + reward head).

The judged iVideoGPT rollouts are greedy by default (``--eval-temperature 0``, as in the quality
check; MBPO samples at temperature 1, top-k 100); Vid2World's are DDIM from seeded noise, which no
temperature changes. A table is printed, with the decoding used; the last line is a one-line summary.
``main(argv)`` returns the numbers.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(SCRIPTS))

from worldmodel.interface import WorldModel  # noqa: E402
from worldmodel.registry import WORLD_MODELS, world_model_class  # noqa: E402


def _load_quality_helpers():
    """``scripts/check_worldmodel_quality.py`` (collection, segments, evaluation, scores), imported by
    path: scripts/ is not a package."""
    path = os.path.join(SCRIPTS, "check_worldmodel_quality.py")
    spec = importlib.util.spec_from_file_location("check_worldmodel_quality", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


quality = _load_quality_helpers()
collect_split, sample_segments = quality.collect_split, quality.sample_segments
evaluation_set, score, baseline_scores, open_loop = (quality.evaluation_set, quality.score, quality.baseline_scores,
                                                     quality.open_loop)

TIMING_REPEATS = 2  # timed rollouts per model; the median is reported
HEAD_DIM, MLP_RATIO = 16, 4  # iVideoGPT transformer heads = width / HEAD_DIM, MLP = MLP_RATIO x width (as tiny)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="plate-slide-v3", help="Meta-World v3 task")
    p.add_argument("--models", nargs="+", default=["ivideogpt", "vid2world"], choices=sorted(WORLD_MODELS))
    p.add_argument("--episodes", type=int, default=10, help="training episodes of random actions")
    p.add_argument("--eval-episodes", type=int, default=2, help="held-out episodes for the evaluation")
    p.add_argument("--episode-length", type=int, default=60, help="agent steps per episode")
    p.add_argument("--image-size", type=int, default=32, help="frame size rendered by the env")
    p.add_argument("--context", type=int, default=2, help="real context frames")
    p.add_argument("--horizon", type=int, default=10, help="imagined steps (open loop)")
    p.add_argument("--batch", type=int, default=4, help="segments per update")
    p.add_argument("--rollout-batch", type=int, default=8, help="B of the timed rollout")
    p.add_argument("--train-minutes", type=float, default=4.0, help="wall-clock training budget per model")
    p.add_argument("--train-steps", type=int, default=None,
                   help="exactly this many updates per model instead of the wall-clock budget (reproducible)")
    p.add_argument("--eval-temperature", type=float, default=0.0,
                   help="iVideoGPT's sampling temperature in the judged rollouts (0: greedy, the most likely "
                        "frames: PSNR scores a point prediction); Vid2World has none")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of every part of every model")
    p.add_argument("--size", default="tiny", help="size preset of both models")
    p.add_argument("--ivideogpt-layers", type=int, default=4,
                   help="iVideoGPT transformer layers (tiny has 2; 4 x 128 matches Vid2World tiny's size)")
    p.add_argument("--ivideogpt-hidden", type=int, default=128, help="iVideoGPT transformer width (tiny: 64)")
    p.add_argument("--sampling-steps", type=int, default=4, help="Vid2World DDIM steps per frame")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    problems = quality.size_problems(args.episodes, args.eval_episodes, args.episode_length, args.context,
                                     args.horizon, args.train_steps)
    if problems:
        p.error("; ".join(problems) + ".")
    return args


def model_config(name: str, args: argparse.Namespace, image_size: int, action_dim: int) -> dict[str, Any]:
    """Tiny configs of the real models, as ``check_worldmodel_quality.py`` builds iVideoGPT."""
    common = {"image_size": image_size, "action_dim": action_dim, "context_frames": args.context}
    if name == "ivideogpt":
        # cross-attention on the 8x8 (32 px) latent maps and below
        return {**common, "tokenizer": {"size": args.size, "max_att_resolution": image_size // 4},
                "transformer": {"size": args.size, "num_hidden_layers": args.ivideogpt_layers,
                                "hidden_size": args.ivideogpt_hidden,
                                "num_attention_heads": args.ivideogpt_hidden // HEAD_DIM,
                                "num_key_value_heads": args.ivideogpt_hidden // HEAD_DIM,
                                "intermediate_size": MLP_RATIO * args.ivideogpt_hidden},
                "max_future_frames": args.horizon,
                "training": {"lr": args.lr}}
    if name == "vid2world":
        return {**common, "size": args.size, "sampling_steps": args.sampling_steps,
                "lr": args.lr, "reward_lr": args.lr}
    raise ValueError(f"no comparison config for world model '{name}'.")


def train(model: WorldModel, episodes: quality.Episodes, args: argparse.Namespace, rng: np.random.Generator) -> int:
    """``update`` (all parts) on fresh segments until the budget (``--train-steps`` updates, else
    ``--train-minutes``) is spent; returns the step count."""
    length = args.context + args.horizon
    start, steps = time.time(), 0
    while quality.training_progress(steps, time.time() - start, args.train_steps, args.train_minutes) < 1:
        model.update(sample_segments(episodes, args.batch, length, rng))
        steps += 1
    return steps


def rollout_rate(model: WorldModel, context_obs: torch.Tensor, horizon: int, seed: int) -> float:
    """Imagined transitions/s of ``rollout`` with a uniform random policy (median of repeats)."""
    B, gen = context_obs.shape[0], torch.Generator().manual_seed(seed)

    def policy(frames: torch.Tensor) -> torch.Tensor:  # [B, t, 3, H, W] -> [B, A]
        return torch.rand(B, model.action_dim, generator=gen) * 2 - 1

    model.rollout(context_obs, policy, 1, generator=torch.Generator().manual_seed(seed))  # warm-up
    times = []
    for _ in range(TIMING_REPEATS):
        start = time.perf_counter()
        model.rollout(context_obs, policy, horizon, generator=torch.Generator().manual_seed(seed))
        times.append(time.perf_counter() - start)
    return B * horizon / statistics.median(times)


def compare(name: str, train_eps: quality.Episodes, ev: quality.EvalSet,
            args: argparse.Namespace) -> dict[str, float]:
    """Build, train and evaluate one world model; all numbers of its table row."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)  # the same segment stream for every model
    image_size, action_dim = train_eps[0][0].shape[-1], train_eps[0][1].shape[-1]
    model = world_model_class(name).from_config(model_config(name, args, image_size, action_dim))
    params = sum(p.numel() for p in model.parameters())
    start = time.time()
    steps = train(model, train_eps, args, rng)
    train_s = time.time() - start

    T0, k = args.context, args.horizon
    pred_frames, pred_rew = open_loop(model, ev.windows, T0, k, args.seed, args.eval_temperature)
    model_psnr, model_mse = score(pred_frames, pred_rew, ev)
    copy_psnr, mean_mse = baseline_scores(ev)
    context = ev.windows.obs[:args.rollout_batch, :T0]
    if context.shape[0] < args.rollout_batch:  # few held-out windows: repeat them
        reps = math.ceil(args.rollout_batch / context.shape[0])
        context = context.repeat(reps, 1, 1, 1, 1)[:args.rollout_batch]
    return {
        "params_M": params / 1e6,
        "train_steps": float(steps),
        "steps_per_s": steps / max(train_s, 1e-9),
        "psnr": model_psnr.mean().item(),
        "copy_psnr": copy_psnr.mean().item(),
        "reward_mse": model_mse,
        "mean_reward_mse": mean_mse,
        "transitions_per_s": rollout_rate(model, context, k, args.seed),
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    split = collect_split(args.task, args.episodes, args.eval_episodes, args.episode_length, args.seed,
                          args.image_size)
    ev = evaluation_set(split, args.context, args.horizon)
    print(f"collected {args.episodes} + {args.eval_episodes} episodes of {args.task} at "
          f"{args.image_size} px in {time.time() - start:.0f}s; {ev.windows.obs.shape[0]} held-out windows",
          flush=True)

    results = {}
    for name in args.models:
        results[name] = compare(name, split.train, ev, args)
        print(f"{name}: done ({results[name]['train_steps']:.0f} updates)", flush=True)

    budget = (f"{args.train_steps} updates" if args.train_steps is not None
              else f"{args.train_minutes:g} min training")
    ivideogpt = "greedy" if args.eval_temperature <= 0 else f"sampled at temperature {args.eval_temperature:g}"
    print(f"\n{args.task}, {args.image_size} px, size {args.size}, {budget} each "
          f"(batch {args.batch}), open loop {args.horizon} steps from {args.context} real frames "
          f"(iVideoGPT {ivideogpt}, Vid2World DDIM from seeded noise; PSNR per frame, peak 255); "
          f"rollout B={args.rollout_batch}, k={args.horizon}, random policy, {args.threads} thread(s)")
    header = (f"{'model':<10} | {'params M':>8} | {'updates':>7} | {'upd/s':>6} | {'PSNR dB':>7} | "
              f"{'copy-last':>9} | {'rew MSE':>8} | {'mean MSE':>8} | {'imag trans/s':>12}")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:<10} | {r['params_M']:>8.2f} | {r['train_steps']:>7.0f} | {r['steps_per_s']:>6.2f} | "
              f"{r['psnr']:>7.2f} | {r['copy_psnr']:>9.2f} | {r['reward_mse']:>8.4f} | "
              f"{r['mean_reward_mse']:>8.4f} | {r['transitions_per_s']:>12.1f}")
    print("SUMMARY " + "; ".join(
        f"{n} {r['params_M']:.2f}M: PSNR {r['psnr']:.2f} (copy {r['copy_psnr']:.2f}) dB, reward MSE "
        f"{r['reward_mse']:.4f} (mean {r['mean_reward_mse']:.4f}), {r['transitions_per_s']:.1f} trans/s"
        for n, r in results.items()))
    return results


if __name__ == "__main__":
    main()
