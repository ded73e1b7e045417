"""Check that this toolkit's DrQ-v2 agent updates exactly as the official facebookresearch/drqv2.

Given a checkout of https://github.com/facebookresearch/drqv2 (nothing is downloaded here), the
script builds our ``DrQV2Agent`` and the official one with the same sizes, copies our weights into
the official modules, and runs several updates on the same n-step batches, seeding the torch RNG
identically before each so that both draw the same policy noise. It prints the largest difference
of every reported loss and of every network's parameters after the updates, and exits with status
1 if any exceeds ``--tolerance``:

    python scripts/check_drqv2_equivalence.py --official-repo ~/src/drqv2

The random-shift augmentation is switched off in both (the two implementations draw their shifts
differently); ``tests/test_agent.py`` checks ours against integer shifts separately.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from mbrl.agent import DrQV2Agent  # noqa: E402
from mbrl.replay import TransitionBatch  # noqa: E402

OBS_SHAPE, ACTION_DIM, BATCH = (9, 84, 84), 4, 32  # a 3-frame stack at DrQ-v2's 84 px
SIZES = dict(lr=1e-3, feature_dim=50, hidden_dim=64, critic_target_tau=0.01, stddev_clip=0.3, num_expl_steps=0)
STDDEV = 0.2  # exploration noise of the target policy and the actor loss (drawn from the seeded RNG)
N_STEP_DISCOUNT = 0.99 ** 3


def import_official_agent(repo: Path) -> type:
    if not (repo / "drqv2.py").is_file() or not (repo / "utils.py").is_file():
        raise SystemExit(f"{repo} is not a checkout of facebookresearch/drqv2 (drqv2.py / utils.py missing); "
                         "clone https://github.com/facebookresearch/drqv2.")
    sys.path.insert(0, str(repo))
    import drqv2  # the official module

    return drqv2.DrQV2Agent


def official_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our critic's parameter names -> the official's (its Q heads are Q1 / Q2)."""
    return {k.replace("q1.", "Q1.").replace("q2.", "Q2."): v for k, v in state.items()}


def largest_difference(ours: torch.nn.Module, official: torch.nn.Module) -> float:
    return max((a - b).abs().max().item() for a, b in zip(ours.parameters(), official.parameters()))


def compare(repo: Path, updates: int, seed: int) -> dict[str, float]:
    """Largest differences after ``updates`` identical updates: per metric and per network."""
    Official = import_official_agent(repo)
    torch.manual_seed(seed)
    ours = DrQV2Agent(OBS_SHAPE, ACTION_DIM, "cpu", stddev_schedule=str(STDDEV), aug_pad=0, **SIZES)
    official = Official(OBS_SHAPE, (ACTION_DIM,), "cpu", update_every_steps=1, stddev_schedule=str(STDDEV),
                        use_tb=True, **SIZES)
    official.aug = torch.nn.Identity()
    for name in ("encoder", "actor", "critic", "critic_target"):
        getattr(official, name).load_state_dict(official_names(getattr(ours, name).state_dict()))
    diffs: dict[str, float] = {}
    g = torch.Generator().manual_seed(seed)
    for i in range(updates):
        obs = torch.randint(0, 256, (BATCH, *OBS_SHAPE), dtype=torch.uint8, generator=g)
        next_obs = torch.randint(0, 256, (BATCH, *OBS_SHAPE), dtype=torch.uint8, generator=g)
        action = torch.rand(BATCH, ACTION_DIM, generator=g) * 2 - 1
        reward = torch.randn(BATCH, generator=g)
        discount = torch.full((BATCH,), N_STEP_DISCOUNT)
        torch.manual_seed(seed + i)
        ours_metrics = ours.update(TransitionBatch(obs, action, reward, discount, next_obs), step=i)
        torch.manual_seed(seed + i)
        official_metrics = official.update(iter([(obs, action, reward[:, None], discount[:, None], next_obs)]), step=i)
        for key, value in official_metrics.items():
            if key in ours_metrics:
                diffs[key] = max(diffs.get(key, 0.0), abs(float(ours_metrics[key]) - float(value)))
    for name in ("encoder", "actor", "critic", "critic_target"):
        diffs[f"{name} parameters"] = largest_difference(getattr(ours, name), getattr(official, name))
    return diffs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official-repo", type=Path, required=True, help="a checkout of facebookresearch/drqv2")
    p.add_argument("--updates", type=int, default=3, help="updates on fresh batches")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=1e-5, help="largest allowed difference")
    args = p.parse_args(argv)
    diffs = compare(args.official_repo.expanduser().resolve(), args.updates, args.seed)
    for key, value in diffs.items():
        print(f"{key:>24}: {value:.3g}")
    bad = [k for k, v in diffs.items() if not v <= args.tolerance]
    print("MATCH" if not bad else f"DIFFER: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
