"""MBPO pieces: the imagined buffer's n-step sampling and its alignment with the real buffer."""
import numpy as np
import pytest
import torch

from mbrl.agent import DrQV2Agent
from mbrl.mbpo import crossed, rollout_policy
from mbrl.replay import RealReplayBuffer
from mbrl.replay.imagined_buffer import ImaginedReplayBuffer
from worldmodel.episodes import Episode
from worldmodel.interface import Rollout

SIZE, ACTION_DIM, STACK, NSTEP, GAMMA = 16, 2, 3, 3, 0.9


def labelled_episode(length: int) -> Episode:
    """Frame t is filled with the value t; action t is (t, -t); reward t is t + 0.5."""
    obs = np.broadcast_to(np.arange(length + 1, dtype=np.uint8)[:, None, None, None],
                          (length + 1, 3, SIZE, SIZE)).copy()
    t = np.arange(length, dtype=np.float32)
    return Episode(obs=obs, action=np.stack([t, -t], 1) / 100, reward=t + 0.5,
                   success=np.zeros(length, bool))


def frame_ids(stack: torch.Tensor) -> list[int]:
    """The label of each frame in a stacked obs [3*fs, H, W]."""
    return [int(v) for v in stack.reshape(STACK, 3, SIZE, SIZE)[:, 0, 0, 0]]


def rollout_from_episode(episode: Episode, start: int, horizon: int) -> tuple[torch.Tensor, Rollout]:
    """The rollout a perfect world model would imagine from ``start`` with the episode's actions."""
    obs = torch.from_numpy(episode.obs)
    prefix_ids = [max(start - i, 0) for i in range(STACK - 1, 0, -1)]
    rollout = Rollout(obs=obs[start:start + horizon + 1][None],
                      action=torch.from_numpy(episode.action[start:start + horizon])[None],
                      reward=torch.from_numpy(episode.reward[start:start + horizon])[None])
    return obs[prefix_ids][None], rollout


def test_imagined_transitions_match_real_ones():
    """A rollout that equals the real data gives the same (obs, action, n-step reward, discount,
    next obs) as the real buffer, wherever the n-step window fits: rewards are aligned."""
    episode, horizon = labelled_episode(20), 6
    real = RealReplayBuffer(1000, SIZE, ACTION_DIM, STACK, NSTEP, GAMMA)
    real.add_episode(episode)
    imagined = ImaginedReplayBuffer(100, horizon, SIZE, ACTION_DIM, STACK, NSTEP, GAMMA)
    start = 5
    imagined.add(*rollout_from_episode(episode, start, horizon))
    batch = imagined.sample(256, np.random.default_rng(0))
    seen = set()
    for i in range(len(batch)):
        ids = frame_ids(batch.obs[i])
        t = ids[-1]
        assert ids == [max(t - 2, 0), max(t - 1, 0), t]
        assert start <= t < start + horizon
        np.testing.assert_allclose(batch.action[i].numpy(), episode.action[t])
        steps = min(NSTEP, start + horizon - t)  # truncated at the horizon
        expected = sum(GAMMA ** k * episode.reward[t + k] for k in range(steps))
        assert batch.reward[i].item() == pytest.approx(expected, rel=1e-6)
        assert batch.discount[i].item() == pytest.approx(GAMMA ** steps, rel=1e-6)
        assert frame_ids(batch.next_obs[i])[-1] == t + steps
        seen.add(t)
    assert seen == set(range(start, start + horizon))

    # Where the full n-step window fits, the real buffer gives exactly the same transition.
    real_batch = real.sample(512, np.random.default_rng(1))
    for i in range(len(real_batch)):
        t = frame_ids(real_batch.obs[i])[-1]
        if start <= t < start + horizon - NSTEP:
            j = [frame_ids(o)[-1] for o in batch.obs].index(t)
            for name in ("obs", "action", "reward", "discount", "next_obs"):
                torch.testing.assert_close(getattr(real_batch, name)[i], getattr(batch, name)[j])


def test_non_finite_rollouts_are_dropped_and_oldest_evicted():
    episode, horizon = labelled_episode(30), 4
    imagined = ImaginedReplayBuffer(2 * horizon, horizon, SIZE, ACTION_DIM, STACK, NSTEP, GAMMA)
    prefix, good = rollout_from_episode(episode, 3, horizon)
    bad = Rollout(obs=good.obs, action=good.action, reward=good.reward.clone())
    bad.reward[0, 1] = float("nan")
    assert imagined.add(prefix, bad) == 0
    assert imagined.total_dropped == 1 and len(imagined) == 0
    for start in (3, 10, 20):  # three rollouts into room for two: the first goes
        imagined.add(*rollout_from_episode(episode, start, horizon))
    assert len(imagined) == 2 * horizon
    starts = {frame_ids(o)[-1] for o in imagined.sample(200, np.random.default_rng(0)).obs}
    assert min(starts) >= 10


def test_policy_inside_world_model_sees_real_scaling():
    """The rollout policy stacks imagined uint8 frames like real ones: same frames, same action."""
    agent = DrQV2Agent((3 * STACK, SIZE, SIZE), ACTION_DIM, "cpu", lr=1e-4, feature_dim=8, hidden_dim=16,
                       critic_target_tau=0.01, stddev_schedule="0.2", stddev_clip=0.3, num_expl_steps=0,
                       aug_pad=1)
    episode = labelled_episode(10)
    frames = torch.from_numpy(episode.obs)
    prefix, context, imagined = frames[None, :1], frames[None, 1:3], frames[None, 3:5]
    policy = rollout_policy(agent, prefix, STACK, step=10**6)
    torch.manual_seed(3)
    inside = policy(torch.cat([context, imagined], 1))
    torch.manual_seed(3)
    real_stack = frames[2:5].reshape(1, -1, SIZE, SIZE)  # the real stack ending at frame 4
    outside = agent.act(real_stack, step=10**6, eval_mode=False)
    torch.testing.assert_close(inside, outside)


def test_crossed_counts_multiples():
    assert crossed(0, 2, 10) == 0
    assert crossed(8, 10, 10) == 1
    assert crossed(10, 12, 10) == 0
    assert crossed(38, 82, 20) == 3
    assert crossed(5, 9, 0) == 0
