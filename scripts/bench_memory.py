"""Long-horizon consistency of Vid2World's memories (window, history, VRAG) in a pose-keyed room.

    python scripts/bench_memory.py                      # CPU, a few minutes
    python scripts/bench_memory.py --tiny               # seconds (used by tests/test_memory.py)
    python scripts/bench_memory.py --device cuda --train-steps 3000 --view 64

The scene is made for the purpose: each episode is a new random "room" texture, ROOM_SCALE
times larger than the view; the action moves the camera window by up to STEP_FRACTION of the
view per step (a 2-D camera pan), and the key of a frame is the camera pose. A tiny Vid2World is
trained for a fixed number of steps per memory (each the way it is sampled: history and VRAG
build training clips from long segments), on random walks that often turn back.

Evaluation: the camera explores ``--explore`` steps (real frames, given as context), then the
model imagines the way back and the way out again (2 x explore >= 100 frames). Every imagined
view was seen before, most of them long before (beyond any window), so the ground truth is
recoverable only from memory. Revisited frames are scored against the truth (PSNR, SSIM); the
cost is imagined frames/s and the peak bytes the rollout state stores. All memories get the
same number of context frames (window memory: window + retrieved recent frames).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mbrl.utils import script_device  # noqa: E402
from worldmodel.memory import KeyedSegmentBatch  # noqa: E402
from worldmodel.vid2world.model import Vid2World  # noqa: E402

ROOM_SCALE = 3  # room side / view side
STEP_FRACTION = 8  # a full action moves the camera by view / STEP_FRACTION pixels
ACTION_LEVELS = (-1.0, -0.5, 0.0, 0.5, 1.0)  # per-axis actions of the random walks
TURN_PROB = 0.2  # a walk changes its action with this probability per step
BACK_PROB = 0.5  # share of training segments that retrace their own path after a random turn point
BLOBS_PER_ROOM = 24  # coloured rectangles painted over a smooth random background
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2
# The bench model: smaller than Vid2World's "tiny" preset, so that CPU training takes a minute.
BENCH_BACKBONE = dict(channels=(16, 32), attention_resolutions=(), head_dim=8, emb_dim=32, groups=8)


# ----- the scene -----
@dataclass
class Scene:
    view: int
    generator: torch.Generator

    @property
    def room(self) -> int:
        return ROOM_SCALE * self.view

    @property
    def step(self) -> int:
        return max(1, self.view // STEP_FRACTION)

    @property
    def max_pose(self) -> int:
        return self.room - self.view

    def rooms(self, n: int) -> torch.Tensor:
        """n random textures uint8 [n, 3, R, R]: a smooth colour field plus coloured rectangles."""
        g, R = self.generator, self.room
        base = torch.rand(n, 3, 6, 6, generator=g)
        tex = F.interpolate(base, size=(R, R), mode="bicubic", align_corners=False).clamp(0, 1)
        for i in range(n):
            for _ in range(BLOBS_PER_ROOM):
                w, h = (torch.randint(R // 16, R // 5, (2,), generator=g)).tolist()
                x = torch.randint(0, R - w, (1,), generator=g).item()
                y = torch.randint(0, R - h, (1,), generator=g).item()
                tex[i, :, y:y + h, x:x + w] = torch.rand(3, 1, 1, generator=g)
        return (tex * 255).round().to(torch.uint8)

    def render(self, rooms: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """Views uint8 [n, T, 3, V, V] of rooms [n, 3, R, R] at poses long [n, T, 2] (x, y)."""
        n, T = pose.shape[:2]
        out = torch.empty(n, T, 3, self.view, self.view, dtype=torch.uint8)
        for i in range(n):
            for t in range(T):
                x, y = pose[i, t].tolist()
                out[i, t] = rooms[i, :, y:y + self.view, x:x + self.view]
        return out

    def walk(self, n: int, steps: int, retrace: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Random walks that stay inside the room: poses long [n, steps+1, 2], actions [n, steps, 2].
        ``retrace``: after a random turn point the walk goes back along its own path."""
        g = self.generator
        levels = torch.tensor(ACTION_LEVELS)
        pose = torch.randint(0, self.max_pose + 1, (n, 2), generator=g)
        action = levels[torch.randint(0, len(levels), (n, 2), generator=g)]
        poses, actions = [pose], []
        turn = torch.randint(steps // 3, steps, (1,), generator=g).item() if retrace else steps
        for t in range(steps):
            if t >= turn and 2 * turn - t - 1 >= 0:  # retrace: undo step 2*turn - t - 1
                a = -actions[2 * turn - t - 1]
            else:
                change = torch.rand(n, 1, generator=g) < TURN_PROB
                a = torch.where(change, levels[torch.randint(0, len(levels), (n, 2), generator=g)], action)
                nxt = pose + (a * self.step).round().long()
                a = torch.where((nxt < 0) | (nxt > self.max_pose), -a, a)  # reflect off the walls
                action = a
            pose = pose + (a * self.step).round().long()
            poses.append(pose)
            actions.append(a)
        return torch.stack(poses, 1), torch.stack(actions, 1)

    def key(self, pose: torch.Tensor) -> torch.Tensor:
        """Frame keys: the camera pose in units of a full step (one move = 1)."""
        return pose.float() / self.step


def segments(scene: Scene, n: int, length: int) -> KeyedSegmentBatch:
    rooms = scene.rooms(n)
    retrace = torch.rand(1, generator=scene.generator).item() < BACK_PROB
    pose, action = scene.walk(n, length - 1, retrace)
    obs = scene.render(rooms, pose)
    return KeyedSegmentBatch(obs, action, torch.zeros(n, length - 1), scene.key(pose))


# ----- metrics -----
def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of uint8 frames [..., 3, H, W] -> [...]."""
    mse = (a.float() - b.float()).div(255).pow(2).flatten(-3).mean(-1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM (Gaussian window 11, sigma 1.5, per channel, valid region) of uint8 frames
    [..., 3, H, W] -> [...]."""
    lead = a.shape[:-3]
    x = a.reshape(-1, *a.shape[-3:]).float() / 255
    y = b.reshape(-1, *b.shape[-3:]).float() / 255
    size = min(SSIM_WINDOW, x.shape[-1])
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g1 = torch.exp(-coords ** 2 / (2 * SSIM_SIGMA ** 2))
    g1 = g1 / g1.sum()
    kernel = (g1[:, None] * g1[None]).expand(3, 1, size, size)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, kernel, groups=3)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    s = ((2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2)) / ((mx ** 2 + my ** 2 + SSIM_C1) * (vx + vy + SSIM_C2))
    return s.flatten(1).mean(1).reshape(lead)


