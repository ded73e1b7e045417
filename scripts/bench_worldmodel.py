"""Imagination speed of iVideoGPT: KV cache carried across frames vs. the official re-prefill loop.

    python scripts/bench_worldmodel.py                                  # tiny sizes, CPU defaults
    python scripts/bench_worldmodel.py --transformer small --tokenizer paper64 --batch 32 --device cuda
    # GPU options to compare: --compile, --channels-last, --cudnn-benchmark, --profile
    # --flops: each path's work (GFLOP per rollout), the rate it achieves, what a token step reads
    # CPU: --cpu-bf16-decoding false decodes in fp32 (auto: bf16 convolutions where the CPU has them)

Three paths imagine the same rollouts (same weights, same seed, same actions) and must give the
same frames:

* kv-cache: ``reset``/``step``, the KV cache carried across frames;
* re-prefill: ``reset(..., reprefill=True)``, the same machinery but every frame re-runs the whole
  sequence (HF forward passes, no generate()): the cache's own gain;
* official loop: the official rollout (``worldmodel/ivideogpt/official_loop.py``): generate() per
  frame over the whole sequence, plus the official tokenizer work (dummy future frames encoded,
  the context decoded in full, the decoder's context keys and values recomputed per frame).

The paths take turns, repeat by repeat, so a slow spell of the machine hits all of them. The
table shows imagined transitions per second end to end (reset + k steps including the
tokenizer's decoding; timed on rollouts of their own, without the synchronisation that timing
the parts needs on a GPU) and for the transformer alone. The last line is a one-line summary.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mbrl.utils import positive_int, script_device  # noqa: E402
from worldmodel.host_memory import malloc_setting  # noqa: E402
from worldmodel.ivideogpt import official_loop  # noqa: E402
from worldmodel.ivideogpt.model import IVideoGPT  # noqa: E402
from worldmodel.ivideogpt.official_loop import official_rollout  # noqa: E402
from worldmodel.ivideogpt.tokenizer_configs import PRESETS as TOKENIZER_PRESETS  # noqa: E402
from worldmodel.ivideogpt.transformer_configs import TRANSFORMER_PRESETS  # noqa: E402

PATHS = ("kv-cache", "re-prefill", "official loop")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--transformer", default="tiny", choices=list(TRANSFORMER_PRESETS),
                   help="transformer size preset (tiny | small | medium)")
    p.add_argument("--tokenizer", default="tiny", choices=list(TOKENIZER_PRESETS),
                   help="tokenizer size preset (tiny | paper64 | paper256)")
    p.add_argument("--image-size", type=positive_int, default=64)
    p.add_argument("--action-dim", type=int, default=4)
    p.add_argument("--batch", type=positive_int, default=8,
                   help="rollouts imagined in parallel (MBPO gen_batch is 32)")
    p.add_argument("--horizon", type=positive_int, default=10, help="imagined steps per rollout (MBPO gen_horizon)")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="timed repeats per path; the median is reported")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="sampling.compile: torch.compile the token step (CUDA)")
    p.add_argument("--channels-last", action="store_true",
                   help="store the tokenizer's convolution weights channels-last (NHWC), the layout cuDNN's "
                        "bf16 tensor-core kernels prefer; activations follow the weights")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="torch.backends.cudnn.benchmark: time cuDNN's convolution algorithms on first use (CUDA)")
    p.add_argument("--cpu-bf16-decoding", default="auto", choices=["auto", "true", "false"],
                   help="sampling.cpu_bf16_decoding: bf16 convolutions for the frames decoded on a CPU")
    p.add_argument("--profile", action="store_true", help="print the top kernels of one cached rollout")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's malloc thresholds as they are (keep_freed_memory=false in training)")
    p.add_argument("--flops", action="store_true",
                   help="count each path's floating-point work (on the CPU at batch 1, scaled by --batch), print "
                        "the rate each path achieves and what a token step reads from memory")
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_rollout(model: IVideoGPT, context: torch.Tensor, actions: torch.Tensor, path: str,
                 seed: int, split: bool = True) -> tuple[float, float, float, torch.Tensor]:
    """One rollout along ``path`` (one of PATHS); returns (total seconds, seconds in the
    transformer, seconds in the tokenizer, frames). The tokenizer's work (encoding the context,
    decoding each new frame with the context features cached) is the same on the first two
    paths; the official loop does more of it, as the official code does. ``split``: time the two
    parts, which synchronises the GPU around each call; without it (parts 0) the total is what
    a caller sees."""
    device = model.device
    spent = {"transformer": 0.0, "tokenizer": 0.0}
    tok = model.tokenizer
    # transformer: the cached path's prefill (static_decoder, in reset) and token steps; the other
    # paths' frames (each re-runs its prefix); tokenizer: encoding and decoding
    patched = [(model.transformer, "static_decoder", "transformer"),
               (model.transformer, "generate_frame", "transformer"),
               (model.transformer.llm, "generate", "transformer"), (model, "_decode_newest", "tokenizer")]
    patched += [(tok, name, "tokenizer") for name in ("encode_context", "encode_future", "decoder_kv",
                                                      "decode_future")]
    patched += [(official_loop, "decode_context_keeping_features", "tokenizer")]

    def timed(fn, part):
        def call(*a, **kw):
            sync(device)
            t = time.perf_counter()
            out = fn(*a, **kw)
            sync(device)
            spent[part] += time.perf_counter() - t
            return out
        return call

    # a Python module's functions are its own attributes, set back afterwards (methods are deleted)
    own = {(id(obj), name): vars(obj)[name] for obj, name, _ in patched if name in vars(obj)}
    for obj, name, part in patched if split else []:
        setattr(obj, name, timed(getattr(obj, name), part))
    try:
        sync(device)
        start = time.perf_counter()
        g = torch.Generator(device=device).manual_seed(seed)
        if path == "official loop":
            frames, _ = official_rollout(model, context, actions, g)
        else:
            state = model.reset(context, g, reprefill=path == "re-prefill")
            frames = []
            for t in range(actions.shape[1]):
                frame, _, state = model.step(state, actions[:, t])
                frames.append(frame)
            frames = torch.stack(frames, 1)
        sync(device)
        total = time.perf_counter() - start
    finally:
        for obj, name, _ in patched if split else []:
            if (id(obj), name) in own:
                setattr(obj, name, own[id(obj), name])
            else:
                delattr(obj, name)  # back to the class's method
    return total, spent["transformer"], spent["tokenizer"], frames


def build_model(args: argparse.Namespace) -> IVideoGPT:
    bf16_decoding = {"true": True, "false": False}.get(args.cpu_bf16_decoding, "auto")
    return IVideoGPT(image_size=args.image_size, action_dim=args.action_dim, context_frames=2,
                     tokenizer=args.tokenizer, transformer=args.transformer, max_future_frames=max(args.horizon, 1),
                     sampling={"compile": args.compile, "cpu_bf16_decoding": bf16_decoding})


def counted_flops(fn, *args, **kwargs) -> int:
    """Floating-point operations of ``fn(*args, **kwargs)`` by ``FlopCounterMode``, with
    ``scaled_dot_product_attention`` on its math backend: the counter knows the flash and
    memory-efficient kernels' formulas but not the CPU's flash kernel
    (``_scaled_dot_product_flash_attention_for_cpu``), which it would count as 0; the math backend
    is the same attention as explicit matmuls, which it counts."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


