"""DrQ-v2 agent: augmentation, schedules, acting, the critic / actor / target updates."""
import copy
import inspect
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from mbrl.agent import DrQV2Agent, RandomShiftsAug, Schedule
from mbrl.agent.drqv2 import LOOP_KEYS
from mbrl.replay import TransitionBatch

CFG = Path(__file__).resolve().parents[1] / "cfgs" / "agent" / "drqv2.yaml"
ACTION_DIM = 3
SIZE = 24
OBS_SHAPE = (9, SIZE, SIZE)
SMALL = dict(lr=1e-3, feature_dim=16, hidden_dim=32, critic_target_tau=0.05,
             stddev_schedule="linear(1.0,0.1,1000)", stddev_clip=0.3, num_expl_steps=100,
             aug_pad=4)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny nets gain nothing from 2 threads, and on a busy 2-core machine the thread
    hand-offs make them 20x slower; conftest's 2 threads are restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_agent(obs_shape=OBS_SHAPE, **overrides) -> DrQV2Agent:
    return DrQV2Agent(obs_shape, ACTION_DIM, "cpu", **{**SMALL, **overrides})


def random_batch(n=16, obs_shape=OBS_SHAPE, seed=0) -> TransitionBatch:
    g = torch.Generator().manual_seed(seed)

    def obs():
        return torch.randint(0, 256, (n, *obs_shape), generator=g, dtype=torch.uint8)

    return TransitionBatch(obs=obs(), action=torch.rand(n, ACTION_DIM, generator=g) * 2 - 1,
                           reward=torch.rand(n, generator=g), discount=torch.full((n,), 0.97),
                           next_obs=obs())


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


# ----- augmentation -----
def test_random_shift_is_an_exact_crop_of_the_replicate_padded_image():
    pad = 4
    x = torch.randint(0, 256, (32, 6, 20, 20), dtype=torch.uint8)
    out = RandomShiftsAug(pad)(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x.float(), (pad,) * 4, mode="replicate")
    found = []
    for b in range(len(x)):
        matches = [(dy, dx) for dy in range(-pad - 2, pad + 3) for dx in range(-pad - 2, pad + 3)
                   if abs(dy) <= pad and abs(dx) <= pad
                   and torch.equal(padded[b, :, pad + dy:pad + dy + 20, pad + dx:pad + dx + 20],
                                   out[b].float())]
        assert len(matches) == 1, f"image {b} is not a crop of its padded original"
        found.append(matches[0])
    dys, dxs = zip(*found)
    assert max(map(abs, dys + dxs)) <= pad
    assert len(set(found)) > 5  # shifts differ per image
    assert not torch.equal(out, x)


def test_random_shift_covers_all_offsets_and_pad_zero_is_identity():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(400, 1, 1, 1)
    out = RandomShiftsAug(2)(x, generator=torch.Generator().manual_seed(1))
    # The top-left pixel of a shift (dy, dx) with dy, dx >= 0 reads x[dy, dx]: all 3x3 appear.
    assert set(out[:, 0, 0, 0].long().tolist()) == {0, 1, 2, 4, 5, 6, 8, 9, 10}
    assert torch.equal(RandomShiftsAug(0)(x), x)


# ----- schedules -----
@pytest.mark.parametrize("spec, values", [
    ("0.2", {0: 0.2, 10**6: 0.2}),
    ("linear(1.0,0.1,100000)", {0: 1.0, 25000: 0.775, 50000: 0.55, 100000: 0.1, 300000: 0.1}),
    ("step_linear(1.0, 0.5, 100, 0.1, 200)", {0: 1.0, 50: 0.75, 100: 0.5, 200: 0.3, 300: 0.1,
                                             5000: 0.1}),
])
def test_stddev_schedules(spec, values):
    schedule = Schedule(spec)
    for step, value in values.items():
        assert schedule(step) == pytest.approx(value), (spec, step)


@pytest.mark.parametrize("spec", ["linear(1.0,0.1)", "cosine(1,0,10)", "linear(a,b,c)",
                                  "linear(1.0,0.1,0)"])
def test_bad_schedule_is_refused_at_construction(spec):
    with pytest.raises(ValueError, match="schedule"):
        Schedule(spec)
    with pytest.raises(ValueError, match="schedule"):
        make_agent(stddev_schedule=spec)


# ----- acting -----
@pytest.mark.parametrize("size, repr_dim", [(64, 32 * 25 * 25), (84, 32 * 35 * 35)])
def test_act_shapes_ranges_and_frame_sizes(size, repr_dim):
    agent = make_agent((9, size, size))
    assert agent.encoder.repr_dim == repr_dim
    obs = torch.randint(0, 256, (5, 9, size, size), dtype=torch.uint8)
    for step, eval_mode in ((0, False), (0, True), (10_000, False)):
        action = agent.act(obs, step, eval_mode)
        assert action.shape == (5, ACTION_DIM) and action.dtype == torch.float32
        assert action.device == agent.device
        assert (action.abs() <= 1).all()


