"""Does a small iVideoGPT learn real dynamics? Train it briefly on Meta-World and compare with baselines.

    python scripts/check_worldmodel_quality.py                       # tiny sizes, ~32 CPU minutes (collection included)
    python scripts/check_worldmodel_quality.py --policy random --train-minutes 10 --episodes 40

Episodes of the scripted Meta-World expert with action noise (``--policy random``: uniform
random actions) are collected as demonstrations are, with ``mbrl.envs.make_env`` (64x64 corner
camera, action repeat 2, as in MBPO). The model trains for a fixed wall-clock budget on segments of
``context + horizon`` frames: the tokenizer alone for the first 65%, then the transformer on the
frozen tokenizer's codes (a tokenizer still changing under it costs the transformer accuracy, and
tokenizer updates cost more). Each part's learning rate decays over the span it trains in. It then
imagines ``horizon`` steps open loop from held-out real context frames, driven by the real
actions. Reported:

* PSNR of the imagined frames vs. the real ones, against the copy-last-context-frame baseline;
* reward MSE of the imagined rewards vs. the real ones, against predicting the training mean.

The judged rollouts are greedy (``--eval-temperature 0``): PSNR scores a point prediction, and
the most likely frames are the model's. Rollouts sampled as MBPO samples them are printed too.
The last line is a one-line summary; the exit status is 1 unless the model beats both baselines.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from worldmodel.interface import SegmentBatch  # noqa: E402
from worldmodel.ivideogpt.model import IVideoGPT  # noqa: E402

PIXEL_MAX = 255.0
LR_FLOOR = 0.05  # the cosine schedule ends at this fraction of --lr


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
                   help="a fixed number of updates instead of the wall-clock budget (the tokenizer "
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
                   help="evaluate this saved model (from_pretrained) instead of training one")
    p.add_argument("--transformer", default="tiny")
    p.add_argument("--tokenizer", default="tiny")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda (the check is meant for a CPU)")
    p.add_argument("--data", default=None,
                   help="an .npz of collected episodes: loaded if it exists, else written after "
                        "collecting (to train elsewhere, e.g. on a GPU machine without simulators)")
    return p.parse_args()


def collect(task: str, episodes: int, length: int, seed: int, image_size: int, policy: str = "random",
            noise: float = 0.0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Episodes of the scripted expert (with action noise) or of random actions, collected as
    demonstrations are (``mbrl.demos.collect``): (frames uint8 [T+1, 3, H, W], actions [T, A],
    rewards [T])."""
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


Episodes = list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def save_episodes(path: str, train: Episodes, held_out: Episodes) -> None:
    """Both episode lists in one compressed .npz, written atomically."""
    arrays = {}
    for split, eps in (("train", train), ("eval", held_out)):
        for i, (f, a, r) in enumerate(eps):
            arrays.update({f"{split}_{i}_frames": f, f"{split}_{i}_actions": a, f"{split}_{i}_rewards": r})
    tmp = f"{path}.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def load_episodes(path: str) -> tuple[Episodes, Episodes]:
    with np.load(path) as z:
        def split(name: str) -> Episodes:
            n = len([k for k in z.files if k.startswith(f"{name}_") and k.endswith("_frames")])
            return [(z[f"{name}_{i}_frames"], z[f"{name}_{i}_actions"], z[f"{name}_{i}_rewards"])
                    for i in range(n)]
        return split("train"), split("eval")


