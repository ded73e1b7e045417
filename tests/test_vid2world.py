"""Vid2World: causality, weight transfer, diffusion forcing, guidance, imagination, persistence."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from worldmodel.interface import SegmentBatch, WorldModelConfigError  # noqa: E402
from worldmodel.vid2world import Vid2World, causal_kernel, causalize  # noqa: E402
from worldmodel.vid2world.backbone import TemporalAttention, TemporalCache, TemporalConv, VideoUNet  # noqa: E402
from worldmodel.vid2world.causalize import causalize_module  # noqa: E402
from worldmodel.vid2world.configs import BackboneConfig  # noqa: E402

# Smaller than the "tiny" preset so CPU training in tests stays within seconds.
MICRO = dict(channels=(16, 32), attention_resolutions=(), head_dim=8, emb_dim=32, groups=8)
ACTION_DIM = 2


def micro_model(image_size: int = 16, **kw) -> Vid2World:
    return Vid2World(image_size=image_size, action_dim=ACTION_DIM, backbone=MICRO, **kw)


def random_batch(B=2, T=3, size=16, g=None) -> SegmentBatch:
    g = g or torch.Generator().manual_seed(0)
    return SegmentBatch(torch.randint(0, 256, (B, T, 3, size, size), generator=g, dtype=torch.uint8),
                        torch.rand(B, T - 1, ACTION_DIM, generator=g) * 2 - 1,
                        torch.rand(B, T - 1, generator=g))


# ----- causality -----
@pytest.mark.parametrize("kind", ["conv", "attention"])
@pytest.mark.parametrize("causal", [True, False])
def test_temporal_layer_causality(kind, causal):
    C, T, t = 16, 5, 2
    layer = TemporalConv(C, 8, causal) if kind == "conv" else TemporalAttention(C, 8, causal, 1e4)
    x = torch.randn(2, T, C, 3, 3)
    x2 = x.clone()
    x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])  # change only frames after t
    with torch.no_grad():
        y, y2 = layer(x), layer(x2)
    if causal:
        torch.testing.assert_close(y[:, :t + 1], y2[:, :t + 1], rtol=0, atol=1e-6)
    else:
        assert (y[:, t] - y2[:, t]).abs().max() > 1e-3


@pytest.mark.parametrize("causal", [True, False])
def test_backbone_causality(causal):
    net = VideoUNet(BackboneConfig(image_size=16, action_dim=ACTION_DIM, causal=causal, **MICRO)).eval()
    B, T, t = 2, 4, 1
    x = torch.randn(B, T, 3, 16, 16)
    emb = net.embed(torch.randint(0, 1000, (B, T)), torch.randn(B, T, ACTION_DIM), torch.zeros(B, T, dtype=torch.bool))
    x2, emb2 = x.clone(), emb.clone()
    x2[:, t + 1:] += 1.0
    emb2[:, t + 1:] += 1.0  # later noise levels / actions must not leak either
    with torch.no_grad():
        y, y2 = net(x, emb), net(x2, emb2)
    if causal:
        torch.testing.assert_close(y[:, :t + 1], y2[:, :t + 1], rtol=0, atol=1e-5)
    else:
        assert (y[:, t] - y2[:, t]).abs().max() > 1e-3
    assert (y[:, t + 1] - y2[:, t + 1]).abs().max() > 1e-3


def test_temporal_cache_matches_full_forward():
    """Decoding the new frame from the recorded history equals running the whole window,
    including a doubled batch (the two guidance branches share one cache)."""
    net = VideoUNet(BackboneConfig(image_size=16, action_dim=ACTION_DIM, causal=True, **MICRO)).eval()
    B, T = 2, 4
    x = torch.randn(B, T, 3, 16, 16)
    emb = net.embed(torch.randint(0, 1000, (B, T)), torch.randn(B, T, ACTION_DIM), torch.zeros(B, T, dtype=torch.bool))
    with torch.no_grad():
        full = net(x, emb)
        cache = TemporalCache()
        net(x[:, :-1], emb[:, :-1], cache)
        new = net(x[:, -1:].repeat(2, 1, 1, 1, 1), emb[:, -1:].repeat(2, 1, 1), cache.extend())
    torch.testing.assert_close(new[:B, 0], full[:, -1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(new[B:, 0], full[:, -1], rtol=1e-4, atol=1e-5)


# ----- weight transfer -----
def test_causal_kernel_formulas():
    w = torch.tensor([1.0, 2.0, 3.0])
    assert causal_kernel(w, "masked").tolist() == [0.0, 1.0, 2.0]
    assert causal_kernel(w, "extrapolative").tolist() == [0.0, 1.0 - 3.0, 2.0 + 6.0]
    assert causal_kernel(w, "shift").tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="masked"):
        causal_kernel(w, "mirror")


def _conv(layer: TemporalConv, h: torch.Tensor) -> torch.Tensor:
    return layer.conv(F.pad(h, layer.padding()))


@pytest.mark.parametrize("method", ["masked", "extrapolative", "shift"])
def test_weight_transfer_on_linear_signal(method):
    C, T = 4, 8
    noncausal = TemporalConv(C, 2, causal=False)
    causal = causalize_module(noncausal, method)
    assert causal.causal and not noncausal.causal
    a, b = torch.randn(3, C, 1), torch.randn(3, C, 1)
    h = a + b * torch.arange(T, dtype=torch.float32)  # [N, C, T], linear in time
    with torch.no_grad():
        y_nc, y_c = _conv(noncausal, h), _conv(causal, h)
    w, bias = noncausal.conv.weight, noncausal.conv.bias[None, :, None]  # w [C, C, 3] on (t-1, t, t+1)
    tap = lambda k, x: torch.einsum("oi,nit->not", w[:, :, k], x)  # noqa: E731
    if method == "extrapolative":  # exact away from the boundary (t-1 and t+1 both exist)
        torch.testing.assert_close(y_c[:, :, 1:T - 1], y_nc[:, :, 1:T - 1], rtol=1e-5, atol=1e-5)
        assert (y_c[:, :, -1] - y_nc[:, :, -1]).abs().max() > 1e-3  # the non-causal edge sees padding
    elif method == "masked":  # (0, w0, w1) on (t-2, t-1, t)
        want = tap(0, h[:, :, :-1]) + tap(1, h[:, :, 1:]) + bias
        torch.testing.assert_close(y_c[:, :, 1:], want, rtol=1e-5, atol=1e-5)
        assert (y_c[:, :, 1:T - 1] - y_nc[:, :, 1:T - 1]).abs().max() > 1e-3
    else:  # shift: the non-causal output delayed by one frame
        torch.testing.assert_close(y_c[:, :, 1:], y_nc[:, :, :-1], rtol=1e-5, atol=1e-5)


def test_causalize_model_and_checkpoint_script(tmp_path):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "scripts", "causalize_checkpoint.py")
    spec = importlib.util.spec_from_file_location("causalize_checkpoint", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    main = script.main

    noncausal = micro_model(causal=False)
    src, dst = tmp_path / "nc", tmp_path / "c"
    noncausal.save_pretrained(src)
    assert main([str(src), str(dst), "--method", "masked"]) == 0
    causal = Vid2World.from_pretrained(dst)
    assert causal.config.causal and causal.backbone.causal and causal.config.causal_transfer == "masked"
    w_nc = noncausal.backbone.down[0].temporal_conv.conv.weight
    torch.testing.assert_close(causal.backbone.down[0].temporal_conv.conv.weight, causal_kernel(w_nc, "masked"))
    assert main([str(dst), str(tmp_path / "again")]) == 2  # already causal: a clear refusal
    # loading a non-causal checkpoint as causal transfers weights on the fly
    loaded = Vid2World.from_pretrained(src, causal=True, causal_transfer="extrapolative")
    expected = causalize(noncausal, "extrapolative")
    for (k, v), (k2, v2) in zip(loaded.state_dict().items(), expected.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_causalize_script_takes_a_pretraining_output_and_names_an_unwritable_target(tmp_path, capsys):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "scripts", "causalize_checkpoint.py")
    spec = importlib.util.spec_from_file_location("causalize_checkpoint", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    micro_model(causal=False).save_pretrained(tmp_path / "pretrain_out" / "model")  # scripts/pretrain.py's layout
    assert script.main([str(tmp_path / "pretrain_out"), str(tmp_path / "c"), "--method", "shift"]) == 0
    assert Vid2World.from_pretrained(tmp_path / "c").config.causal
    taken = tmp_path / "a_file"
    taken.write_text("")
    capsys.readouterr()
    assert script.main([str(tmp_path / "pretrain_out"), str(taken)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {taken}: ") and err.count("\n") == 1


# ----- training -----
def metaworld_segments(T: int = 4, size: int = 32) -> SegmentBatch:
    import gymnasium as gym
    import metaworld  # noqa: F401  (registers the Meta-World envs)

    env = gym.make("Meta-World/MT1", env_name="reach-v3", render_mode="rgb_array", camera_name="corner",
                   width=size, height=size)
    env.reset(seed=0)
    env.action_space.seed(0)
    frames, actions, rewards = [env.render()], [], []
    for _ in range(3 * T):
        a = env.action_space.sample()
        _, r, *_ = env.step(a)
        frames.append(env.render())
        actions.append(torch.as_tensor(a[:ACTION_DIM]))  # the test model is 2-D; keep x/y of the arm
        rewards.append(float(r))
    env.close()
    obs = torch.as_tensor(np.stack(frames)).permute(0, 3, 1, 2)  # [N, 3, H, W] uint8
    starts = range(0, 3 * T - T + 1, T - 1)
    return SegmentBatch(torch.stack([obs[s:s + T] for s in starts]),
                        torch.stack([torch.stack(actions[s:s + T - 1]) for s in starts]).float(),
                        torch.tensor([rewards[s:s + T - 1] for s in starts], dtype=torch.float32))


def test_losses_fall_on_metaworld_frames():
    batch = metaworld_segments()
    model = micro_model(image_size=32, lr=2e-3, reward_lr=1e-3)

    def eval_losses():
        with torch.no_grad():
            obs = batch.obs.float() / 127.5 - 1
            d = 0.0
            for seed in range(3):  # the same noise levels and noise before and after
                torch.manual_seed(seed)
                d += model.diffusion_loss(obs, batch.action)[0].item() / 3
            return d, model.reward_loss(obs, batch.action, batch.reward)[0].item()

    d0, r0 = eval_losses()
    for _ in range(25):
        metrics = model.update(batch)
    d1, r1 = eval_losses()
    assert set(metrics) >= {"diffusion/loss", "reward/loss", "diffusion/grad_norm"}
    assert d1 < 0.7 * d0, (d0, d1)
    assert r1 < 0.5 * r0, (r0, r1)
    assert model.counters["updates_diffusion"] == 25 and model.counters["skipped_diffusion"] == 0


def test_nonfinite_loss_is_skipped_and_counted():
    model = micro_model()
    batch = random_batch()
    batch.reward[0, 0] = float("nan")
    before = [p.clone() for p in model.reward_head.parameters()]
    metrics = model.update(batch, parts=("reward",))
    assert metrics["reward/skipped"] == 1.0 and model.counters["skipped_reward"] == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.reward_head.parameters()))
    with pytest.raises(WorldModelConfigError, match="unknown parts"):
        model.update(batch, parts=("tokenizer",))


# ----- diffusion forcing -----
def spy_embed(model: Vid2World) -> list:
    """Record the (noise levels, drop mask) of every ``backbone.embed`` call; the real embedding runs."""
    calls, embed = [], model.backbone.embed

    def spy(timesteps, actions, drop):
        calls.append((timesteps.clone(), drop.clone()))
        return embed(timesteps, actions, drop)

    model.backbone.embed = spy
    return calls


def test_diffusion_forcing_noises_each_frame_and_drops_actions():
    """Every frame of a clip gets its own noise level; actions are dropped at rate action_dropout on
    top of the frames that have none; a history-mixed clip's prefix sits at <= history_noise_level."""
    torch.manual_seed(0)
    B, T = 48, 6
    obs = torch.rand(B, T, 3, 16, 16) * 2 - 1
    prev_action, no_action = torch.randn(B, T, ACTION_DIM), torch.zeros(B, T, dtype=torch.bool)
    no_action[:, 0] = True
    model = micro_model(history_mix_prob=0.0, action_dropout=0.5)
    calls = spy_embed(model)
    with torch.no_grad():
        model.clip_diffusion_loss(obs, prev_action, no_action)
    (t, drop), = calls
    assert (t != t[:, :1]).any(dim=1).all(), t  # per frame, not one level per clip
    assert drop[:, 0].all()  # no action stays dropped
    assert 0.35 < drop[:, 1:].float().mean() < 0.65, drop  # the rest at action_dropout
    model = micro_model(history_mix_prob=1.0, action_dropout=0.0, history_noise_level=10)
    calls = spy_embed(model)
    with torch.no_grad():
        model.clip_diffusion_loss(obs, prev_action, no_action)
    (t, drop), = calls
    assert torch.equal(drop, no_action)
    assert (t[:, 0] <= 10).all() and (t[:, :-1] <= 10).any(dim=1).all() and (t[:, -1] > 10).float().mean() > 0.9


