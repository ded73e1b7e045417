"""Imagination speed of Vid2World: imagined transitions per second for a batched rollout.

    python scripts/bench_vid2world.py                                   # tiny, CPU, B=8, k=10, 4 and 10 steps
    python scripts/bench_vid2world.py --size base --batch 32 --steps 4 10 50 --device cuda
    python scripts/bench_vid2world.py --update --memory vrag --segment-length 24   # one update's memory

Each row times reset + k steps (history encoding, DDIM denoising with guidance, reward head)
with the cached causal backbone, and, for comparison, the same rollout recomputing the whole
window at every denoising step (``--no-cache-baseline`` skips it). The last line is a summary.

``--update`` instead times one world-model update (denoiser and reward head) on ``--batch``
segments of ``--segment-length`` frames with ``--memory``, with the backbone's gradient
checkpointing and without, and prints the peak memory after each: the CPU's peak resident set
(monotonic per process, so the checkpointed update, the smaller, runs first) or CUDA's peak allocation.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mbrl.utils import non_negative_int, positive_int, script_device  # noqa: E402
from worldmodel.host_memory import malloc_setting  # noqa: E402
from worldmodel.interface import SegmentBatch, WorldModelConfigError  # noqa: E402
from worldmodel.memory.base import MEMORY_NAMES  # noqa: E402
from worldmodel.vid2world.configs import SIZES, Vid2WorldConfig  # noqa: E402
from worldmodel.vid2world.model import Vid2World  # noqa: E402


def model_config(args: argparse.Namespace, steps: int, gradient_checkpointing: bool = False) -> Vid2WorldConfig:
    """The validated config of the benchmarked model sampling with ``steps`` DDIM steps."""
    return Vid2WorldConfig(image_size=args.image_size, action_dim=args.action_dim, size=args.size,
                           guidance_scale=args.guidance, sampling_steps=steps, memory={"name": args.memory},
                           gradient_checkpointing=gradient_checkpointing)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="tiny", choices=list(SIZES), help="backbone preset (tiny | base)")
    p.add_argument("--image-size", type=positive_int, default=64)
    p.add_argument("--action-dim", type=non_negative_int, default=4, help="0: an action-free model")
    p.add_argument("--batch", type=positive_int, default=8, help="rollouts imagined in parallel")
    p.add_argument("--horizon", type=positive_int, default=10, help="imagined steps per rollout")
    p.add_argument("--context", type=positive_int, default=2, help="real context frames")
    p.add_argument("--steps", type=positive_int, nargs="+", default=[4, 10],
                   help="DDIM steps per frame; each must divide the 1000 training timesteps")
    p.add_argument("--guidance", type=float, default=2.5, help="guidance scale (1: one branch)")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="timed repeats after a warm-up; the median is reported")
    p.add_argument("--no-cache-baseline", action="store_true", help="skip the uncached comparison")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's malloc thresholds as they are (keep_freed_memory=false in training)")
    p.add_argument("--update", action="store_true",
                   help="time one world-model update and its peak memory, with and without gradient checkpointing")
    p.add_argument("--memory", default="window", choices=list(MEMORY_NAMES), help="the model's memory")
    p.add_argument("--segment-length", type=positive_int, default=8,
                   help="--update: frames per segment (MBPO's: 8 with window, 24 with history or vrag)")
    args = p.parse_args(argv)
    try:  # the model's own rules (a usage error here, not a traceback mid-run)
        for steps in args.steps:
            model_config(args, steps).backbone_config()
        if args.update:  # segments do not depend on the step count: one model checks them
            Vid2World(model_config(args, args.steps[0])).check_segment_length(args.segment_length)
    except WorldModelConfigError as e:
        p.error(f"the benchmarked model refuses these options: {e}")
    return args


def peak_memory_gb(device: torch.device) -> float:
    """The process's peak memory so far: CUDA's peak allocation, or the CPU's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux: KiB