def count_flops(args: argparse.Namespace) -> dict[str, float]:
    """Floating-point operations of one rollout per path at batch ``args.batch``.

    Counted by ``counted_flops`` (matmuls, convolutions and attention, the transformer's and the
    tokenizer's; elementwise ops are not counted) on a fresh CPU model at batch 1, then scaled by
    the batch: every op's work grows linearly with it. On the CPU because a replayed CUDA graph
    bypasses the dispatcher the counter listens to. The count is the work the path asks for, not a
    kernel's: the CPU step reads only the positions written so far, the GPU step masks its whole
    buffer (a few per cent more)."""
    cpu = argparse.Namespace(**{**vars(args), "batch": 1, "compile": False})
    torch.manual_seed(args.seed)
    model = build_model(cpu).eval()
    context = torch.randint(0, 256, (1, 2, 3, args.image_size, args.image_size), dtype=torch.uint8)
    actions = torch.rand(1, args.horizon, args.action_dim) * 2 - 1
    return {name: counted_flops(time_rollout, model, context, actions, name, args.seed) * args.batch
            for name in PATHS}


def token_step_bytes(model: IVideoGPT, context: torch.Tensor) -> tuple[int, int, int]:
    """What one imagined token step of the cached path reads from memory, from the static cache
    that ``reset(context)`` fills: (bytes of the step's weight matrices, bytes of every layer's key
    and value buffers, the buffer's positions). The GPU step reads the whole buffer under a mask;
    the CPU step only the positions written so far."""
    cache = model.reset(context).cache.cache
    w = cache.weights
    weights = sum(t.numel() * t.element_size() for t in [*w.qkv, *w.o, *w.gate_up, *w.down, w.head])
    kv = sum(t.numel() * t.element_size() for t in [*cache.keys, *cache.values])
    return weights, kv, cache.max_len