def test_history_frames_are_noised_to_and_labelled_with_history_noise_level():
    model = micro_model(history_noise_level=50).eval()
    calls = spy_embed(model)
    B, m = 2, 3
    frames = torch.rand(B, m, 3, 16, 16) * 2 - 1
    drop = torch.zeros(B, m, dtype=torch.bool)
    with torch.no_grad():
        history = model.encode_history(frames, torch.randn(B, m, ACTION_DIM), drop, torch.Generator().manual_seed(5))
    (t, _), = calls
    assert (t == 50).all(), t
    noise = torch.randn(frames.shape, generator=torch.Generator().manual_seed(5))
    want = model.noise_scheduler.add_noise(frames.flatten(0, 1), noise.flatten(0, 1), t.flatten()).view_as(frames)
    torch.testing.assert_close(history.frames, want)
    assert (history.frames - frames).abs().mean() > 0.05


# ----- reward alignment -----
def test_reward_is_for_the_transition_from_o_t_with_a_t_to_o_t1():
    """reward_t belongs to (o_t, a_t, o_{t+1}), in training and in imagination alike."""
    model = micro_model(sampling_steps=2)
    seen = []
    model.reward_head.register_forward_hook(lambda mod, args, out: seen.append([a.detach().clone() for a in args]))
    batch = random_batch(B=2, T=4)
    model.update(batch, parts=("reward",))
    (o_t, a_t, o_t1), = seen
    obs = batch.obs.float() / 127.5 - 1
    assert torch.equal(o_t, obs[:, :-1].flatten(0, 1)) and torch.equal(o_t1, obs[:, 1:].flatten(0, 1))
    assert torch.equal(a_t, batch.action.flatten(0, 1))
    seen.clear()
    policy = lambda frames: frames[:, -1].float().mean((1, 2, 3))[:, None].expand(-1, ACTION_DIM) / 255  # noqa: E731
    roll = model.rollout(batch.obs[:, :2], policy, horizon=2, generator=torch.Generator().manual_seed(0))
    assert len(seen) == 2
    for i, (o_t, a_t, o_t1) in enumerate(seen):
        assert torch.equal(o_t, roll.obs[:, i].float() / 127.5 - 1), i
        assert torch.equal(a_t, roll.action[:, i]) and torch.equal(o_t1, roll.obs[:, i + 1].float() / 127.5 - 1), i