def bench_update(args: argparse.Namespace, device: torch.device) -> None:
    """``--update`` (module docstring)."""
    g = torch.Generator().manual_seed(0)
    B, T = args.batch, args.segment_length
    batch = SegmentBatch(torch.randint(0, 256, (B, T, 3, args.image_size, args.image_size), generator=g,
                                       dtype=torch.uint8),
                         torch.rand(B, T - 1, args.action_dim, generator=g) * 2 - 1, torch.rand(B, T - 1, generator=g))
    print(f"Vid2World {args.size} update, {device}, {B} segments x {T} frames, memory={args.memory}; "
          f"before: {peak_memory_gb(device):.2f} GB")
    print(f"{'checkpointing':>13} | {'update s':>8} | {'peak GB':>7}")
    result = {}
    for checkpointing in (True, False):  # the smaller peak first (a CPU peak never goes down)
        model = Vid2World(model_config(args, args.steps[0], checkpointing)).to(device)
        times = []
        for repeat in range(args.repeats + 1):  # a warm-up, then the timed repeats
            sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
            sync()
            start = time.perf_counter()
            model.update(batch.to(device))
            sync()
            if repeat:
                times.append(time.perf_counter() - start)
        result[checkpointing] = (statistics.median(times), peak_memory_gb(device))
        print(f"{str(checkpointing):>13} | {result[checkpointing][0]:>8.2f} | {result[checkpointing][1]:>7.2f}")
        del model
    (t_on, m_on), (t_off, m_off) = result[True], result[False]
    print(f"summary: Vid2World {args.size} update on {device.type}, {B}x{T} frames, {args.memory}: checkpointing "
          f"peaks at {m_on:.2f} GB vs {m_off:.2f} GB, {t_on / t_off:.2f}x the update time")


def time_rollout(model: Vid2World, context: torch.Tensor, actions: torch.Tensor) -> float:
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    state = model.reset(context, generator=torch.Generator(model.device).manual_seed(0))
    for i in range(actions.shape[1]):
        _, _, state = model.step(state, actions[:, i])
    sync()
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    malloc = malloc_setting(keep_freed=not args.default_malloc)
    device = script_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    if args.update:
        bench_update(args, device)
        return
    model = Vid2World(model_config(args, args.steps[0])).to(device).eval()
    g = torch.Generator().manual_seed(0)
    context = torch.randint(0, 256, (args.batch, args.context, 3, args.image_size, args.image_size),
                            generator=g, dtype=torch.uint8).to(device)
    actions = (torch.rand(args.batch, args.horizon, args.action_dim, generator=g) * 2 - 1).to(device)
    n = args.batch * args.horizon
    params = sum(p.numel() for p in model.backbone.parameters()) / 1e6
    print(f"Vid2World {args.size} ({params:.2f}M denoiser params), {device}, B={args.batch}, "
          f"k={args.horizon}, context={args.context}, guidance={args.guidance}, "
          f"malloc={malloc}")
    print(f"{'steps':>5} | {'cached s':>9} | {'cached trans/s':>14} | {'uncached s':>10} | {'uncached trans/s':>16}")
    rates = {}
    for steps in args.steps:
        model.config = dataclasses.replace(model.config, sampling_steps=steps)  # validated again
        modes = [True] + ([] if args.no_cache_baseline else [False])  # use_cache: False recomputes the
        times: dict[bool, list[float]] = {mode: [] for mode in modes}  # whole window at every denoising step
        for repeat in range(args.repeats + 1):  # a full-horizon warm-up of each mode, then the modes take turns
            for mode in modes:
                model.use_cache = mode
                seconds = time_rollout(model, context, actions)
                if repeat:
                    times[mode].append(seconds)
        model.use_cache = True
        cached = statistics.median(times[True])
        rates[steps] = n / cached
        row = f"{steps:>5} | {cached:>9.2f} | {n / cached:>14.1f} |"
        if not args.no_cache_baseline:
            full = statistics.median(times[False])
            row += f" {full:>10.2f} | {n / full:>16.1f}"
        print(row)
    summary = ", ".join(f"{s} steps {r:.1f}" for s, r in rates.items())
    print(f"summary: Vid2World {args.size} on {device.type}, B={args.batch} k={args.horizon}: "
          f"imagined transitions/s {summary}")


if __name__ == "__main__":
    main()
