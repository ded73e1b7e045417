"""Wall clock per 1,000 env frames: DrQ-v2 (world_model=none) vs MBPO with a world model, in one run.

    python scripts/bench_mbpo.py                              # CPU preset, iVideoGPT tiny
    python scripts/bench_mbpo.py --preset reference           # on a GPU: the reference settings
                                                              # (refused without CUDA unless --allow-cpu)
    python scripts/bench_mbpo.py --world-model vid2world --frames 3000

Both runs use the same settings; timing starts after the MBPO warm-up (initial world-model
updates and rollouts), so the figures are the steady state. The breakdown comes from the loop's
own section timers: env steps, acting, agent updates, world-model updates and imagination.
"""
from __future__ import annotations

import argparse
import csv
import os
import resource
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("MUJOCO_GL", "egl")

SECTIONS = ("env", "agent_act", "agent_update", "world_model", "imagination")


def run(world_model: str, args: argparse.Namespace, run_dir: Path) -> dict[str, float]:
    from hydra import compose, initialize_config_dir

    from mbrl.trainer import Trainer

    overrides = [f"world_model={world_model}", f"preset={args.preset}", f"task={args.task}",
                 f"num_train_frames={args.warmup + args.frames}", f"num_seed_frames={args.warmup // 2}",
                 f"mbpo.start_frames={args.warmup // 2}", "eval_every_frames=0", "num_eval_episodes=1",
                 f"save_every_frames={10 ** 9}", "log.wandb=disabled", "log.tensorboard=false",
                 "log.video=false", "log.progress_bar=false", "mbpo.validate_every_episodes=0", *args.override]
    with initialize_config_dir(config_dir=str(REPO / "cfgs"), version_base=None):
        cfg = compose("config", overrides=overrides)
    Trainer(cfg, run_dir).train()
    with open(run_dir / "train.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["frame"]) >= args.warmup]
    if len(rows) < 2:
        raise SystemExit("too few episodes timed: raise --frames")
    # rows[0] marks the start; each later row covers the episode that ended at its frame
    frames = int(rows[-1]["frame"]) - int(rows[0]["frame"])
    seconds = float(rows[-1]["wall_time"]) - float(rows[0]["wall_time"])
    per_k = 1000.0 / frames
    out = {"s_per_1k_frames": seconds * per_k}
    for name in SECTIONS:
        out[name] = sum(float(r.get(f"time_{name}") or 0.0) for r in rows[1:]) * per_k
    return out


def check_preset_device(preset: str, allow_cpu: bool) -> None:
    """The reference preset's full-size models are meant for a GPU: refuse it without CUDA
    unless ``--allow-cpu`` says to time them on the CPU anyway (then warn)."""
    import torch

    if preset != "reference" or torch.cuda.is_available():
        return
    if not allow_cpu:
        raise SystemExit("error: --preset reference runs the full-size world model at the reference agent settings, "
                         "which need a CUDA GPU, but torch sees none; use --preset cpu, or add --allow-cpu to time "
                         "it on the CPU")
    print("[bench_mbpo] warning: --preset reference on the CPU (--allow-cpu): the full-size world model, far "
          "slower than on a GPU; these figures are no guide to the GPU's", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", choices=["cpu", "reference"])
    parser.add_argument("--world-model", default="ivideogpt")
    parser.add_argument("--task", default="metaworld/plate_slide")
    parser.add_argument("--warmup", type=int, default=2000, help="frames before timing starts")
    parser.add_argument("--frames", type=int, default=2000, help="frames timed")
    parser.add_argument("--allow-cpu", action="store_true", help="run --preset reference without a CUDA GPU")
    parser.add_argument("override", nargs="*", help="extra Hydra overrides for both runs")
    args = parser.parse_args()
    check_preset_device(args.preset, args.allow_cpu)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("none", args.world_model):
            results[name] = run(name, args, Path(tmp) / name)
    print(f"\nseconds per 1,000 env frames ({args.task}, preset={args.preset}, {args.frames} timed frames)")
    print(f"{'method':<12}{'total':>9}" + "".join(f"{s:>14}" for s in SECTIONS))
    for name, r in results.items():
        print(f"{name:<12}{r['s_per_1k_frames']:>9.1f}" + "".join(f"{r[s]:>14.1f}" for s in SECTIONS))
    # ru_maxrss: KiB on Linux; both runs, in this process
    print(f"peak resident memory (MiB): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")
    ratio = results[args.world_model]["s_per_1k_frames"] / results["none"]["s_per_1k_frames"]
    print(f"summary: MBPO+{args.world_model} takes {ratio:.2f}x the wall clock of DrQ-v2 per 1,000 frames "
          f"(preset={args.preset}; reference implementation: 3.7x)")


if __name__ == "__main__":
    main()