# ----- guidance -----
def test_guidance_scale_one_is_the_conditional_prediction():
    model = micro_model().eval()
    B = 2
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(B, 3, 3, 16, 16, generator=g) * 2 - 1
    drop = torch.zeros(B, 3, dtype=torch.bool)
    drop[:, 0] = True
    torch.nn.init.normal_(model.backbone.null_action)  # make the two branches clearly differ
    with torch.no_grad():
        history = model.encode_history(frames, torch.randn(B, 3, ACTION_DIM), drop, g)
        x = torch.randn(B, 3, 16, 16, generator=g)
        t_emb = model.backbone.embed_time(torch.tensor([500]))[0]
        a_emb = model.backbone.embed_action(torch.randn(B, ACTION_DIM), torch.zeros(B, dtype=torch.bool))
        cond = model._denoise_new(x, t_emb + a_emb, history)
        uncond = model._denoise_new(x, (t_emb + model.backbone.null_action).expand_as(a_emb), history)
        assert torch.equal(model.guided_velocity(x, t_emb, a_emb, history, 1.0), cond)
        guided = model.guided_velocity(x, t_emb, a_emb, history, 2.5)
    torch.testing.assert_close(guided, uncond + 2.5 * (cond - uncond), rtol=1e-4, atol=1e-5)
    assert (guided - cond).abs().max() > 1e-3


