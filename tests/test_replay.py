"""Real replay buffer: frame stacks, n-step windows, episode boundaries, memory, eviction.

Every test episode writes (episode id, t) into its pixels (channel 0 = id, channel 1 = t) and
actions, so what a sample holds can be decoded and checked against a hand computation.
"""
import tracemalloc

import numpy as np
import pytest
import torch

from mbrl.replay import RealReplayBuffer, TransitionBatch
from worldmodel.episodes import Episode, EpisodeFormatError

SIZE = 16  # frame size for the decoding tests
ACTION_DIM = 2
FS = 3  # frame stack
NSTEP = 3
GAMMA = 0.9


def make_episode(ep_id: int, steps: int, size: int = SIZE,
                 terminal_at_end: bool = False) -> Episode:
    obs = np.zeros((steps + 1, 3, size, size), dtype=np.uint8)
    obs[:, 0] = ep_id
    obs[:, 1] = np.arange(steps + 1)[:, None, None]
    obs[:, 2] = 7
    action = np.stack([np.full(steps, ep_id), np.arange(steps)], 1).astype(np.float32)
    reward = (ep_id * 100 + np.arange(steps) + 1).astype(np.float32)
    terminal = np.zeros(steps, dtype=bool)
    terminal[-1] = terminal_at_end
    return Episode(obs=obs, action=action, reward=reward, success=np.zeros(steps, dtype=bool),
                   terminal=terminal)


