"""Memory for long imagination: window / history / VRAG selection, bounds, training clips, Vid2World
rollouts with each memory, what a context frame contributes (retrieved by which key, with which
action and key offset) in training and sampling, YaRN context extension, and the consistency
benchmark at tiny scale."""
import dataclasses
import importlib.util
import os
import sys

import pytest
import torch

from worldmodel.interface import SegmentBatch, WorldModelConfigError
from worldmodel.memory import (HistoryMemory, KeyedSegmentBatch, LinearKeyDynamics, MemoryConfig, VRAGMemory,
                               WindowMemory, build_memory, gaps, key_distance, key_offset, pixel_key)
from worldmodel.vid2world import Vid2World
from worldmodel.vid2world.model import ImaginationState

REPO = os.path.join(os.path.dirname(__file__), "..")
MICRO = dict(channels=(16, 32), attention_resolutions=(), head_dim=8, emb_dim=32, groups=8)
SIZE, ACTION_DIM = 16, 2


def times(B: int, n: int) -> torch.Tensor:
    return torch.arange(n).expand(B, n)


# ----- selection -----
def test_window_selects_the_most_recent_frames():
    mem = build_memory("window", default_window=3)
    assert isinstance(mem, WindowMemory) and mem.capacity == 3 and mem.context_size == 3
    assert mem.select(times(2, 10)).tolist() == [[7, 8, 9]] * 2
    assert mem.select(times(1, 2)).tolist() == [[0, 1]]  # fewer stored than the window
    assert mem.keep(times(1, 5)).tolist() == [[2, 3, 4]]  # FIFO


def test_history_selects_exponentially_spaced_older_frames():
    mem = build_memory({"name": "history", "window": 4, "retrieved": 4}, default_window=7)
    assert isinstance(mem, HistoryMemory)
    assert mem.offsets() == [8, 16, 32, 64] and mem.capacity == 64
    # next frame t = 100: t-64, t-32, t-16, t-8, then the window t-4 .. t-1
    assert mem.select(times(1, 100)).tolist() == [[36, 68, 84, 92, 96, 97, 98, 99]]
    assert mem.select(times(1, 10)).tolist() == [[2, 6, 7, 8, 9]]  # only t-8 exists yet
    # positions follow the stored times once the FIFO has dropped the oldest frames
    stored = torch.arange(36, 100)[None]  # 64 frames kept, times 36 .. 99
    assert stored[0, mem.select(stored)[0]].tolist() == [36, 68, 84, 92, 96, 97, 98, 99]


def test_vrag_retrieves_nearest_keys_in_temporal_order():
    mem = build_memory({"name": "vrag", "window": 2, "retrieved": 3, "key": "state", "key_dim": 2}, 7)
    assert isinstance(mem, VRAGMemory)
    key = torch.tensor([[[5., 5.], [0., 1.], [9., 9.], [0., 0.], [0., 2.], [7., 7.], [0., 0.], [0., 0.]]])
    # the window (positions 6, 7) is never retrieved from, even though its keys match best
    idx = mem.select(times(1, 8), key, query=torch.tensor([[0., 0.]]))
    assert idx.tolist() == [[1, 3, 4, 6, 7]]  # keys (0,1), (0,0), (0,2), sorted by time
    idx = mem.select(times(1, 8), key, query=torch.tensor([[8., 8.]]))
    assert idx.tolist() == [[0, 2, 5, 6, 7]]


def test_key_weights_change_the_ranking():
    key = torch.tensor([[[1., 0.], [0., 2.], [3., 3.]]])
    query = torch.zeros(1, 2)
    plain = build_memory({"name": "vrag", "window": 1, "retrieved": 1, "key": "state", "key_dim": 2}, 7)
    weighted = build_memory({"name": "vrag", "window": 1, "retrieved": 1, "key": "state", "key_dim": 2,
                             "weights": [10.0, 1.0]}, 7)
    stored = torch.cat([key, torch.zeros(1, 1, 2)], 1)  # a 4th, most recent frame forms the window
    assert plain.select(times(1, 4), stored, query)[0, 0].item() == 0  # |(1,0)| < |(0,2)|
    assert weighted.select(times(1, 4), stored, query)[0, 0].item() == 1  # |(10,0)| > |(0,2)|
    d = key_distance(key, query, torch.tensor([10.0, 1.0]))
    torch.testing.assert_close(d, torch.tensor([[10.0, 2.0, (909.0) ** 0.5]]))
    cos = key_distance(torch.tensor([[[1., 0.], [2., 2.], [0., 3.]]]), torch.tensor([[1., 1.]]), None, "cosine")
    assert cos.argmin().item() == 1 and abs(cos[0, 1].item()) < 1e-6