# ----- imagination -----
SQUARE, MOVE, TOY_SIZE = 4, 4, 16  # a white square that the action moves left or right
TOY_STEPS = 250


def toy_batch(B: int, T: int, g: torch.Generator) -> SegmentBatch:
    """Frames of a square starting at the centre column, moved by MOVE * action[0] per step."""
    x = torch.full((B,), (TOY_SIZE - SQUARE) // 2)
    y = torch.randint(0, TOY_SIZE - SQUARE, (B,), generator=g)
    direction = torch.randint(0, 2, (B, T - 1), generator=g).float() * 2 - 1
    obs = torch.zeros(B, T, 3, TOY_SIZE, TOY_SIZE, dtype=torch.uint8)
    for t in range(T):
        for b in range(B):
            xb = int(x[b].clamp(0, TOY_SIZE - SQUARE))
            obs[b, t, :, y[b]:y[b] + SQUARE, xb:xb + SQUARE] = 255
        if t < T - 1:
            x = x + (MOVE * direction[:, t]).long()
    action = torch.stack([direction, torch.zeros_like(direction)], dim=-1)
    return SegmentBatch(obs, action, direction.clone())  # reward = direction of motion


def center_x(frames: torch.Tensor) -> torch.Tensor:
    mass = frames.float().mean(1).sum(1)  # [B, W]
    return (mass * torch.arange(frames.shape[-1])).sum(-1) / mass.sum(-1).clamp(min=1)


def test_action_steers_the_imagined_frame_once_trained():
    g = torch.Generator().manual_seed(0)
    model = micro_model(lr=2e-3, reward_lr=1e-3, sampling_steps=8, history_noise_level=10)
    for _ in range(TOY_STEPS):
        model.update(toy_batch(8, 2, g))
    start = toy_batch(8, 1, g).obs
    moved, rewards = {}, {}
    for direction in (1.0, -1.0):
        state = model.reset(start, generator=torch.Generator().manual_seed(1))
        frame, rewards[direction], _ = model.step(state, torch.tensor([[direction, 0.0]]).repeat(8, 1))
        moved[direction] = center_x(frame) - center_x(start[:, 0])
    # right minus left is 2 * MOVE for a perfect model; an action-blind one gives 0
    assert (moved[1.0] - moved[-1.0]).mean() > MOVE / 2, moved
    assert (moved[1.0] > moved[-1.0]).sum() >= 6, moved
    assert (rewards[1.0] > rewards[-1.0]).all(), rewards



def test_rollout_shapes_and_input_errors():
    model = micro_model(sampling_steps=2, max_context_frames=2)
    context = random_batch(B=3, T=2).obs
    policy = lambda frames: torch.zeros(frames.shape[0], ACTION_DIM)  # noqa: E731
    roll = model.rollout(context, policy, horizon=3, generator=torch.Generator().manual_seed(0))
    assert roll.obs.shape == (3, 4, 3, 16, 16) and roll.obs.dtype == torch.uint8
    assert torch.equal(roll.obs[:, 0], context[:, -1])
    assert roll.action.shape == (3, 3, ACTION_DIM) and roll.reward.shape == (3, 3)
    assert roll.reward.dtype == torch.float32 and torch.isfinite(roll.reward).all()
    state = model.reset(context)
    with pytest.raises(WorldModelConfigError, match="uint8"):
        model.reset(context.float())
    with pytest.raises(WorldModelConfigError, match="image_size"):
        model.reset(torch.zeros(1, 2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(WorldModelConfigError, match=r"\[B, A\]"):
        model.step(state, torch.zeros(3, ACTION_DIM + 1))
    with pytest.raises(WorldModelConfigError, match="NaN or inf"):
        model.step(state, torch.full((3, ACTION_DIM), float("nan")))
    with pytest.raises(WorldModelConfigError, match="T-1"):
        model.update(SegmentBatch(context, torch.zeros(3, 2, ACTION_DIM), torch.zeros(3, 1)))
    with pytest.raises(WorldModelConfigError, match="unknown Vid2World config keys"):
        Vid2World.from_config({"image_size": 16, "action_dim": 2, "channel": 3})


def test_save_load_round_trip_gives_the_same_imagination(tmp_path):
    model = micro_model(sampling_steps=4)
    model.update(random_batch())
    model.save_pretrained(tmp_path)
    loaded = Vid2World.from_pretrained(tmp_path)
    assert loaded.get_config() == model.get_config()
    context = random_batch(B=2, T=2).obs
    policy = lambda frames: torch.ones(frames.shape[0], ACTION_DIM) * 0.5  # noqa: E731
    a = model.rollout(context, policy, 2, generator=torch.Generator().manual_seed(3))
    b = loaded.rollout(context, policy, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.obs, b.obs) and torch.equal(a.reward, b.reward)
    c = loaded.rollout(context, policy, 2, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(a.obs, c.obs)  # the seed matters


def test_hydra_config_builds_the_model():
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "cfgs", "world_model", "vid2world.yaml"))
    assert cfg.name == "vid2world" and cfg.update_every_frames.diffusion == 10
    assert cfg.segment_length >= cfg.model.max_context_frames + 1
    model_cfg = {**OmegaConf.to_container(cfg.model), "size": "tiny", "image_size": 32, "action_dim": 4}
    model = Vid2World.from_config(model_cfg)
    assert model.config.guidance_scale == 2.5 and model.config.causal_transfer == "extrapolative"


def test_a_runs_settings_apply_to_a_loaded_checkpoint(tmp_path):
    """world_model.pretrained: the checkpoint's backbone; the run's causality, guidance, sampling and memory."""
    from omegaconf import OmegaConf

    micro_model(causal=False).save_pretrained(tmp_path / "noncausal")
    cfg = OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "cfgs", "world_model", "vid2world.yaml"))
    run = OmegaConf.to_container(cfg.model)
    run.update(guidance_scale=1.5, sampling_steps=4, memory={**run["memory"], "name": "history"})
    settings = Vid2World.run_overrides(run)
    assert "size" not in settings and "backbone" not in settings and settings["causal"] is True
    loaded = Vid2World.from_pretrained(tmp_path / "noncausal", **settings)
    assert loaded.config.causal and loaded.backbone.causal  # causalised on load, as the yaml says
    assert loaded.config.guidance_scale == 1.5 and loaded.config.sampling_steps == 4
    assert loaded.config.memory["name"] == "history" and loaded.config.backbone == micro_model().config.backbone