def test_eval_mode_is_the_deterministic_mean_and_training_explores_around_it():
    agent = make_agent()
    obs = torch.randint(0, 256, (1, *OBS_SHAPE), dtype=torch.uint8).repeat(2000, 1, 1, 1)
    step = 1000  # end of the schedule: std 0.1, small enough that the [-1, 1] clip is rare
    mean = agent.act(obs, step, eval_mode=True)
    assert torch.equal(mean, agent.act(obs, step, eval_mode=True))
    expected = torch.tanh(agent.actor.policy(agent.actor.trunk(agent.encoder(obs[:1]))))
    assert torch.allclose(mean[0], expected[0].detach(), atol=1e-6)
    # After the exploration phase: truncated normal around the mean with the scheduled std.
    noisy = agent.act(obs, step, eval_mode=False, generator=torch.Generator().manual_seed(0))
    std = Schedule(SMALL["stddev_schedule"])(step)
    assert std == pytest.approx(0.1) and (mean.abs() < 0.6).all()
    assert (noisy - mean).mean(0).abs().max() < 0.01
    assert (noisy - mean).std(0).sub(std).abs().max() < 0.01
    again = agent.act(obs, step, eval_mode=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)  # a seeded generator reproduces the actions


def test_uniform_random_actions_before_num_expl_steps():
    agent = make_agent(num_expl_steps=100, stddev_schedule="0.05")  # (a narrow policy at step 100)
    obs = torch.zeros(4000, *OBS_SHAPE, dtype=torch.uint8)  # identical observations
    action = agent.act(obs, 99, eval_mode=False, generator=torch.Generator().manual_seed(0))
    assert action.min() < -0.99 and action.max() > 0.99
    assert action.mean().abs() < 0.03 and (action.var() - 1 / 3).abs() < 0.02  # U(-1, 1)
    histogram = torch.histc(action, bins=4, min=-1, max=1) / action.numel()
    assert torch.allclose(histogram, torch.full((4,), 0.25), atol=0.02)
    assert agent.act(obs[:2], 99, eval_mode=True).std(0).max() == 0  # eval ignores exploration
    # From step num_expl_steps on, the policy: its mean with the scheduled std around it.
    mean = agent.act(obs[:1], 100, eval_mode=True)
    assert mean.abs().max() < 0.8  # far enough from the [-1, 1] clip for the std to show
    action = agent.act(obs, 100, eval_mode=False, generator=torch.Generator().manual_seed(0))
    assert (action - mean).mean(0).abs().max() < 0.005
    assert (action - mean).std(0).sub(0.05).abs().max() < 0.005


def test_policy_for_imagination_stacks_the_newest_frames():
    agent = make_agent()
    frames = torch.randint(0, 256, (4, 5, 3, SIZE, SIZE), dtype=torch.uint8)  # [B, t, 3, H, W]
    policy = agent.policy(step=500, eval_mode=True)
    assert torch.equal(policy(frames), agent.act(frames[:, 2:].flatten(1, 2), 500, True))
    first_repeated = torch.cat([frames[:, :1], frames[:, :1], frames[:, 1:2]], 1).flatten(1, 2)
    assert torch.equal(policy(frames[:, :2]), agent.act(first_repeated, 500, True))


def test_act_refuses_bad_observations():
    agent = make_agent()
    with pytest.raises(ValueError, match="uint8"):
        agent.act(torch.zeros(2, *OBS_SHAPE), 0, eval_mode=True)
    with pytest.raises(ValueError, match=r"expected \[B, 9, 24, 24\]"):
        agent.act(torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8), 0, eval_mode=True)


# ----- learning -----
def test_update_random_shifts_the_obs_and_next_obs_batches():
    """DrQ's augmentation, at the default aug_pad: each update shifts the obs batch once and the
    next-obs batch once, and the encoder sees the shifted frames."""
    agent = make_agent(aug_pad=OmegaConf.load(CFG).aug_pad)
    aug, encode, calls, encoded = agent.aug, agent.encoder.forward, [], []

    def recording_aug(x, *args, **kwargs):
        out = aug(x, *args, **kwargs)
        calls.append((x.clone(), out.clone()))
        return out

    def recording_encode(obs):
        encoded.append(obs.clone())
        return encode(obs)
    agent.aug, agent.encoder.forward = recording_aug, recording_encode
    for seed in range(2):
        batch = random_batch(seed=seed)
        calls.clear()
        encoded.clear()
        agent.update(batch, step=0)
        assert len(calls) == 2
        (obs_in, obs_out), (next_in, next_out) = calls
        assert torch.equal(obs_in, batch.obs) and torch.equal(next_in, batch.next_obs)
        for x, out in calls:  # shifted: most images differ from their input
            assert out.shape == x.shape and out.dtype == x.dtype
            assert sum(not torch.equal(a, b) for a, b in zip(x, out)) >= len(x) // 2
        assert len(encoded) == 2 and torch.equal(encoded[0], obs_out) and torch.equal(encoded[1], next_out)