def test_config_errors_are_clear():
    with pytest.raises(WorldModelConfigError, match="unknown memory 'rag'"):
        MemoryConfig(name="rag")
    with pytest.raises(WorldModelConfigError, match="key_dim"):
        MemoryConfig(name="vrag", key="state")
    with pytest.raises(WorldModelConfigError, match="one weight per key dim"):
        MemoryConfig(name="vrag", key="state", key_dim=3, weights=[1.0, 2.0])
    with pytest.raises(WorldModelConfigError, match="max_frames"):
        build_memory({"name": "vrag", "window": 10, "retrieved": 10, "max_frames": 8}, 7)
    with pytest.raises(WorldModelConfigError, match="unknown memory keys"):
        MemoryConfig.from_any({"name": "vrag", "topk": 3})
    with pytest.raises(WorldModelConfigError, match="key_size, key_dim and max_frames must be >= 1"):
        MemoryConfig(name="vrag", key_size=0)
    with pytest.raises(WorldModelConfigError, match="memory.window must be an integer"):
        MemoryConfig(name="vrag", window=2.7)
    with pytest.raises(WorldModelConfigError, match="the window memory retrieves nothing"):
        MemoryConfig(name="window", retrieved=5)
    assert MemoryConfig(name="history", key="state").key_dim is None  # history uses no keys


@pytest.mark.parametrize("settings", [
    {"name": "history", "key_size": 1, "weights": [1.0, 2.0, 3.0]},  # the right width, but history ranks nothing
    {"name": "history", "key": "state", "weights": [1.0, 1.0]},  # no key_dim: was int(None)
    {"name": "window", "distance": "cosine"},
])
def test_vrag_only_settings_are_refused_on_memories_that_retrieve_by_no_key(settings):
    with pytest.raises(WorldModelConfigError, match="only rank the vrag memory's retrieval"):
        MemoryConfig(**settings)


@pytest.mark.parametrize("weights, message", [
    (["a", "b"], "memory.weights must be numbers, got 'a' at index 0"),
    ([1.0, float("nan")], "finite and >= 0, got nan at index 1"),
    ([1.0, -2.0], "finite and >= 0, got -2.0 at index 1"),
    ("ab", "must be a list of numbers"),
    (3.0, "must be a list of numbers"),
])
def test_bad_key_weights_are_refused_clearly(weights, message):
    with pytest.raises(WorldModelConfigError, match=message):
        MemoryConfig(name="vrag", key="state", key_dim=2, weights=weights)


@pytest.mark.parametrize("memory, shortest", [
    ({"name": "window", "window": 3}, 4),  # a full window, then the target
    ({"name": "history", "window": 3, "retrieved": 2}, 5),  # + the nearest older frame, at t-4
    ({"name": "vrag", "window": 3, "retrieved": 2, "key_size": 4}, 7),  # + one candidate more than retrieved
])
def test_segments_too_short_for_the_memorys_clips_are_refused_at_start(memory, shortest):
    model = micro_model(memory)
    model.check_segment_length(shortest)
    with pytest.raises(WorldModelConfigError, match=f"segment_length >= {shortest}"):
        model.check_segment_length(shortest - 1)
    if memory["name"] == "vrag":  # at the shortest length, retrieval chooses: clips have gaps
        idx = model.memory.training_clip(64, shortest, torch.rand(64, shortest, 48), torch.device("cpu"))
        assert gaps(idx)[:, 1:].any()


def test_vrag_bound_drops_the_newer_frame_of_the_closest_key_pair():
    mem = build_memory({"name": "vrag", "window": 2, "retrieved": 2, "key": "state", "key_dim": 1,
                        "max_frames": 5}, 7)
    key = torch.tensor([[[0.], [10.], [0.1], [20.], [30.], [40.]]])  # 6 stored, capacity 5
    assert mem.keep(times(1, 6), key).tolist() == [[0, 1, 3, 4, 5]]  # (0, 0.1) closest: drop 2
    # the recent window is never dropped, even when its keys duplicate older ones
    key = torch.tensor([[[0.], [10.], [20.], [0.], [0.], [0.]]])
    kept = mem.keep(times(1, 6), key)
    assert kept[0, -2:].tolist() == [4, 5] and kept.shape == (1, 5)