VRAG_STATE = {"name": "vrag", "window": 2, "retrieved": 2, "key": "state", "key_dim": 2, "max_frames": 8}


def keyed_model(**kw) -> Vid2World:
    """A VRAG state-key model whose key modules hold values (a learned key embedding, fitted
    key dynamics), so a load that dropped them would show."""
    from worldmodel.memory import KeyedSegmentBatch

    model = micro_model(memory=VRAG_STATE, **kw)
    batch = random_batch(T=7)
    model.update(KeyedSegmentBatch(batch.obs, batch.action, batch.reward, torch.randn(2, 7, 2)), parts=("diffusion",))
    with torch.no_grad():
        model.key_embedding.weight.normal_()
    return model


def test_causalising_keeps_every_module_and_a_causal_checkpoint_stays_causal(tmp_path):
    noncausal = keyed_model(causal=False)
    causal = causalize(noncausal, "masked")
    for name in ("key_embedding.weight", "key_dynamics.weight", "key_dynamics.count", "reward_head.mlp.0.weight"):
        assert torch.equal(causal.state_dict()[name], noncausal.state_dict()[name]), name
    causal.save_pretrained(tmp_path / "causal")
    with pytest.raises(WorldModelConfigError, match="cannot be run non-causally"):
        Vid2World.from_pretrained(tmp_path / "causal", causal=False)


def test_key_modules_start_fresh_or_are_left_out_when_the_runs_memory_changes(tmp_path):
    """``memory`` is a run setting: a window checkpoint fine-tunes with a VRAG state-key memory
    (new key modules at their fresh values) and a VRAG checkpoint runs with a window memory."""
    window = micro_model()
    window.save_pretrained(tmp_path / "window")
    keyed = Vid2World.from_pretrained(tmp_path / "window", memory=VRAG_STATE)
    assert keyed.key_embedding.weight.abs().sum() == 0 and int(keyed.key_dynamics.count) == 0
    torch.testing.assert_close(keyed.backbone.state_dict(), window.backbone.state_dict(), rtol=0, atol=0)
    keyed_model().save_pretrained(tmp_path / "vrag")
    plain = Vid2World.from_pretrained(tmp_path / "vrag", memory="window")
    assert plain.key_embedding is None and plain.key_dynamics is None
    with pytest.raises(WorldModelConfigError, match="key_dynamics"):  # a shape mismatch still fails
        Vid2World.from_pretrained(tmp_path / "vrag", memory={**VRAG_STATE, "key_dim": 3})


def test_action_free_segments_may_carry_no_action():
    """SegmentBatch.action=None (action-free data) trains an action_dim 0 model and is refused by one with actions."""
    batch = random_batch(B=2, T=3)
    model = Vid2World(image_size=16, action_dim=0, backbone=MICRO)
    metrics = model.update(SegmentBatch(batch.obs, None, batch.reward))
    assert np.isfinite(metrics["diffusion/loss"]) and np.isfinite(metrics["reward/loss"])
    assert torch.isfinite(model.diffusion_objective(SegmentBatch(batch.obs, None, batch.reward))[0])
    with pytest.raises(WorldModelConfigError, match="batch.action is None.*action_dim: 0"):
        micro_model().update(SegmentBatch(batch.obs, None, batch.reward))
    with pytest.raises(WorldModelConfigError, match="batch.action is None"):
        micro_model().diffusion_objective(SegmentBatch(batch.obs, None, batch.reward))