def test_critic_target_is_the_nstep_bootstrap_of_the_target_critic():
    agent = make_agent(aug_pad=0, stddev_clip=0.0)  # no augmentation, next action = mean
    batch = random_batch()
    with torch.no_grad():
        next_feat = agent.encoder(batch.next_obs)
        next_action = agent.actor(next_feat, 1.0).mean.clamp(-1 + 1e-6, 1 - 1e-6)
        q1, q2 = agent.critic_target(next_feat, next_action)
        expected = batch.reward + batch.discount * torch.min(q1, q2).squeeze(1)
    metrics = agent.update(batch, step=0)
    assert metrics["critic_target_q"] == pytest.approx(expected.mean().item(), rel=1e-5, abs=1e-6)


def test_critic_step_trains_the_encoder_and_actor_step_does_not():
    agent = make_agent()
    batch = random_batch()
    feat = agent.encoder(agent.aug(batch.obs))
    with torch.no_grad():
        next_feat = agent.encoder(agent.aug(batch.next_obs))
    enc, actor, critic = params(agent.encoder), params(agent.actor), params(agent.critic)
    agent._update_critic(feat, batch.action, batch.reward, batch.discount, next_feat, 0.5)
    assert changed(enc, agent.encoder) and changed(critic, agent.critic)
    assert not changed(actor, agent.actor)

    enc, actor, critic = params(agent.encoder), params(agent.actor), params(agent.critic)
    agent.encoder_opt.zero_grad(set_to_none=True)
    agent.critic_opt.zero_grad(set_to_none=True)
    agent._update_actor(agent.encoder(batch.obs).detach(), 0.5)
    assert changed(actor, agent.actor)
    assert not changed(enc, agent.encoder) and not changed(critic, agent.critic)
    assert all(p.grad is None for p in agent.encoder.parameters())
    assert all(p.grad is None for p in agent.critic.parameters())  # actor loss skips the critic


def test_actor_loss_is_minus_the_smaller_q_of_a_clipped_noisy_action():
    """DrQ-v2's actor step: an action sampled around the mean with its noise clipped to
    +-stddev_clip, scored by min(Q1, Q2) of the critic."""
    clip = SMALL["stddev_clip"]
    agent = make_agent()
    feat = agent.encoder(random_batch().obs).detach()
    with torch.no_grad():
        mean = agent.actor(feat, 1.0).mean  # [B, A]: the mean does not depend on the stddev
    forward, seen = agent.critic.forward, []

    def recording_forward(obs, action):  # Q2 = Q1 -+ 1 on alternate rows: min(Q1, Q2) is neither alone
        q1, _ = forward(obs, action)
        q2 = q1 + torch.arange(len(q1)).remainder(2).mul(2).sub(1).unsqueeze(1)
        seen.append((action.detach().clone(), q1.detach().clone(), q2.detach().clone()))
        return q1, q2
    agent.critic.forward = recording_forward
    metrics = agent._update_actor(feat, stddev=5.0)  # unclipped noise this wide would leave +-clip
    (action, q1, q2), = seen
    assert metrics["actor_loss"].item() == pytest.approx(-torch.min(q1, q2).mean().item(), rel=1e-6)
    noise = (action - mean).abs()
    assert noise.max() <= clip + 1e-6 and noise.max() > 0.9 * clip  # clipped, and present


def test_target_critic_moves_exactly_by_tau():
    tau = SMALL["critic_target_tau"]
    agent = make_agent()
    agent.update(random_batch(seed=1), step=0)  # make online and target differ
    target_before = params(agent.critic_target)
    metrics = agent.update(random_batch(seed=2), step=0)
    for old, online, new in zip(target_before, agent.critic.parameters(),
                                agent.critic_target.parameters()):
        assert torch.allclose(new, (1 - tau) * old + tau * online, atol=1e-7)
    for key in ("critic_loss", "actor_loss", "critic_q1", "critic_target_q", "actor_ent",
                "actor_stddev", "batch_reward"):
        assert isinstance(metrics[key], float)
    assert metrics["actor_stddev"] == pytest.approx(1.0)


