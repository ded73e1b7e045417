"""Throughput of the DrQ-v2 agent update and of real-replay sampling.

    python scripts/bench_agent.py                      # CUDA if available, else CPU
    python scripts/bench_agent.py --device cpu --updates 5 --sizes 64

Agent: updates/s at the reference batch (cfgs/agent/drqv2.yaml) on random frame stacks.
Replay: RealReplayBuffer.sample (n-step batches with stacks, incl. the copy to the device)
and sample_segments (world-model segments) per second. Prints a table; the last line is a
one-line summary.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mbrl.agent import DrQV2Agent  # noqa: E402
from mbrl.replay import RealReplayBuffer, TransitionBatch  # noqa: E402
from mbrl.utils import positive_int, script_device  # noqa: E402
from worldmodel.episodes import Episode  # noqa: E402
from worldmodel.host_memory import malloc_setting  # noqa: E402

FRAME_STACK = 3
ACTION_DIM = 4  # Meta-World
EPISODE_STEPS = 100  # iVideoGPT's Meta-World episodes (agent steps)
BENCH_STEP = 10_000  # the agent step updates are timed at (past exploration)
SEGMENT_BATCH, SEGMENT_LENGTH = 16, 12  # iVideoGPT world-model batches


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_updates(cfg, size: int, device: torch.device, updates: int, warmup: int) -> float:
    agent = DrQV2Agent.from_config(cfg, (3 * FRAME_STACK, size, size), ACTION_DIM, device, num_expl_steps=0)
    n = cfg.batch_size
    frames = lambda: torch.randint(0, 256, (n, 3 * FRAME_STACK, size, size),  # noqa: E731
                                   dtype=torch.uint8, device=device)
    batch = TransitionBatch(obs=frames(), action=torch.rand(n, ACTION_DIM, device=device) * 2 - 1,
                            reward=torch.rand(n, device=device),
                            discount=torch.full((n,), cfg.discount ** cfg.nstep, device=device),
                            next_obs=frames())
    step = BENCH_STEP  # past exploration: the actor's noise schedule, as in training
    for _ in range(warmup):
        agent.update(batch, step)
    sync(device)
    start = time.perf_counter()
    for _ in range(updates):
        agent.update(batch, step)  # returns floats: one device sync per update, as in training
    sync(device)
    return updates / (time.perf_counter() - start)


def bench_replay(cfg, size: int, device: torch.device, episodes: int,
                 seconds: float) -> tuple[float, float, float]:
    rng = np.random.default_rng(0)
    buf = RealReplayBuffer(episodes * (EPISODE_STEPS + 1), size, ACTION_DIM, FRAME_STACK,
                           cfg.nstep, cfg.discount)
    for _ in range(episodes):
        buf.add_episode(Episode(
            obs=rng.integers(0, 256, (EPISODE_STEPS + 1, 3, size, size), dtype=np.uint8),
            action=rng.uniform(-1, 1, (EPISODE_STEPS, ACTION_DIM)).astype(np.float32),
            reward=rng.random(EPISODE_STEPS, dtype=np.float32),
            success=np.zeros(EPISODE_STEPS, dtype=bool)))

    def rate(fn) -> float:
        fn()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn()
            count += 1
        sync(device)
        return count / (time.perf_counter() - start)

    sample = rate(lambda: buf.sample(cfg.batch_size, rng))
    to_device = rate(lambda: buf.sample(cfg.batch_size, rng).to(device))
    segments = rate(lambda: buf.sample_segments(SEGMENT_BATCH, SEGMENT_LENGTH, rng))
    return sample, to_device, segments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU) | cpu | cuda")
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[64, 84])
    parser.add_argument("--updates", type=positive_int, default=None,
                        help="timed updates per size (default 200 on CUDA, 5 on CPU)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--episodes", type=int, default=50, help="episodes in the replay bench")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per replay measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc thresholds as they are (keep_freed_memory=false in training)")
    args = parser.parse_args()
    malloc = malloc_setting(keep_freed=not args.default_malloc)
    device = script_device(args.device)
    cuda = device.type == "cuda"
    updates = args.updates or (200 if cuda else 5)
    warmup = args.warmup if args.warmup is not None else (20 if cuda else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cudnn.benchmark = True
    cfg = OmegaConf.load(ROOT / "cfgs" / "agent" / "drqv2.yaml")
    name = torch.cuda.get_device_name(device) if cuda else f"cpu x{torch.get_num_threads()} threads"

    print(f"device: {name}; batch {cfg.batch_size}, frame stack {FRAME_STACK}, "
          f"hidden {cfg.hidden_dim}, feature {cfg.feature_dim}, "
          f"malloc {malloc}")
    print(f"{'size':>6} {'updates/s':>10} {'ms/update':>10} {'sample/s':>10} "
          f"{'sample+to/s':>12} {'segments/s':>11}")
    summary = []
    for size in args.sizes:
        ups = bench_updates(cfg, size, device, updates, warmup)
        sample, to_device, segments = bench_replay(cfg, size, device, args.episodes, args.seconds)
        print(f"{size:>4}px {ups:>10.2f} {1000 / ups:>10.1f} {sample:>10.1f} {to_device:>12.1f} "
              f"{segments:>11.1f}")
        summary.append(f"{size}px {ups:.1f} upd/s, sample {sample:.0f} batch/s")
    # ru_maxrss: KiB on Linux
    print(f"peak resident memory (MiB): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")
    print(f"bench_agent ({name}, batch {cfg.batch_size}): " + "; ".join(summary))


if __name__ == "__main__":
    main()