def sample_segments(episodes, batch: int, length: int, rng: np.random.Generator) -> SegmentBatch:
    obs, act, rew = [], [], []
    for _ in range(batch):
        f, a, r = episodes[rng.integers(len(episodes))]
        s = rng.integers(0, len(a) - length + 2)
        obs.append(f[s:s + length])
        act.append(a[s:s + length - 1])
        rew.append(r[s:s + length - 1])
    return SegmentBatch(torch.from_numpy(np.stack(obs)), torch.from_numpy(np.stack(act)),
                        torch.from_numpy(np.stack(rew)))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR of uint8 frames [..., 3, H, W] -> [...]."""
    mse = ((a.float() - b.float()) ** 2).mean((-3, -2, -1)).clamp_min(1e-10)
    return 10 * torch.log10(PIXEL_MAX ** 2 / mse)


def open_loop(model: IVideoGPT, obs: torch.Tensor, act: torch.Tensor, horizon: int, seed: int,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Imagine ``horizon`` frames from the first ``context_frames`` of obs uint8 [N, T, 3, H, W],
    driven by the real actions [N, T - 1, A] -> (frames uint8 [N, k, 3, H, W], rewards [N, k])."""
    T0 = model.context_frames
    default = model.sampling["temperature"]
    model.sampling["temperature"] = temperature
    try:
        state = model.reset(obs[:, :T0], torch.Generator(device=model.device).manual_seed(seed))
        frames, rewards = [], []
        for i in range(horizon):
            f, r, state = model.step(state, act[:, T0 - 1 + i])
            frames.append(f.cpu())
            rewards.append(r.cpu())
    finally:
        model.sampling["temperature"] = default
    return torch.stack(frames, 1), torch.stack(rewards, 1)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    length = args.context + args.horizon

    t0 = time.time()
    if args.data and os.path.exists(args.data):
        train_eps, eval_eps = load_episodes(args.data)
        source = f"loaded from {args.data}"
    else:
        train_eps = collect(args.task, args.episodes, args.episode_length, args.seed, args.image_size,
                            args.policy, args.noise)
        eval_eps = collect(args.task, args.eval_episodes, args.episode_length, args.seed + 10_000,
                           args.image_size, args.policy, args.noise)
        if args.data:
            save_episodes(args.data, train_eps, eval_eps)
        source = f"collected from {args.task}"
    n_frames = sum(len(a) for _, a, _ in train_eps)
    print(f"{len(train_eps)} + {len(eval_eps)} episodes {source} ({n_frames} training transitions) "
          f"in {time.time() - t0:.0f}s")

    image_size = train_eps[0][0].shape[-1]
    action_dim = train_eps[0][1].shape[-1]
    # Cross-attention on the 16x16 (64 px) or 8x8 (32 px) latent maps and below.
    tokenizer = {"size": args.tokenizer, "max_att_resolution": image_size // 4,
                 "context_vocab_size": args.codebook_size, "future_vocab_size": args.codebook_size}
    for item in args.tokenizer_set:
        key, _, value = item.partition("=")
        tokenizer[key] = json.loads(value)
    if args.load:  # evaluate a saved model (ours or an imported official one) without training
        model = IVideoGPT.from_pretrained(args.load).to(args.device)
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
    budget = args.train_minutes * 60
    t0 = time.time()
    step, last = 0, {}

    def progress() -> float:  # fraction of the training budget spent
        if args.load:
            return 1.0
        if args.train_steps:
            return step / args.train_steps
        return (time.time() - t0) / budget if budget > 0 else 1.0

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

    # ----- open-loop evaluation on held-out episodes: every window of context + horizon frames
    frames, actions, rewards = [], [], []
    for f, a, r in eval_eps:
        for s in range(0, len(a) - length + 2, args.horizon):
            frames.append(f[s:s + length])
            actions.append(a[s:s + length - 1])
            rewards.append(r[s:s + length - 1])
    obs = torch.from_numpy(np.stack(frames))  # [N, T0 + k, 3, H, W]
    act = torch.from_numpy(np.stack(actions))  # [N, T0 + k - 1, A]
    rew = torch.from_numpy(np.stack(rewards))  # [N, T0 + k - 1]
    T0 = args.context
    real_next = obs[:, T0:]  # [N, k, ...]: o_{T0} .. produced by a_{T0-1} ..
    real_rew = rew[:, T0 - 1:]  # [N, k]: r for (o_{T0-1+i}, a_{T0-1+i})
    if args.save:
        model.save_pretrained(args.save)
        print(f"saved the trained model to {args.save}")
    model.eval()
    sampled = open_loop(model, obs, act, args.horizon, args.seed, model.sampling["temperature"])
    pred_frames, pred_rew = open_loop(model, obs, act, args.horizon, args.seed, args.eval_temperature)
    sampled_psnr = psnr(sampled[0], real_next).mean().item()
    sampled_rmse = ((sampled[1] - real_rew) ** 2).mean().item()

    model_per_step = psnr(pred_frames, real_next).mean(0)  # [k]
    copy_per_step = psnr(obs[:, T0 - 1:T0].expand_as(real_next), real_next).mean(0)  # [k]
    model_psnr, copy_psnr = model_per_step.mean().item(), copy_per_step.mean().item()
    with torch.no_grad():  # the tokenizer's own ceiling: reconstruct the real future frames
        unit = obs.to(args.device).float() / (PIXEL_MAX / 2) - 1
        ctx_codes, cache = model.tokenizer.encode_context(unit[:, :T0])
        recon = model.tokenizer.decode_future(model.tokenizer.encode_future(unit[:, T0:], cache), cache)
        recon = ((recon.clamp(-1, 1) + 1) * (PIXEL_MAX / 2)).round().to(torch.uint8).cpu()
        ctx_recon = model.tokenizer.decode_context(ctx_codes)
        ctx_recon = ((ctx_recon.clamp(-1, 1) + 1) * (PIXEL_MAX / 2)).round().to(torch.uint8).cpu()
    recon_psnr = psnr(recon, real_next).mean().item()
    ctx_recon_psnr = psnr(ctx_recon, obs[:, :T0]).mean().item()
    train_mean = float(np.concatenate([r for _, _, r in train_eps]).mean())
    model_rmse = ((pred_rew - real_rew) ** 2).mean().item()
    mean_rmse = ((train_mean - real_rew) ** 2).mean().item()

    print(f"\nopen loop, {obs.shape[0]} held-out windows, {args.horizon} steps from {T0} real frames:")
    print(f"{'':<28}{'model':>10}{'baseline':>10}")
    print(f"{'PSNR dB (copy last frame)':<28}{model_psnr:>10.2f}{copy_psnr:>10.2f}   tokenizer recon: "
          f"future {recon_psnr:.2f}, context {ctx_recon_psnr:.2f}")
    print(f"{'reward MSE (train mean)':<28}{model_rmse:>10.4f}{mean_rmse:>10.4f}")
    print("PSNR per imagined step, model / copy-last: " + ", ".join(
        f"{i + 1}: {m:.1f}/{c:.1f}" for i, (m, c) in enumerate(zip(model_per_step.tolist(), copy_per_step.tolist()))))
    print(f"(sampled as in MBPO, temperature {model.sampling['temperature']}, top-k {model.sampling['top_k']}: "
          f"PSNR {sampled_psnr:.2f} dB, reward MSE {sampled_rmse:.4f})")
    beats = (model_psnr > copy_psnr, model_rmse < mean_rmse)
    decoding = "greedy" if args.eval_temperature <= 0 else f"temperature {args.eval_temperature}"
    which = f"loaded from {args.load}" if args.load else f"{args.transformer}/{args.tokenizer} after {step} steps"
    print(f"SUMMARY {args.task} {which} ({decoding}): "
          f"PSNR {model_psnr:.2f} vs "
          f"copy-last {copy_psnr:.2f} dB ({'beats' if beats[0] else 'LOSES'}), reward MSE {model_rmse:.4f} vs "
          f"mean {mean_rmse:.4f} ({'beats' if beats[1] else 'LOSES'})")
    sys.exit(0 if all(beats) else 1)


if __name__ == "__main__":
    main()