def test_a_causal_checkpoint_keeps_its_causal_transfer(tmp_path):
    causalize(micro_model(causal=False), "masked").save_pretrained(tmp_path / "c")
    loaded = Vid2World.from_pretrained(tmp_path / "c", causal=True, causal_transfer="extrapolative")
    assert loaded.config.causal_transfer == "masked"


@pytest.mark.parametrize("settings, message", [
    ({"backbone": {**MICRO, "causal": False}}, r"set model.causal instead"),
    ({"backbone": {**MICRO, "image_size": 32, "action_dim": 3}}, r"set model.action_dim, model.image_size instead"),
    ({"beta_schedule": "cosine"}, r"beta_schedule 'cosine'.*\['linear', 'scaled_linear', 'squaredcos_cap_v2'\]"),
    ({"beta_schedule": "sigmoid"}, r"beta_schedule 'sigmoid'"),  # DDPM has it, the DDIM sampler not
    ({"min_snr_gamma": 0.0}, "min_snr_gamma must be > 0"),
    ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number"),
    ({"sampling_steps": 7}, "must divide num_train_timesteps"),
    ({"sampling_steps": 2000}, "must divide num_train_timesteps"),
    ({"history_mix_prob": 1.5}, "history_mix_prob"),
    ({"reward_channels": 0}, "reward_channels"),
    ({"image_size": 48}, "reward head needs image_size"),
])
def test_bad_settings_are_refused_at_construction(settings, message):
    with pytest.raises(WorldModelConfigError, match=message):
        Vid2World(**{"image_size": 16, "action_dim": ACTION_DIM, "backbone": MICRO, **settings})


def test_imagination_is_reproducible_in_train_mode_with_dropout():
    """``step`` samples in eval mode (no dropout), whatever mode training left the model in."""
    model = Vid2World(image_size=16, action_dim=ACTION_DIM, backbone={**MICRO, "dropout": 0.5})
    context = random_batch().obs
    frames = []
    for _ in range(2):
        model.train()
        state = model.reset(context, generator=torch.Generator().manual_seed(0))
        frames.append(model.step(state, torch.zeros(2, ACTION_DIM))[0])
        assert model.training  # the mode is restored
    assert torch.equal(frames[0], frames[1])
    with pytest.raises(WorldModelConfigError, match="torch uint8 tensor"):
        model.reset(context.numpy())
    with pytest.raises(WorldModelConfigError, match="generator must be a torch.Generator"):
        model.reset(context, generator=0)


# ----- checks that pin sampling and training details -----
def test_step_guides_with_the_configured_guidance_scale():
    """Every denoising step of ``step`` guides with config.guidance_scale (a fixed 1.0 would
    silently turn classifier-free guidance off)."""
    model = micro_model(sampling_steps=2, guidance_scale=3.0).eval()
    scales, guided = [], model.guided_velocity

    def spy(x, time_emb, action_emb, history, scale):
        scales.append(scale)
        return guided(x, time_emb, action_emb, history, scale)

    model.guided_velocity = spy
    state = model.reset(random_batch().obs, generator=torch.Generator().manual_seed(0))
    model.step(state, torch.zeros(2, ACTION_DIM))
    assert scales == [3.0, 3.0]


def test_sampling_starts_from_pure_noise_for_any_step_count():
    """DDIM's trailing spacing: the first denoising step is at t = num_train_timesteps - 1 (leading
    spacing would start 4 steps at t = 750, from a frame that is not pure noise)."""
    model = micro_model().eval()
    seen, step = [], model.sampler.step
    model.sampler.step = lambda v, t, x, **kw: (seen.append(int(t)), step(v, t, x, **kw))[1]
    B = 2
    drop = torch.ones(B, 2, dtype=torch.bool)
    with torch.no_grad():
        history = model.encode_history(torch.zeros(B, 2, 3, 16, 16), torch.zeros(B, 2, ACTION_DIM), drop)
        for steps in (1, 4, 10):
            seen.clear()
            model.sample_next(history, torch.zeros(B, ACTION_DIM), steps=steps)
            assert len(seen) == steps and seen[0] == model.config.num_train_timesteps - 1, (steps, seen)


def test_imagined_frames_keep_their_action_for_later_steps():
    """An imagined frame is stored with its (known) action: the next step conditions on it, so a
    different recorded action, same frames and seed, gives a different next frame."""
    import dataclasses

    model = micro_model(sampling_steps=2, guidance_scale=2.0).eval()
    state = model.reset(random_batch().obs, generator=torch.Generator().manual_seed(0))
    _, _, state = model.step(state, torch.full((2, ACTION_DIM), 0.5))
    assert state.action_known[:, -1].all() and not state.action_known[:, :-1].any()
    frames = []
    for first in (0.5, -0.5):
        prev = state.prev_action.clone()
        prev[:, -1] = first
        changed = dataclasses.replace(state, prev_action=prev, generator=torch.Generator().manual_seed(1))
        frames.append(model.step(changed, torch.zeros(2, ACTION_DIM))[0])
    assert not torch.equal(frames[0], frames[1])