def decode(stack: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """[B, 3*k, H, W] or [B, k, 3, H, W] -> (episode ids [B, k], times [B, k])."""
    frames = stack.reshape(stack.shape[0], -1, 3, *stack.shape[-2:]).numpy()
    assert (frames[:, :, 2] == 7).all()
    return frames[:, :, 0, 0, 0].astype(int), frames[:, :, 1, 0, 0].astype(int)


def filled_buffer(lengths, capacity=None, terminal_ids=(), **kwargs):
    capacity = capacity or sum(n + 1 for n in lengths)
    buf = RealReplayBuffer(capacity, SIZE, ACTION_DIM, FS, NSTEP, GAMMA, **kwargs)
    episodes = {}
    for i, n in enumerate(lengths):
        episodes[i] = make_episode(i, n, terminal_at_end=i in terminal_ids)
        buf.add_episode(episodes[i])
    return buf, episodes


def test_sample_stacks_windows_and_nstep_returns_match_hand_computation():
    lengths = [4, 9, 1, 15, 2]
    buf, episodes = filled_buffer(lengths)
    assert len(buf) == sum(lengths) and buf.num_episodes == len(lengths)
    batch = buf.sample(2000, np.random.default_rng(0))
    assert isinstance(batch, TransitionBatch)
    assert batch.obs.dtype == torch.uint8 and batch.obs.shape == (2000, 3 * FS, SIZE, SIZE)
    assert batch.next_obs.shape == batch.obs.shape
    assert batch.reward.dtype == batch.discount.dtype == batch.action.dtype == torch.float32
    ids, times = decode(batch.obs)
    next_ids, next_times = decode(batch.next_obs)
    # Whole stacks, and next stacks, come from the sampled episode: nothing crosses a boundary.
    assert (ids == ids[:, -1:]).all() and (next_ids == ids).all()
    t = times[:, -1]
    seen_starts = 0
    for b in range(len(t)):
        ep, steps = ids[b, 0], lengths[ids[b, 0]]
        assert 0 <= t[b] < steps
        # Stack = frames t-2, t-1, t with the first frame repeated before the episode start.
        assert list(times[b]) == [max(t[b] + k, 0) for k in range(1 - FS, 1)]
        seen_starts += t[b] < FS - 1
        window = min(NSTEP, steps - t[b])
        assert next_times[b, -1] == t[b] + window <= steps
        assert list(next_times[b]) == [max(t[b] + window + k, 0) for k in range(1 - FS, 1)]
        rewards = episodes[ep].reward
        expected = sum(GAMMA ** i * rewards[t[b] + i] for i in range(window))
        assert batch.reward[b].item() == pytest.approx(expected, rel=1e-6)
        assert batch.discount[b].item() == pytest.approx(GAMMA ** window, rel=1e-6)
        assert batch.action[b].tolist() == [ep, t[b]]
    assert seen_starts > 0
    # Every stored transition is reachable, including the last steps of each episode.
    assert len(set(zip(ids[:, 0], t))) == sum(lengths)


def test_nstep_discount_is_cut_at_a_terminal_step():
    buf, episodes = filled_buffer([10, 10], terminal_ids={1})
    batch = buf.sample(1000, np.random.default_rng(1))
    ids, times = decode(batch.obs)
    t = times[:, -1]
    for ep in (0, 1):
        near_end = (ids[:, 0] == ep) & (t >= 10 - NSTEP)
        far = (ids[:, 0] == ep) & (t < 10 - NSTEP)
        assert near_end.any() and far.any()
        assert torch.allclose(batch.discount[far], torch.tensor(GAMMA ** NSTEP))
        if ep == 1:  # the window reaches the terminal step: no bootstrap
            assert (batch.discount[near_end] == 0).all()
        else:  # time-limit end: bootstrap from the last frame with the shorter window
            expected = torch.tensor(GAMMA ** (10 - t[near_end]), dtype=torch.float32)
            assert torch.allclose(batch.discount[near_end], expected)
    # The terminal step's own reward is still counted.
    last = np.flatnonzero((ids[:, 0] == 1) & (t == 9))[0]
    assert batch.reward[last].item() == episodes[1].reward[9]


def test_memory_per_transition_is_one_frame_at_64x64():
    steps, episodes, size, action_dim = 100, 12, 64, 4
    raw_frame = 3 * size * size
    assert raw_frame == 12288
    episode = make_episode(1, steps, size=size)
    episode.action = np.zeros((steps, action_dim), dtype=np.float32)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        buf = RealReplayBuffer(episodes * (steps + 1), size, action_dim, FS, NSTEP, GAMMA)
        for _ in range(episodes):
            buf.add_episode(episode)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(buf) == episodes * steps
    assert buf.nbytes() / len(buf) <= 1.1 * raw_frame
    assert held / len(buf) <= 1.1 * raw_frame  # what the process really allocated


def test_memmap_mode_samples_the_same_as_ram(tmp_path):
    lengths = [5, 8, 3, 12]
    ram, _ = filled_buffer(lengths, capacity=25)  # wraps around the end of the arrays
    disk, _ = filled_buffer(lengths, capacity=25, memmap_dir=str(tmp_path))
    assert isinstance(disk._frames, np.memmap)
    assert not list(tmp_path.iterdir())  # scratch file unlinked once mapped
    a, b = ram.sample(64, np.random.default_rng(3)), disk.sample(64, np.random.default_rng(3))
    for name in ("obs", "action", "reward", "discount", "next_obs"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(ram.sample_segments(8, 4, np.random.default_rng(4)).obs,
                       disk.sample_segments(8, 4, np.random.default_rng(4)).obs)


def test_oldest_episodes_are_evicted_when_full():
    buf, _ = filled_buffer([10] * 5, capacity=40)  # room for 3 episodes of 11 frames
    assert buf.num_episodes == 3 and len(buf) == 30
    batch = buf.sample(500, np.random.default_rng(5))
    ids, times = decode(batch.obs)
    assert set(ids[:, 0]) == {2, 3, 4}  # episode 4 wraps around the end of the arrays
    next_ids, next_times = decode(batch.next_obs)
    assert (next_ids == ids).all()
    assert (next_times[:, -1] - times[:, -1] == np.minimum(NSTEP, 10 - times[:, -1])).all()
    with pytest.raises(ValueError, match="capacity"):
        buf.add_episode(make_episode(9, 40))


def test_sample_segments_stay_inside_one_episode():
    lengths = [3, 12, 6, 20]
    buf, episodes = filled_buffer(lengths, capacity=41)  # evicts episode 0; episode 3 wraps
    assert buf.num_episodes == 3
    seg = buf.sample_segments(300, 8, np.random.default_rng(6))
    assert seg.obs.shape == (300, 8, 3, SIZE, SIZE) and seg.obs.dtype == torch.uint8
    assert seg.action.shape == (300, 7, ACTION_DIM) and seg.reward.shape == (300, 7)
    ids, times = decode(seg.obs)
    assert (ids == ids[:, :1]).all()
    assert set(ids[:, 0]) == {1, 3}  # episode 2 has only 7 frames: skipped
    assert (np.diff(times, axis=1) == 1).all()
    for b in range(len(ids)):
        ep = ids[b, 0]
        assert times[b, -1] <= lengths[ep]
        assert seg.action[b, :, 1].tolist() == times[b, :-1].tolist()  # action[t] from obs[t]
        assert seg.reward[b].tolist() == episodes[ep].reward[times[b, :-1]].tolist()
    with pytest.raises(ValueError, match="no stored episode has 30 frames"):
        buf.sample_segments(4, 30, np.random.default_rng(0))


def test_sample_context_repeats_first_frame_and_stays_in_episode():
    lengths = [2, 9, 4]
    buf, _ = filled_buffer(lengths)
    ctx = buf.sample_context(400, 4, np.random.default_rng(7))
    assert ctx.shape == (400, 4, 3, SIZE, SIZE) and ctx.dtype == torch.uint8
    ids, times = decode(ctx)
    assert (ids == ids[:, :1]).all()
    t = times[:, -1]
    assert all(t[b] < lengths[ids[b, 0]] for b in range(len(t)))  # never an episode's last frame
    assert (times == np.maximum(t[:, None] + np.arange(-3, 1), 0)).all()
    assert (t < 3).any()


def test_bad_input_gives_clear_errors():
    buf = RealReplayBuffer(100, SIZE, ACTION_DIM, FS, NSTEP, GAMMA)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(4, np.random.default_rng(0))
    with pytest.raises(EpisodeFormatError, match="frames are 8x8"):
        buf.add_episode(make_episode(0, 5, size=8))
    with pytest.raises(ValueError, match="frame_stack"):
        RealReplayBuffer(100, SIZE, ACTION_DIM, 0, NSTEP, GAMMA)