def far_revisits(poses: torch.Tensor, start: int, context: int) -> torch.Tensor:
    """bool [n, T - start]: for each frame t >= start of poses [n, T, 2], whether its pose was
    last seen more than ``context`` frames earlier: seen before t - context and not among the
    ``context`` frames just before t. Only such frames test memory: a pose also seen within the
    last ``context`` frames is in reach of a plain sliding window of the same context size."""
    far = []
    for t in range(start, poses.shape[1]):
        recent_from = max(0, t - context)
        same = (poses[:, :t] == poses[:, t:t + 1]).all(-1)  # [n, t]
        far.append(same[:, :recent_from].any(1) & ~same[:, recent_from:].any(1))
    return torch.stack(far, 1) if far else torch.zeros(poses.shape[0], 0, dtype=torch.bool)


# ----- the benchmark -----
def memory_configs(window: int, retrieved: int, max_frames: int, names: list[str]) -> dict[str, dict]:
    every = {
        "window": dict(name="window", window=window + retrieved),
        "history": dict(name="history", window=window, retrieved=retrieved, max_frames=max_frames),
        "vrag": dict(name="vrag", window=window, retrieved=retrieved, key="state", key_dim=2, max_frames=max_frames),
        "vrag_pixel": dict(name="vrag", window=window, retrieved=retrieved, key="pixel", key_size=4,
                           max_frames=max_frames),
    }
    unknown = set(names) - set(every)
    if unknown:
        raise SystemExit(f"unknown memories {sorted(unknown)}; choose from {sorted(every)}")
    return {n: every[n] for n in names}