def spy_scheduler(model: Vid2World, name: str) -> list:
    """Record the timesteps of every call of the training scheduler's method ``name``."""
    calls, method = [], getattr(model.noise_scheduler, name)

    def spy(x, eps, t):
        calls.append(t.clone())
        return method(x, eps, t)

    setattr(model.noise_scheduler, name, spy)
    return calls


def test_each_frame_is_noised_at_the_level_its_embedding_names():
    """History-mixed prefixes: the noise added (and the v target) per frame are at exactly the
    level the denoiser is told, not at the uniform draw that the prefix level replaced."""
    torch.manual_seed(0)
    B, T, level = 16, 4, 10
    model = micro_model(history_mix_prob=1.0, history_noise_level=level)
    told, noised, target = spy_embed(model), spy_scheduler(model, "add_noise"), spy_scheduler(model, "get_velocity")
    no_action = torch.zeros(B, T, dtype=torch.bool)
    no_action[:, 0] = True
    with torch.no_grad():
        model.clip_diffusion_loss(torch.rand(B, T, 3, 16, 16) * 2 - 1, torch.randn(B, T, ACTION_DIM), no_action)
    (t, _), = told
    assert (t[:, 0] <= level).all()  # the prefix levels are in play
    assert torch.equal(noised[0].view(B, T), t) and torch.equal(target[0].view(B, T), t)


def test_min_snr_weight_is_the_v_prediction_form():
    """The loss weights each frame's v-MSE by min(SNR, gamma) / (SNR + 1) (min-SNR for v-prediction;
    min(SNR, gamma) / SNR is the epsilon-prediction form)."""
    torch.manual_seed(0)
    gamma, B, T = 5.0, 8, 2
    model = micro_model(min_snr_gamma=gamma, history_mix_prob=0.0)
    targets, get_velocity = [], model.noise_scheduler.get_velocity
    model.noise_scheduler.get_velocity = lambda x, eps, t: (targets.append((t, get_velocity(x, eps, t))),
                                                            targets[-1][1])[1]
    model.backbone.forward = lambda x, emb, cache=None: torch.zeros_like(x)  # mse = mean(target^2)
    with torch.no_grad():
        loss, _ = model.clip_diffusion_loss(torch.rand(B, T, 3, 16, 16) * 2 - 1, torch.zeros(B, T, ACTION_DIM),
                                            torch.ones(B, T, dtype=torch.bool))
    (t, target), = targets
    alpha_bar = model.noise_scheduler.alphas_cumprod[t].double()
    snr = alpha_bar / (1 - alpha_bar)
    assert (snr > gamma).any() and (snr < gamma).any(), snr  # both sides of the clamp
    weight = snr.clamp(max=gamma) / (snr + 1)
    want = (weight * target.double().pow(2).mean(dim=(1, 2, 3))).mean()
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("method", ["masked", "extrapolative", "shift"])
def test_causalized_backbone_does_not_see_later_frames(method):
    """A causalised non-causal U-Net (temporal convolutions and attention alike): changing later
    frames leaves earlier frames' outputs unchanged."""
    net = VideoUNet(BackboneConfig(image_size=16, action_dim=ACTION_DIM, causal=False, **MICRO)).eval()
    causal = causalize_module(net, method)
    B, T, t = 2, 4, 1
    x = torch.randn(B, T, 3, 16, 16)
    emb = net.embed(torch.randint(0, 1000, (B, T)), torch.randn(B, T, ACTION_DIM), torch.zeros(B, T, dtype=torch.bool))
    x2 = x.clone()
    x2[:, t + 1:] += 1.0
    with torch.no_grad():
        y, y2 = causal(x, emb), causal(x2, emb)
    assert causal.causal and not net.causal
    torch.testing.assert_close(y[:, :t + 1], y2[:, :t + 1], rtol=0, atol=1e-5)


# ----- bad settings and inputs: one clear error -----
@pytest.mark.parametrize("grad_clip", [0.0, None, 2.0])
def test_grad_clip_zero_or_none_is_off_and_negative_is_refused(grad_clip):
    """0 / None turn clipping off (``WorldModel.optimizer_step``); a negative max norm would make
    clip_grad_norm_ flip every gradient, so it is refused."""
    assert micro_model(grad_clip=grad_clip).config.grad_clip == grad_clip
    with pytest.raises(WorldModelConfigError, match="grad_clip must be a number >= 0"):
        micro_model(grad_clip=-grad_clip if grad_clip else -1.0)


def test_backbone_in_channels_other_than_rgb_is_refused():
    """Frames, sampler noise and the reward head are RGB; in_channels=4 would fail deep in a conv."""
    model = Vid2World(image_size=16, action_dim=ACTION_DIM, backbone={**MICRO, "in_channels": 3})
    assert model.backbone.conv_in.in_channels == 3  # an old config that names the default still loads
    with pytest.raises(WorldModelConfigError, match=r"backbone.in_channels=4.*remove model.backbone.in_channels"):
        Vid2World(image_size=16, action_dim=ACTION_DIM, backbone={**MICRO, "in_channels": 4})