def test_critic_learns_a_fixed_batch():
    obs_shape = (9, 16, 16)  # smallest frames the encoder takes: keeps this test fast
    agent = make_agent(obs_shape, aug_pad=0)
    batch = random_batch(n=32, obs_shape=obs_shape)
    batch.discount.zero_()  # pure regression onto the rewards
    first = agent.update(batch, step=0)["critic_loss"]
    for _ in range(60):
        last = agent.update(batch, step=0)["critic_loss"]
    assert last < 0.05 * first


def test_state_dict_round_trip_restores_networks_and_optimisers():
    agent = make_agent()
    for seed in range(2):
        agent.update(random_batch(seed=seed), step=0)
    clone = make_agent()
    clone.load_state_dict(copy.deepcopy(agent.state_dict()))
    obs = random_batch(seed=5).obs
    assert torch.equal(agent.act(obs, 500, True), clone.act(obs, 500, True))
    assert clone.critic_opt.state_dict()["state"]  # Adam moments came back
    # Identical next update (same augmentation and noise streams).
    torch.manual_seed(3)
    a = agent.update(random_batch(seed=6), step=0)
    torch.manual_seed(3)
    b = clone.update(random_batch(seed=6), step=0)
    assert a == b
    with pytest.raises(ValueError, match="frame size"):
        make_agent((9, 32, 32)).load_state_dict(agent.state_dict())


def test_config_keys_are_all_used():
    cfg = OmegaConf.load(CFG)
    ctor = set(inspect.signature(DrQV2Agent.__init__).parameters) - {"self", "obs_shape",
                                                                     "action_dim", "device"}
    assert set(cfg) == ctor | set(LOOP_KEYS)
    with pytest.raises(ValueError, match="num_expl_steps is null"):
        DrQV2Agent.from_config(cfg, OBS_SHAPE, ACTION_DIM, "cpu")
    agent = DrQV2Agent.from_config(cfg, OBS_SHAPE, ACTION_DIM, "cpu", num_expl_steps=7)
    assert agent.num_expl_steps == 7 and agent.encoder_opt.param_groups[0]["weight_decay"] == cfg.weight_decay
    assert agent.critic_target_tau == cfg.critic_target_tau
    assert agent.stddev_schedule(100_000) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="bad agent config"):
        DrQV2Agent.from_config({**cfg, "hiden_dim": 3}, OBS_SHAPE, ACTION_DIM, "cpu", num_expl_steps=0)
    with pytest.raises(ValueError, match="stddev_clip"):
        DrQV2Agent.from_config({**cfg, "stddev_clip": -1}, OBS_SHAPE, ACTION_DIM, "cpu", num_expl_steps=0)


# ----- against the official facebookresearch/drqv2 (scripts/check_drqv2_equivalence.py) -----
def _equivalence_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "check_drqv2_equivalence.py"
    spec = importlib.util.spec_from_file_location("check_drqv2_equivalence", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_drqv2_equivalence_refuses_a_folder_that_is_not_a_checkout(tmp_path):
    with pytest.raises(SystemExit, match="not a checkout of facebookresearch/drqv2"):
        _equivalence_script().main(["--official-repo", str(tmp_path)])


@pytest.mark.skipif(not os.environ.get("DRQV2_OFFICIAL_REPO"),
                    reason="needs a checkout of facebookresearch/drqv2: set DRQV2_OFFICIAL_REPO=<dir>")
def test_updates_equal_the_official_drqv2():
    assert _equivalence_script().main(["--official-repo", os.environ["DRQV2_OFFICIAL_REPO"]]) == 0


@pytest.mark.parametrize("task, nstep, batch, schedule, lr", [
    ("dmc/walker_walk", 1, 512, "linear(1.0,0.1,100000)", 1e-4),
    ("dmc/cheetah_run", 3, 256, "linear(1.0,0.1,500000)", 1e-4),
    ("dmc/humanoid_run", 3, 256, "linear(1.0,0.1,2000000)", 8e-5),
])
def test_dmc_tasks_take_drqv2s_own_settings(task, nstep, batch, schedule, lr):
    """world_model=none on DMC is DrQ-v2 as published (its cfgs/config.yaml and task files);
    Meta-World keeps iVideoGPT's agent (2 updates every step, weight decay 1e-6)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(CFG).resolve().parents[1]), version_base=None):
        dmc = compose("config", overrides=[f"task={task}", "world_model=none", "preset=reference"])
        metaworld = compose("config", overrides=["task=metaworld/hammer", "world_model=none", "preset=reference"])
    a = dmc.agent
    assert (a.update_every_steps, a.update_times, a.weight_decay) == (2, 1, 0.0)
    assert (a.nstep, a.batch_size, a.stddev_schedule, a.lr) == (nstep, batch, schedule, lr)
    assert dmc.eval_every_frames == 10000 and dmc.num_eval_episodes == 10
    m = metaworld.agent
    assert (m.update_every_steps, m.update_times, m.weight_decay, m.nstep) == (1, 2, 1e-6, 3)