def train(model: Vid2World, scene: Scene, steps: int, batch: int, length: int, device: torch.device) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        model.update(segments(scene, batch, length).to(device), parts=("diffusion",))  # no rewards here
    return time.perf_counter() - start


@torch.no_grad()
def evaluate(model: Vid2World, scene: Scene, episodes: int, explore: int, device: torch.device,
             seed: int) -> dict[str, float]:
    """Explore (real context), then imagine back and out again; score the imagined views."""
    rooms = scene.rooms(episodes)
    pose_out, act_out = scene.walk(episodes, explore, retrace=False)
    act_back = -act_out.flip(1)
    pose_back = pose_out.flip(1)[:, 1:]
    pose_again = pose_out[:, 1:]
    actions = torch.cat([act_back, act_out], 1)  # [n, 2 * explore, 2]
    poses = torch.cat([pose_out, pose_back, pose_again], 1)  # [n, 3 * explore + 1, 2]
    truth = scene.render(rooms, poses)
    keys = scene.key(poses).to(device)
    model.eval()
    state = model.reset(truth[:, :explore + 1].to(device), generator=torch.Generator(device).manual_seed(seed),
                        context_keys=keys[:, :explore + 1] if model.state_keys else None)
    peak, frames = state.nbytes(), []
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for i in range(actions.shape[1]):
        t = explore + 1 + i
        frame, _, state = model.step(state, actions[:, i].to(device),
                                     key=keys[:, t] if model.state_keys else None)
        frames.append(frame.cpu())
        peak = max(peak, state.nbytes())
    sync()
    elapsed = time.perf_counter() - start
    imagined = torch.stack(frames, 1)  # [n, 2 * explore, 3, V, V]
    gt = truth[:, explore + 1:]
    far = far_revisits(poses, explore + 1, model.memory.context_size)
    p, s = psnr(imagined, gt), ssim(imagined, gt)
    return {"psnr_far": p[far].mean().item(), "ssim_far": s[far].mean().item(),
            "psnr_all": p.mean().item(), "ssim_all": s.mean().item(), "far_frames": int(far.sum()),
            "fps": imagined.shape[0] * imagined.shape[1] / elapsed, "peak_kib": peak / 1024,
            "stored": state.frames.shape[1], "horizon": imagined.shape[1]}