@pytest.mark.parametrize("call, message", [
    (lambda m, b: m.update(SegmentBatch(b.obs, b.action, None), parts=("diffusion",)),
     r"batch.reward must be a float tensor \[B, T-1\] = \(2, 2\), got NoneType"),
    (lambda m, b: m.update(SegmentBatch(b.obs, b.action, b.reward.tolist())), "batch.reward must be.*got list"),
    (lambda m, b: m.reset(b.obs[:0]), r"context_obs holds no rollouts \(batch size B = 0\)"),
    (lambda m, b: m.update(SegmentBatch(b.obs[:0], b.action[:0], b.reward[:0])), r"batch.obs holds no rollouts"),
    (lambda m, b: micro_model(image_size=0), "image_size must be a whole number of pixels >= 1"),
    (lambda m, b: micro_model(image_size=2), "reward head needs image_size"),
    (lambda m, b: Vid2World(image_size=16, action_dim=-1, backbone=MICRO), "action_dim must be a whole number >= 0"),
])
def test_bad_inputs_give_one_clear_error(call, message):
    with pytest.raises(WorldModelConfigError, match=message):
        call(micro_model(), random_batch())


def load_bench_script():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "scripts", "bench_vid2world.py")
    spec = importlib.util.spec_from_file_location("bench_vid2world", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.mark.parametrize("argv, message", [
    (["--steps", "4", "3"], "sampling_steps=3 must divide"),
    (["--steps", "2000"], "sampling_steps=2000 must divide"),
    (["--action-dim", "-1"], "--action-dim: must be at least 0"),
])
def test_bench_script_refuses_settings_the_model_refuses(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_bench_script().parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_bench_script_times_each_step_count_it_names(monkeypatch, capsys):
    """Each row's rollouts sample with that row's DDIM step count (set through the validated config)."""
    script = load_bench_script()
    used, time_rollout = [], script.time_rollout

    def spy(model: Vid2World, context: torch.Tensor, actions: torch.Tensor) -> float:
        seconds = time_rollout(model, context, actions)
        used.append((model.config.sampling_steps, len(model.sampler.timesteps)))
        return seconds

    monkeypatch.setattr(script, "time_rollout", spy)
    monkeypatch.setattr("sys.argv", ["bench", "--image-size", "16", "--batch", "1", "--horizon", "1", "--repeats", "1",
                                     "--steps", "1", "2", "--no-cache-baseline", "--device", "cpu",
                                     "--default-malloc", "--action-dim", "0"])
    script.main()
    assert used == [(1, 1), (1, 1), (2, 2), (2, 2)]  # a warm-up and one timed repeat per row
    assert "summary: Vid2World tiny on cpu, B=1 k=1: imagined transitions/s 1 steps" in capsys.readouterr().out


def test_bench_script_update_mode_trains_with_and_without_checkpointing(monkeypatch, capsys):
    script = load_bench_script()
    flags = []
    update = Vid2World.update

    def spy(model: Vid2World, batch, parts=None):
        flags.append((model.backbone.gradient_checkpointing, tuple(batch.obs.shape)))
        return update(model, batch, parts)

    monkeypatch.setattr(Vid2World, "update", spy)
    monkeypatch.setattr("sys.argv", ["bench", "--update", "--image-size", "16", "--batch", "1", "--repeats", "1",
                                     "--memory", "vrag", "--segment-length", "16", "--device", "cpu",
                                     "--default-malloc"])
    script.main()
    assert flags == [(True, (1, 16, 3, 16, 16))] * 2 + [(False, (1, 16, 3, 16, 16))] * 2
    assert "summary: Vid2World tiny update on cpu, 1x16 frames, vrag: checkpointing peaks at" in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", ["bench", "--update", "--memory", "vrag", "--segment-length", "8"])
    with pytest.raises(SystemExit):  # too short for VRAG's training clips: a usage error
        script.main()


def test_gradient_checkpointing_keeps_the_update_and_saves_fewer_activations():
    """The same loss and gradients (dropout on: its RNG is replayed in the recompute), from far
    fewer tensors kept for the backward pass."""
    def saved_and_grads(checkpointing: bool) -> tuple[int, float, list[torch.Tensor]]:
        torch.manual_seed(0)
        model = Vid2World(image_size=16, action_dim=ACTION_DIM, backbone={**MICRO, "dropout": 0.1},
                          gradient_checkpointing=checkpointing).train()
        saved = []
        torch.manual_seed(1)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            batch = random_batch(T=4)
            loss = model.diffusion_loss(batch.obs.float() / 127.5 - 1, batch.action)[0]
        loss.backward()
        return sum(saved), loss.item(), [p.grad.clone() for p in model.backbone.parameters() if p.grad is not None]

    full, checkpointed = saved_and_grads(False), saved_and_grads(True)
    assert checkpointed[1] == full[1] and len(checkpointed[2]) == len(full[2])
    for a, b in zip(full[2], checkpointed[2]):
        torch.testing.assert_close(a, b)
    assert checkpointed[0] < full[0] / 3, (checkpointed[0], full[0])
    assert Vid2World.from_config(micro_model(gradient_checkpointing=True).get_config()).backbone.gradient_checkpointing
    with pytest.raises(WorldModelConfigError, match="gradient_checkpointing must be true or false, got 'false'"):
        micro_model(gradient_checkpointing="false")