def test_gaps_mark_frames_that_do_not_follow_their_predecessor():
    assert gaps(torch.tensor([[3, 9, 10, 11, 20]])).tolist() == [[True, True, False, False, True]]


def test_pixel_keys_and_linear_key_dynamics():
    frames = torch.zeros(2, 3, 3, SIZE, SIZE, dtype=torch.uint8)
    frames[:, :, 0, :, : SIZE // 2] = 255
    k = pixel_key(frames, 2)
    assert k.shape == (2, 3, 12) and k[0, 0, :4].tolist() == [1.0, 0.0, 1.0, 0.0]
    # a camera pan: pose_{t+1} = pose_t + 2 * action, learned exactly from real transitions
    g = torch.Generator().manual_seed(0)
    action = torch.rand(4, 9, 2, generator=g) * 2 - 1
    pose = torch.cat([torch.zeros(4, 1, 2), (2 * action).cumsum(1)], 1) + 3.0
    dyn = LinearKeyDynamics(action_dim=2, key_dim=2)
    dyn.observe(pose, action)
    torch.testing.assert_close(dyn(pose[:, 4], action[:, 4]), pose[:, 5], rtol=1e-3, atol=1e-3)


# ----- Vid2World with each memory -----
def micro_model(memory, **kw) -> Vid2World:
    return Vid2World(image_size=SIZE, action_dim=ACTION_DIM, backbone=MICRO, memory=memory,
                     sampling_steps=2, **kw)


def pan_segments(B: int, T: int, g: torch.Generator) -> KeyedSegmentBatch:
    """A camera panning over a random texture: frames, actions and the camera pose as key."""
    room = torch.randint(0, 256, (B, 3, 3 * SIZE, 3 * SIZE), generator=g, dtype=torch.uint8)
    action = torch.randint(-1, 2, (B, T - 1, 2), generator=g).float()
    pose = torch.cat([torch.full((B, 1, 2), SIZE), (2 * action).cumsum(1) + SIZE], 1).long()
    obs = torch.stack([torch.stack([room[b, :, y:y + SIZE, x:x + SIZE] for x, y in pose[b].tolist()])
                       for b in range(B)])
    return KeyedSegmentBatch(obs, action, torch.zeros(B, T - 1), pose.float())


MEMORIES = {
    "window": {"name": "window", "window": 3},
    "history": {"name": "history", "window": 2, "retrieved": 2},
    "vrag_pixel": {"name": "vrag", "window": 2, "retrieved": 2, "key_size": 4, "max_frames": 6},
    "vrag_state": {"name": "vrag", "window": 2, "retrieved": 2, "key": "state", "key_dim": 2, "max_frames": 6},
}


@pytest.mark.parametrize("name", list(MEMORIES))
def test_vid2world_trains_and_rolls_out_with_each_memory_within_bounds(name):
    g = torch.Generator().manual_seed(0)
    model = micro_model(MEMORIES[name])
    batch = pan_segments(2, 8, g)
    if name != "vrag_state":
        batch = SegmentBatch(batch.obs, batch.action, batch.reward)
    metrics = model.update(batch)
    assert torch.isfinite(torch.tensor(metrics["diffusion/loss"]))
    context = batch.obs[:, :3]
    keys = batch.key[:, :3] if name == "vrag_state" else None
    state = model.reset(context, generator=torch.Generator().manual_seed(1), context_keys=keys)
    cap = model.memory.capacity
    for i in range(20):  # a rollout far longer than the store
        key = state.key[:, -1] + 1.0 if name == "vrag_state" else None
        frame, reward, state = model.step(state, torch.zeros(2, ACTION_DIM), key=key)
        assert frame.shape == (2, 3, SIZE, SIZE) and frame.dtype == torch.uint8
        assert state.frames.shape[1] <= cap and state.time.shape == state.frames.shape[:2]
        assert (state.time[:, 1:] > state.time[:, :-1]).all()  # stores stay time-sorted
    assert state.frames.shape[1] == min(cap, 23) and state.time[0, -1].item() == 22
    if name.startswith("vrag"):
        assert state.key.shape[:2] == state.frames.shape[:2]
    # the interface's rollout works unchanged (pixel keys, window, history need no caller keys)
    if name != "vrag_state":
        roll = model.rollout(context, lambda f: torch.zeros(f.shape[0], ACTION_DIM), horizon=3)
        assert roll.obs.shape == (2, 4, 3, SIZE, SIZE)


def test_vrag_training_clip_retrieves_from_the_segment_by_the_target_key():
    model = micro_model({"name": "vrag", "window": 2, "retrieved": 2, "key": "state", "key_dim": 1})
    key = torch.tensor([[[0.], [5.], [1.], [7.], [9.], [8.], [3.], [0.9]]])  # target (t=7) key 0.9
    idx = model.memory.training_clip(1, 8, key, torch.device("cpu"))
    assert idx.tolist() == [[0, 2, 5, 6, 7]]  # nearest older keys 1 and 0, window 5-6, target
    assert gaps(idx).tolist() == [[True, True, True, False, False]]  # retrieved frames: null action


def test_state_keys_are_required_or_predicted():
    g = torch.Generator().manual_seed(0)
    model = micro_model(MEMORIES["vrag_state"])
    batch = pan_segments(2, 8, g)
    with pytest.raises(WorldModelConfigError, match="context_keys"):
        model.reset(batch.obs[:, :3])
    state = model.reset(batch.obs[:, :3], context_keys=batch.key[:, :3])
    with pytest.raises(WorldModelConfigError, match="key dynamics have not been fitted"):
        model.step(state, torch.zeros(2, ACTION_DIM))
    with pytest.raises(WorldModelConfigError, match="KeyedSegmentBatch"):
        model.update(SegmentBatch(batch.obs, batch.action, batch.reward))
    with pytest.raises(WorldModelConfigError, match="KeyedSegmentBatch"):  # a keyed batch whose key is None
        model.update(KeyedSegmentBatch(batch.obs, batch.action, batch.reward))
    with pytest.raises(WorldModelConfigError, match="segment_length"):
        model.update(pan_segments(2, 3, g))
    model.update(batch)  # fits the key dynamics: pose += 2 * action
    _, _, state = model.step(state, torch.ones(2, ACTION_DIM))
    torch.testing.assert_close(state.key[:, -1], batch.key[:, 2] + 2.0, rtol=1e-3, atol=1e-3)


def test_caller_keys_are_refused_where_unused_or_not_finite():
    g = torch.Generator().manual_seed(0)
    batch = pan_segments(2, 8, g)
    for name in ("vrag_pixel", "window"):  # these memories would silently ignore the caller's keys
        model = micro_model(MEMORIES[name])
        with pytest.raises(WorldModelConfigError, match="context_keys=None"):
            model.reset(batch.obs[:, :3], context_keys=batch.key[:, :3])
        state = model.reset(batch.obs[:, :3])
        with pytest.raises(WorldModelConfigError, match="key=None"):
            model.step(state, torch.zeros(2, ACTION_DIM), key=batch.key[:, 3])
    model = micro_model(MEMORIES["vrag_state"])
    bad = batch.key.clone()
    bad[0, 1, 0] = float("nan")
    with pytest.raises(WorldModelConfigError, match="context_keys has NaN or inf"):
        model.reset(batch.obs[:, :3], context_keys=bad[:, :3])
    with pytest.raises(WorldModelConfigError, match="batch.key has NaN or inf"):
        model.update(KeyedSegmentBatch(batch.obs, batch.action, batch.reward, bad))
    assert int(model.key_dynamics.count) == 0  # refused before the fit saw it
    state = model.reset(batch.obs[:, :3], context_keys=batch.key[:, :3])
    with pytest.raises(WorldModelConfigError, match="key has NaN or inf"):
        model.step(state, torch.zeros(2, ACTION_DIM), key=torch.full((2, 2), float("inf")))


# ----- what a context frame contributes, in training and sampling alike -----
# A stored rollout of six imagined frames whose state keys make the retrieval known: the window
# is positions 4, 5; the older candidates 0-3 have keys 0, 10, 1, 11. For the new frame's key 0.5
# VRAG retrieves positions 0 and 2; the newest stored key (12) would retrieve 1 and 3 instead.
RETRIEVAL = {"name": "vrag", "window": 2, "retrieved": 2, "key": "state", "key_dim": 1}
STORED_KEYS = [0.0, 10.0, 1.0, 11.0, 5.0, 12.0]
TARGET_KEY = 0.5


def stored_rollout(g: torch.Generator) -> ImaginationState:
    n = len(STORED_KEYS)
    return ImaginationState(frames=torch.randint(0, 256, (1, n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8),
                            prev_action=torch.rand(1, n, ACTION_DIM, generator=g) * 2 - 1,
                            action_known=torch.ones(1, n, dtype=torch.bool), generator=None,
                            time=torch.arange(n)[None], key=torch.tensor(STORED_KEYS)[None, :, None])


def keyed_micro_model(g: torch.Generator) -> Vid2World:
    """A state-key VRAG model whose key embedding is not zero (as after training), so a context
    frame's key offset changes the imagined frame."""
    model = micro_model(RETRIEVAL, action_dropout=0.0)
    with torch.no_grad():
        model.key_embedding.weight.normal_(generator=g)
    return model


def imagine(model: Vid2World, state: ImaginationState, target: float = TARGET_KEY, **changes) -> torch.Tensor:
    """The frame ``step`` imagines for the new frame's key ``target`` from ``state`` with ``changes``
    (fields of the state) applied, under a fixed seed."""
    state = dataclasses.replace(state, generator=torch.Generator().manual_seed(0), **changes)
    return model.step(state, torch.zeros(1, ACTION_DIM), key=torch.tensor([[target]]))[0]


def changed(t: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """A copy of frames (inverted) or actions (shifted) with the entries at ``positions`` (dim 1) changed."""
    out = t.clone()
    out[:, positions] = 255 - out[:, positions] if t.dtype == torch.uint8 else out[:, positions] + 1.0
    return out


def test_state_key_retrieval_queries_with_the_imagined_frames_own_key():
    g = torch.Generator().manual_seed(0)
    model, state = keyed_micro_model(g), stored_rollout(g)
    base = imagine(model, state)
    assert torch.equal(base, imagine(model, state, frames=changed(state.frames, [1, 3])))  # not retrieved
    assert not torch.equal(base, imagine(model, state, frames=changed(state.frames, [0])))  # retrieved


# The same for pixel keys (key_size 1: a frame's key is its mean colour). Stored grey levels: the
# window is positions 4, 5; the newest frame (0.8) is nearest to candidates 3 (0.9) and 1 (1.0),
# while the oldest (0.0) would retrieve 0 and 2.
PIXEL_RETRIEVAL = {"name": "vrag", "window": 2, "retrieved": 2, "key_size": 1}
STORED_GREYS = [0.0, 1.0, 0.1, 0.9, 0.5, 0.8]


def grey_rollout(g: torch.Generator) -> ImaginationState:
    n = len(STORED_GREYS)
    level = torch.tensor(STORED_GREYS)[None, :, None, None, None] * 235
    frames = (level + torch.randint(0, 21, (1, n, 3, SIZE, SIZE), generator=g)).to(torch.uint8)
    return ImaginationState(frames=frames, prev_action=torch.rand(1, n, ACTION_DIM, generator=g) * 2 - 1,
                            action_known=torch.ones(1, n, dtype=torch.bool), generator=None,
                            time=torch.arange(n)[None], key=pixel_key(frames, 1))


def imagine_pixels(model: Vid2World, state: ImaginationState, **changes) -> tuple[torch.Tensor, ImaginationState]:
    """``step`` of a pixel-key model (no caller key) under a fixed seed: the frame and the new state."""
    state = dataclasses.replace(state, generator=torch.Generator().manual_seed(0), **changes)
    frame, _, new_state = model.step(state, torch.zeros(1, ACTION_DIM))
    return frame, new_state


def test_pixel_key_retrieval_queries_with_the_newest_frames_key():
    g = torch.Generator().manual_seed(0)
    model, state = micro_model(PIXEL_RETRIEVAL, action_dropout=0.0), grey_rollout(g)
    base = imagine_pixels(model, state)[0]
    # the stored keys decide retrieval; a frame's pixels are read only if it is retrieved
    assert torch.equal(base, imagine_pixels(model, state, frames=changed(state.frames, [0, 2]))[0])
    assert not torch.equal(base, imagine_pixels(model, state, frames=changed(state.frames, [1]))[0])


def test_pixel_key_sampling_stores_the_imagined_frames_own_key():
    """The next step's query is the newest stored key, so it must be the new frame's, not its predecessor's."""
    g = torch.Generator().manual_seed(0)
    model, state = micro_model(PIXEL_RETRIEVAL), grey_rollout(g)
    frame, new_state = imagine_pixels(model, state)
    assert new_state.key.shape == (1, len(STORED_GREYS) + 1, 3)
    assert not torch.allclose(pixel_key(frame, 1), state.key[:, -1])  # the check below can tell them apart
    torch.testing.assert_close(new_state.key[:, -1], pixel_key(frame, 1), rtol=0, atol=0)
    assert torch.equal(new_state.key[:, :-1], state.key)


def test_training_and_sampling_give_the_same_clip_the_same_key_offsets():
    """The clip [0, 2, 5, 6] + target 7 of the training-clip test, built once by training on the
    whole segment and once by sampling frame 7 from a store of frames 0-6: the key offsets the
    model is conditioned on must agree (a sign flipped in one path only would not show otherwise)."""
    g = torch.Generator().manual_seed(0)
    model = keyed_micro_model(g)
    key = torch.tensor([[[0.], [5.], [1.], [7.], [9.], [8.], [3.], [0.9]]])
    obs = torch.randint(0, 256, (1, 8, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    action = torch.rand(1, 7, ACTION_DIM, generator=g)
    seen: list[torch.Tensor] = []
    embed = model.key_offset_embedding

    def recording(offset: torch.Tensor | None) -> torch.Tensor | float:
        seen.append(offset.detach().clone())
        return embed(offset)

    model.key_offset_embedding = recording
    model.diffusion_objective(KeyedSegmentBatch(obs, action, torch.zeros(1, 7), key))
    prev_action = torch.cat([torch.zeros(1, 1, ACTION_DIM), action[:, :6]], 1)
    state = ImaginationState(frames=obs[:, :7], prev_action=prev_action,
                             action_known=torch.ones(1, 7, dtype=torch.bool), generator=None,
                             time=torch.arange(7)[None], key=key[:, :7])
    model.step(state, action[:, 6], key=key[:, 7])
    trained, sampled = seen
    expected = key_offset(key[:, [0, 2, 5, 6]], key[:, 7])  # context keys 0, 1, 8, 3 from the target's 0.9
    torch.testing.assert_close(sampled, expected)
    torch.testing.assert_close(trained, torch.cat([expected, torch.zeros(1, 1, 1)], 1))  # the target: 0


def test_sampling_gives_frames_that_do_not_follow_their_predecessor_the_null_action():
    g = torch.Generator().manual_seed(0)
    model, state = keyed_micro_model(g), stored_rollout(g)
    base = imagine(model, state)
    # context [0, 2, 4, 5]: the actions stored with 0, 2 (retrieved) and 4 (after a jump) led from
    # frames not in the context; only 5's is its context predecessor's
    assert torch.equal(base, imagine(model, state, prev_action=changed(state.prev_action, [0, 2, 4])))
    assert not torch.equal(base, imagine(model, state, prev_action=changed(state.prev_action, [5])))


def test_sampling_conditions_context_frames_on_their_key_offset_from_the_new_frame():
    g = torch.Generator().manual_seed(0)
    model, state = keyed_micro_model(g), stored_rollout(g)
    base = imagine(model, state)
    # shifting every key alike keeps the offsets (and the retrieval): the same frame
    assert torch.equal(base, imagine(model, state, TARGET_KEY + 100.0, key=state.key + 100.0))
    # a new frame's key with the same retrieval (keys 0 and 1 still nearest) but other offsets
    assert not torch.equal(base, imagine(model, state, -3.0))


def test_training_gives_frames_that_do_not_follow_their_predecessor_the_null_action():
    """The clip of this segment is [0, 2, 5, 6, 7] (see the training-clip test above): the actions
    leading into 2 and 5 (action 1, action 4) come from frames not in the clip and must not count."""
    g = torch.Generator().manual_seed(0)
    model = micro_model(RETRIEVAL, action_dropout=0.0)
    key = torch.tensor([[[0.], [5.], [1.], [7.], [9.], [8.], [3.], [0.9]]])
    obs = torch.randint(0, 256, (1, 8, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    action = torch.rand(1, 7, ACTION_DIM, generator=g)

    def loss(a: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)  # the same noise levels and noise
        return model.diffusion_objective(KeyedSegmentBatch(obs, a, torch.zeros(1, 7), key))[0]

    base = loss(action)
    assert torch.equal(base, loss(changed(action, [1, 4])))
    assert not torch.equal(base, loss(changed(action, [5])))  # leads 5 -> 6, consecutive in the clip


def test_pixel_key_training_clips_retrieve_by_the_newest_context_frame_not_the_target():
    """Imagination retrieves for a frame before it exists, by the newest frame's pixel key; a
    training clip chosen by the target's own pixels would leak the frame the model predicts."""
    mem = build_memory({"name": "vrag", "window": 1, "retrieved": 1, "key_size": 1}, 7)  # key: mean RGB
    grey = [0.0, 0.5, 1.0, 0.1, 0.9]  # frames 0-2 candidates, 3 the window, 4 the target
    key = torch.tensor(grey)[None, :, None].expand(1, 5, 3)
    assert mem.training_clip(1, 5, key, torch.device("cpu")).tolist() == [[0, 3, 4]]  # nearest to 0.1
    key = key.clone()
    key[:, 3] = 0.6  # the newest context frame decides
    assert mem.training_clip(1, 5, key, torch.device("cpu")).tolist() == [[1, 3, 4]]


def test_memory_config_persists_with_the_model(tmp_path):
    model = micro_model(MEMORIES["vrag_state"])
    model.update(pan_segments(2, 8, torch.Generator().manual_seed(0)))
    model.save_pretrained(tmp_path)
    loaded = Vid2World.from_pretrained(tmp_path)
    assert loaded.get_config()["memory"] == model.get_config()["memory"]
    assert loaded.memory.cfg.name == "vrag" and int(loaded.key_dynamics.count) == 14
    torch.testing.assert_close(loaded.key_dynamics.weight, model.key_dynamics.weight)


def test_hydra_selects_a_memory():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(os.path.abspath(os.path.join(REPO, "cfgs")), version_base=None):
        for override, name in [("world_model.model.memory.name=vrag", "vrag"),
                               ("world_model.model.memory=history", "history"),
                               ("memory=vrag", "vrag"), ("memory=history", "history"), ("memory=window", "window")]:
            cfg = compose("config", overrides=["world_model=vid2world", override])
            model_cfg = {**OmegaConf.to_container(cfg.world_model.model), "size": "tiny", "image_size": 16,
                         "action_dim": 2}
            model = Vid2World.from_config(model_cfg)
            assert model.memory.cfg.name == name and model.memory.window == cfg.world_model.model.max_context_frames
            if override.startswith("memory="):  # the group's segments suit its memory
                model.check_segment_length(cfg.world_model.segment_length)


# ----- the benchmark -----
def load_bench():
    spec = importlib.util.spec_from_file_location("bench_memory", os.path.join(REPO, "scripts", "bench_memory.py"))
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up
    spec.loader.exec_module(bench)
    return bench


def test_bench_far_frames_are_poses_last_seen_more_than_a_context_earlier():
    bench = load_bench()
    x = [0, 1, 2, 3, 4, 5, 0, 4, 0, 1]  # context 3; scored from t = 6
    poses = torch.tensor(x)[None, :, None].expand(1, len(x), 2)
    # t=6 (0): last seen at 0, far; t=7 (4): seen at 4, within the last 3; t=8 (0): also seen at 6,
    # within the last 3, though first seen long ago; t=9 (1): last seen at 1, far
    assert bench.far_revisits(poses, 6, 3).tolist() == [[True, False, False, True]]


def test_bench_memory_tiny_runs_and_scores():
    bench = load_bench()
    a = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert bench.ssim(a, a).allclose(torch.ones(2)) and bench.psnr(a, a).min() >= 99
    assert bench.ssim(a, 255 - a).max() < 0.5
    results = bench.main(["--tiny", "--memories", "window", "history", "vrag"])
    assert set(results) == {"window", "history", "vrag"}
    for r in results.values():
        assert r["far_frames"] > 0 and 0 < r["psnr_far"] < 60 and r["fps"] > 0 and r["horizon"] == 16
    assert results["window"]["stored"] < results["vrag"]["stored"] <= 12  # FIFO of the window vs bounded store


# ----- YaRN: RoPE context extension of the iVideoGPT transformer -----
def test_yarn_rope_scaling_extends_the_transformer_context(tmp_path):
    from worldmodel.ivideogpt.model import IVideoGPT

    base = {"image_size": 32, "action_dim": 2, "context_frames": 2,
            "tokenizer": {"size": "tiny", "max_att_resolution": 8},
            "transformer": {"size": "tiny", "max_position_embeddings": 160}}
    needed = IVideoGPT.from_config({**base, "max_future_frames": 1}).layout.sequence_length(12)
    assert 160 < needed <= 4 * 160
    with pytest.raises(WorldModelConfigError, match="max_position_embeddings=160"):
        IVideoGPT.from_config({**base, "max_future_frames": 12})
    yarn = {**base["transformer"], "rope_scaling": {"type": "yarn", "factor": 4.0}}
    model = IVideoGPT.from_config({**base, "transformer": yarn, "max_future_frames": 12})
    assert model.transformer.max_positions == 640
    rotary = model.transformer.llm.model.rotary_emb
    assert rotary.rope_type == "yarn" and rotary.attention_scaling > 1.0
    plain = IVideoGPT.from_config({**base, "max_future_frames": 1}).transformer.llm.model.rotary_emb
    assert not torch.allclose(rotary.inv_freq, plain.inv_freq)  # low frequencies are interpolated
    torch.testing.assert_close(rotary.inv_freq[0], plain.inv_freq[0])  # the highest is kept
    ids = torch.randint(0, 10, (1, needed))
    with torch.no_grad():
        logits = model.transformer.llm(input_ids=ids).logits
    assert logits.shape[1] == needed and torch.isfinite(logits).all()
    model.save_pretrained(tmp_path)  # the scaled config round-trips
    loaded = IVideoGPT.from_pretrained(tmp_path)
    assert loaded.transformer.hparams == model.transformer.hparams
    with pytest.raises(ValueError, match="factor must be > 1"):
        IVideoGPT.from_config({**base, "transformer": {**base["transformer"], "rope_scaling": {"factor": 1.0}},
                               "max_future_frames": 1})


def test_yarn_extends_a_loaded_checkpoint_and_null_keeps_the_checkpoints(tmp_path):
    """rope_scaling is a run setting: YaRN extends a pretrained checkpoint's context (its weights
    unchanged); the run config's default null leaves a checkpoint's own scaling in place."""
    from worldmodel.ivideogpt.model import IVideoGPT

    base = {"image_size": 32, "action_dim": 2, "context_frames": 2, "max_future_frames": 1,
            "tokenizer": {"size": "tiny", "max_att_resolution": 8},
            "transformer": {"size": "tiny", "max_position_embeddings": 160}}
    IVideoGPT.from_config(base).save_pretrained(tmp_path / "plain")
    run = {"max_future_frames": 12, "transformer": {"size": "small", "rope_scaling": {"type": "yarn", "factor": 4.0}}}
    extended = IVideoGPT.from_pretrained(tmp_path / "plain", **IVideoGPT.run_overrides(run))
    assert extended.transformer.max_positions == 640 and extended.transformer.hparams["hidden_size"] != 768
    extended.save_pretrained(tmp_path / "extended")
    run_default = {"transformer": {"rope_scaling": None}}
    assert IVideoGPT.run_overrides(run_default) == {}
    again = IVideoGPT.from_pretrained(tmp_path / "extended", **IVideoGPT.run_overrides(run_default))
    assert again.transformer.hparams == extended.transformer.hparams


def test_a_memory_that_cannot_choose_at_the_rollout_horizon_says_so_once():
    """MBPO's rollouts (2 context + 10 imagined frames) are too short for the default VRAG and
    history memories to choose anything: check_horizon (which MBPO calls at start) says so."""
    import warnings

    vrag = micro_model({"name": "vrag", "window": 2, "retrieved": 2, "key_size": 4})
    assert vrag.context_frames == 2  # stored before a rollout's last step: 2 + horizon - 1
    with pytest.warns(RuntimeWarning, match=r"vrag memory \(window 2, retrieved 2\) acts as a sliding window in "
                                            r"rollouts of 3 steps .* \(4 frames stored .* from a horizon of 4 steps"):
        vrag.check_horizon(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vrag.check_horizon(3)  # once per horizon
        vrag.check_horizon(4)  # 5 stored frames, 4 in a context: retrieval chooses
        micro_model({"name": "window", "window": 2}).check_horizon(1)
        micro_model({"name": "history", "window": 2, "retrieved": 2}).check_horizon(3)  # t-4 = 0 skips frame 1
    with pytest.warns(RuntimeWarning, match="history memory .* rollouts of 2 steps .* from a horizon of 3 steps"):
        micro_model({"name": "history", "window": 2, "retrieved": 2}).check_horizon(2)
    with pytest.warns(RuntimeWarning, match="with memory.max_frames=4 it never chooses"):
        micro_model({"name": "vrag", "window": 2, "retrieved": 2, "key_size": 4, "max_frames": 4}).check_horizon(9)
