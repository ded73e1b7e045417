"""Pretraining throughput per stage, measured through the real loop (worldmodel/training).

Each case runs ``Pretrainer`` on the shipped Meta-World demos for ``--warmup`` + ``--steps``
optimiser steps of one stage and reads the loop's own steps/s from its train CSV (the rows after
the warm-up). CPU: the tiny models (fp32). GPU (when present): also the reference iVideoGPT
(paper64 tokenizer + ``small`` 138M Llama) in bf16, with model FLOPs utilisation for the
transformer (6 N + 12 L d S FLOPs per trained token, PaLM's count; the frozen tokenizer's
encoding is not counted as useful work).

    python scripts/bench_pretrain.py                 # last line: a one-line summary
    python scripts/bench_pretrain.py --steps 20 --warmup 3
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported, or it has no effect
import torch  # noqa: E402

from mbrl.utils import positive_int  # noqa: E402
from worldmodel.host_memory import malloc_setting  # noqa: E402

CONFIG_DIR = str(REPO_ROOT / "cfgs")
# Dense bf16 peak FLOP/s by GPU name fragment (vendor data sheets, SXM parts).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12, "3090": 71e12}


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def transformer_flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token: 6 x non-embedding params + 12 x layers x hidden x sequence."""
    tf = model.transformer
    hp = tf.hparams
    params = sum(p.numel() for n, p in tf.named_parameters() if "embed_tokens" not in n)
    return 6 * params + 12 * hp["num_hidden_layers"] * hp["hidden_size"] * seq_len


def run_case(world_model: str, stage: str, preset: str, steps: int, warmup: int, workers: int,
             batch: int | None, extra: list[str]) -> dict:
    from hydra import compose, initialize_config_dir

    from worldmodel.training import Pretrainer

    with tempfile.TemporaryDirectory() as out:
        overrides = [f"world_model={world_model}", f"world_model_preset@world_model={preset}_{world_model}",
                     f"out={out}", f"stages=[{stage}]", f"steps.{stage}={warmup + steps}", "eval.every=0",
                     "checkpoint.every=0", f"log.every={warmup}", "log.tensorboard=false", "log.wandb=disabled",
                     "log.progress_bar=false", f"data_loader.num_workers={workers}", *extra]
        if batch:
            overrides.append(f"batch_size={batch}")
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            cfg = compose("pretrain", overrides=overrides)
        trainer = Pretrainer(cfg)
        trainer.run()
        with open(Path(out) / "logs" / f"{stage}_train.csv") as f:
            logged = list(csv.DictReader(f))
        model = trainer.model
        seg = cfg.segment_length or cfg.world_model.segment_length
        b = cfg.batch_size or cfg.world_model.batch_size
    # Rows after the warm-up one; each covers the steps since the previous row (the last may cover
    # fewer): the rate is their steps over their time, not a mean of rates.
    spans = [(int(r["step"]) - int(p["step"]), float(r["steps_per_s"])) for p, r in zip(logged, logged[1:])]
    rate = sum(n for n, _ in spans) / sum(n / r for n, r in spans)
    scale = {key: float(logged[-1].get(key) or 0) / float(logged[-1]["steps_per_s"])  # per optimiser step
             for key in ("frames_per_s", "tokens_per_s")}
    result = {"model": world_model, "stage": stage, "size": preset, "device": str(trainer.accelerator.device),
              "precision": trainer.accelerator.mixed_precision, "batch": f"{b}x{seg}", "steps_per_s": rate,
              "frames_per_s": rate * scale["frames_per_s"], "tokens_per_s": rate * scale["tokens_per_s"],
              "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "mfu": None}
    peak = peak_flops()
    if stage == "transformer" and peak:
        seq = model.layout.sequence_length(seg - model.context_frames)
        result["mfu"] = result["tokens_per_s"] * transformer_flops_per_token(model, seq) / peak
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=positive_int, default=10, help="measured optimiser steps per case")
    parser.add_argument("--warmup", type=positive_int, default=2,
                        help="unmeasured first steps (at least 1: the timing starts at the row logged after them)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 2 CPU, 8 GPU)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep_freed_memory=false: leave glibc's malloc thresholds as they are")
    args = parser.parse_args()
    malloc = ["keep_freed_memory=false"] if args.default_malloc else []
    gpu = torch.cuda.is_available()
    workers = args.workers if args.workers is not None else (8 if gpu else 2)
    cases = [("ivideogpt", "tokenizer", "cpu", None, []), ("ivideogpt", "transformer", "cpu", None, []),
             ("vid2world", "diffusion", "cpu", None, []), ("vid2world", "reward", "cpu", None, [])]
    if gpu:  # the reference sizes in bf16
        cases += [("ivideogpt", "tokenizer", "reference", 16, []), ("ivideogpt", "transformer", "reference", 16, []),
                  ("vid2world", "diffusion", "reference", 16, [])]
    results = [run_case(m, s, p, args.steps, args.warmup, workers, b, [*e, *malloc]) for m, s, p, b, e in cases]
    header = f"{'model':10} {'stage':12} {'size':9} {'device':7} {'prec':5} {'batch':6} {'params':>8} " \
             f"{'steps/s':>8} {'frames/s':>9} {'tokens/s':>10} {'MFU':>6}"
    print(header)
    print("-" * len(header))
    for r in results:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        tokens = f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else "-"
        print(f"{r['model']:10} {r['stage']:12} {r['size']:9} {r['device'][:7]:7} {r['precision']:5} {r['batch']:6} "
              f"{r['params_M']:7.2f}M {r['steps_per_s']:8.2f} {r['frames_per_s']:9.0f} {tokens:>10} {mfu:>6}")
    best = {f"{r['model']}/{r['stage']}/{r['size']}": r for r in results}
    summary = "; ".join(f"{k} {v['frames_per_s']:.0f} frames/s"
                        + (f", {v['tokens_per_s']:.0f} tokens/s" if v["tokens_per_s"] else "")
                        + (f", MFU {100 * v['mfu']:.1f}%" if v["mfu"] is not None else "")
                        for k, v in best.items())
    machine = f"GPU {torch.cuda.get_device_name()}" if gpu else f"CPU, {torch.get_num_threads()} thread(s)"
    # the training processes inherit the environment, so they end up with this process's setting
    machine += f", malloc {malloc_setting(keep_freed=not args.default_malloc)}"
    print(f"pretraining throughput ({machine}): {summary}")


if __name__ == "__main__":
    main()