def hold_last_frame(scene: Scene, episodes: int, explore: int, context: int) -> tuple[float, float]:
    """Reference without a model: every imagined frame = the last real frame (PSNR, SSIM on far
    revisits), drawn from the same evaluation episodes as ``evaluate``."""
    rooms = scene.rooms(episodes)
    pose_out, _ = scene.walk(episodes, explore, retrace=False)
    poses = torch.cat([pose_out, pose_out.flip(1)[:, 1:], pose_out[:, 1:]], 1)
    truth = scene.render(rooms, poses)
    gt = truth[:, explore + 1:]
    held = truth[:, explore:explore + 1].expand_as(gt)
    far = far_revisits(poses, explore + 1, context)
    return psnr(held, gt)[far].mean().item(), ssim(held, gt)[far].mean().item()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke run (tests)")
    p.add_argument("--memories", nargs="+", default=["window", "history", "vrag"],
                   help="window | history | vrag | vrag_pixel")
    p.add_argument("--view", type=int, default=16, help="view side in pixels (room = 3x)")
    p.add_argument("--window", type=int, default=4, help="recent frames (window memory: window + retrieved)")
    p.add_argument("--retrieved", type=int, default=4, help="older frames (history, vrag)")
    p.add_argument("--max-frames", type=int, default=64, help="frames a rollout stores (history, vrag)")
    p.add_argument("--train-steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--segment", type=int, default=20, help="training segment length")
    p.add_argument("--explore", type=int, default=50, help="real steps; imagination = 2 x explore")
    p.add_argument("--episodes", type=int, default=4, help="evaluation rollouts in parallel")
    p.add_argument("--sampling-steps", type=int, default=4)
    p.add_argument("--guidance", type=float, default=2.5, help="action guidance scale (1: none)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = p.parse_args(argv)
    if args.tiny:
        args.view, args.window, args.retrieved, args.max_frames = 16, 2, 2, 12
        args.train_steps, args.batch, args.segment, args.explore, args.episodes = 3, 2, 8, 8, 2
        args.sampling_steps = 2
    return args



def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    device = script_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    results: dict[str, dict[str, float]] = {}
    print(f"memory bench: {device.type}, view {args.view}, room {ROOM_SCALE * args.view}, "
          f"train {args.train_steps} steps x {args.batch} segments of {args.segment}, explore {args.explore} "
          f"real, imagine {2 * args.explore}, {args.episodes} episodes, {args.sampling_steps} DDIM steps")
    for name, mem in memory_configs(args.window, args.retrieved, args.max_frames, args.memories).items():
        torch.manual_seed(args.seed)
        scene = Scene(args.view, torch.Generator().manual_seed(args.seed))
        model = Vid2World(image_size=args.view, action_dim=2, backbone=BENCH_BACKBONE, memory=mem, lr=args.lr,
                          sampling_steps=args.sampling_steps, history_noise_level=10,
                          guidance_scale=args.guidance).to(device)
        # the window model trains on windows (longer segments only cost time: it never sees more)
        length = args.segment if mem["name"] != "window" else min(args.segment, model.memory.context_size + 1)
        train_s = train(model, scene, args.train_steps, args.batch, length, device)
        print(f"  {name}: trained in {train_s:.0f} s", flush=True)
        eval_scene = Scene(args.view, torch.Generator().manual_seed(args.seed + 1))  # same for every memory
        results[name] = {**evaluate(model, eval_scene, args.episodes, args.explore, device, args.seed),
                         "train_s": train_s, "context": model.memory.context_size}
    print(f"{'memory':<10} | {'ctx':>3} | {'PSNR far':>8} | {'SSIM far':>8} | {'PSNR all':>8} | {'SSIM all':>8} | "
          f"{'frames/s':>8} | {'stored':>6} | {'peak KiB':>8} | {'train s':>7}")
    for name, r in results.items():
        print(f"{name:<10} | {r['context']:>3} | {r['psnr_far']:>8.2f} | {r['ssim_far']:>8.3f} | "
              f"{r['psnr_all']:>8.2f} | {r['ssim_all']:>8.3f} | {r['fps']:>8.1f} | {r['stored']:>6} | "
              f"{r['peak_kib']:>8.1f} | {r['train_s']:>7.1f}")
    hold = hold_last_frame(Scene(args.view, torch.Generator().manual_seed(args.seed + 1)), args.episodes,
                           args.explore, args.window + args.retrieved)
    print(f"reference without a model, holding the last real frame: PSNR far {hold[0]:.2f}, SSIM far {hold[1]:.3f}")
    base = results.get("window")
    best = max(results, key=lambda n: results[n]["psnr_far"] if not math.isnan(results[n]["psnr_far"]) else -1)
    gain = "" if base is None else f" ({results[best]['psnr_far'] - base['psnr_far']:+.2f} dB vs window)"
    print(f"summary: {2 * args.explore}-frame imagined revisits ({results[best]['far_frames']} far frames): "
          f"best {best} PSNR {results[best]['psnr_far']:.2f} dB / SSIM {results[best]['ssim_far']:.3f}{gain}; "
          + ", ".join(f"{n} {r['psnr_far']:.2f}" for n, r in results.items()))
    return results


if __name__ == "__main__":
    main()