def main() -> None:
    args = parse_args()
    malloc = malloc_setting(keep_freed=not args.default_malloc)
    device = script_device(args.device)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    model = build_model(args).to(device).eval()
    if args.channels_last:
        model.tokenizer.to(memory_format=torch.channels_last)
    B, k = args.batch, args.horizon
    context = torch.randint(0, 256, (B, 2, 3, args.image_size, args.image_size), dtype=torch.uint8, device=device)
    actions = torch.rand(B, k, args.action_dim, device=device) * 2 - 1

    results, peak_mib, runs = {}, {}, {name: [] for name in PATHS}
    for name in PATHS:  # warm-up: first-use allocations (cuDNN's workspaces), graph capture on a GPU
        time_rollout(model, context, actions, name, args.seed)
    if device.type == "cuda":  # peak memory of one rollout per path, without another path's kept buffers
        for name in PATHS:
            model.release_imagination_buffers()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            time_rollout(model, context, actions, name, args.seed)
            peak_mib[name] = torch.cuda.max_memory_allocated(device) / 2**20
        for name in PATHS:  # the buffers (and graphs) released above, built again before the timing
            time_rollout(model, context, actions, name, args.seed)
    totals = {name: [] for name in PATHS}
    for _ in range(args.repeats):  # the paths take turns, so a slow spell of the machine hits all
        for name in PATHS:  # the total without the parts' synchronisations, then the parts
            totals[name].append(time_rollout(model, context, actions, name, args.seed, split=False)[0])
            runs[name].append(time_rollout(model, context, actions, name, args.seed))
    for name in PATHS:
        split_total, tf, tok = (statistics.median(r[i] for r in runs[name]) for i in range(3))
        results[name] = (statistics.median(totals[name]), tf, tok, runs[name][0][3], split_total)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            time_rollout(model, context, actions, "kv-cache", args.seed)
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=60))
    cached = results["kv-cache"][3]
    same = {}
    for name in PATHS[1:]:  # in bf16 two orders of summation can sample a different token now and then
        other = results[name][3]
        same[name] = ("yes" if torch.equal(cached, other)
                      else f"no ({(cached == other).float().mean().item():.1%} of pixels equal)")
    n = B * k
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    if model._decoding_conv_dtype() is not None:
        precision += " (decoder convolutions in bf16: sampling.cpu_bf16_decoding)"
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"iVideoGPT imagination: transformer={args.transformer} tokenizer={args.tokenizer} "
          f"({params:.1f}M parameters) device={device} {precision} B={B} k={k} "
          f"threads={torch.get_num_threads()} malloc={malloc}"
          + "".join(f" {flag}" for flag, on in (("compile", args.compile), ("channels-last", args.channels_last),
                                               ("cudnn-benchmark", args.cudnn_benchmark)) if on))
    print(f"{'path':<13} {'rollout s':>10} {'transitions/s':>14} {'transformer s':>14} {'tf transitions/s':>17} "
          f"{'tokenizer s':>12}")
    for name, (total, tf, tok, *_) in results.items():
        print(f"{name:<13} {total:>10.3f} {n / total:>14.1f} {tf:>14.3f} {n / tf:>17.1f} {tok:>12.3f}")
    print("frames identical to kv-cache: " + ", ".join(f"{name} {v}" for name, v in same.items()))
    ratio = {name: results[name][0] / results["kv-cache"][0] for name in PATHS[1:]}
    tf_ratio = {name: results[name][1] / results["kv-cache"][1] for name in PATHS[1:]}
    for name in PATHS[1:]:
        print(f"kv-cache vs {name}: {ratio[name]:.2f}x end to end, {tf_ratio[name]:.2f}x transformer only")
    # Amdahl: the cache speeds up the transformer only; the rest is paid by every path (from the
    # split runs, whose total and parts were timed together).
    shared = results["kv-cache"][4] - results["kv-cache"][1]
    print(f"the cached path spends {shared:.3f} s outside the transformer (tokenizer "
          f"{results['kv-cache'][2]:.3f} s, and the rest): even a free transformer would be "
          f"{results['re-prefill'][4] / shared:.2f}x faster than re-prefill end to end")
    if args.flops:
        flops = count_flops(args)
        for name in PATHS:
            print(f"work, {name}: {flops[name] / 1e9:.1f} GFLOP per rollout "
                  f"({flops[name] / flops['kv-cache']:.2f}x the cached path's), "
                  f"{flops[name] / results[name][0] / 1e9:.0f} GFLOP/s achieved end to end")
        weights, kv, positions = token_step_bytes(model, context)
        steps = k * (model.layout.future_tokens + 1)
        print(f"memory read per token step ({steps} steps per rollout): weights {weights / 2**20:.1f} MiB, "
              f"keys and values {kv / 2**20:.1f} MiB ({positions} positions; the CPU step reads only "
              f"those written so far)")
    for name, mib in peak_mib.items():
        print(f"peak GPU memory, {name}: {mib:.0f} MiB (weights included; a first rollout, its buffers built)")
    print(f"SUMMARY kv-cache {n / results['kv-cache'][0]:.1f} transitions/s: "
          f"{ratio['official loop']:.2f}x the official loop ({n / results['official loop'][0]:.1f}/s), "
          f"{ratio['re-prefill']:.2f}x re-prefill ({n / results['re-prefill'][0]:.1f}/s) end to end; "
          f"transformer only {tf_ratio['official loop']:.2f}x / {tf_ratio['re-prefill']:.2f}x "
          f"({args.transformer}/{args.tokenizer}, B={B}, k={k}, {device})")


if __name__ == "__main__":
    main()
