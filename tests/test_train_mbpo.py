"""MBPO end to end on Meta-World with tiny world models, in-process so the buffers can be inspected."""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from mbrl.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
HORIZON = 3
TINY_MBPO = [
    "preset=cpu", "task.episode_length=15", "num_train_frames=150", "num_seed_frames=60",
    "eval_every_frames=0", "num_eval_episodes=1", "save_every_frames=60", "agent.batch_size=16",
    "agent.hidden_dim=64", "agent.num_expl_steps=10", "replay.capacity=5000", "log.wandb=disabled",
    "log.progress_bar=false", "log.tensorboard=false", "mbpo.start_frames=60", "mbpo.init_wm_updates=2",
    "mbpo.init_rollout_batches=1", "mbpo.gen_every_frames=30", "mbpo.gen_batch=4",
    f"mbpo.gen_horizon={HORIZON}", "mbpo.validate_every_episodes=2", "mbpo.validate_batch=2",
    "world_model.batch_size=2", "world_model.segment_length=6",
]


def make_trainer(run_dir: Path, *overrides: str) -> Trainer:
    with initialize_config_dir(config_dir=str(REPO / "cfgs"), version_base=None):
        cfg = compose("config", overrides=[*TINY_MBPO, *overrides])
    return Trainer(cfg, run_dir)


def frame_keys(frames: np.ndarray) -> set[bytes]:
    return {f.tobytes() for f in frames.reshape(-1, *frames.shape[-3:])}


@pytest.mark.parametrize("world_model", ["ivideogpt", "vid2world"])
def test_mbpo_run_imagines_and_mixes_batches(tmp_path, world_model):
    fit = ["world_model.model.max_context_frames=5"] if world_model == "vid2world" else []  # segments of 6
    trainer = make_trainer(tmp_path / "run", f"world_model={world_model}", "mbpo.real_ratio=0.25", *fit)
    act, policy_steps = trainer.agent.act, []

    def recording_act(obs, step, eval_mode, generator=None):
        if obs.shape[0] > 1:  # a rollout batch (the env acts one observation at a time)
            policy_steps.append(step)
        return act(obs, step, eval_mode, generator)
    trainer.agent.act = recording_act
    update, updates = trainer.agent.update, []  # (imagined transitions held, the batch) per agent update

    def recording_update(batch, step):
        updates.append((len(trainer.mbpo.imagined), batch))
        return update(batch, step)
    trainer.agent.update = recording_update
    wm_update, wm_parts = trainer.mbpo.world_model.update, []  # the parts of each world-model update

    def recording_wm_update(batch, parts=None):
        wm_parts.append(parts)
        return wm_update(batch, parts=parts)
    trainer.mbpo.world_model.update = recording_wm_update
    trainer.train()
    mbpo = trainer.mbpo
    # imagination starts at frame 60 = step 30: the initial rollouts act as at the agent's latest
    # step, 29 (past TINY's num_expl_steps=10: its policy), later ones at the current step
    assert policy_steps[:HORIZON] == [29] * HORIZON
    assert policy_steps[HORIZON:] and min(policy_steps[HORIZON:]) >= 30 > trainer.cfg.agent.num_expl_steps
    # The schedule: init_wm_updates of every part at the start (frame 60), then each part at every
    # multiple of its own update_every_frames after it, up to the run's last frame (150).
    cfg = trainer.cfg
    start, end = cfg.mbpo.start_frames, cfg.num_train_frames

    def multiples(every: int) -> int:
        return end // every - start // every
    schedule = dict(cfg.world_model.update_every_frames)
    assert len(schedule) >= 2  # (iVideoGPT: tokenizer and transformer on different schedules)
    assert wm_parts[:cfg.mbpo.init_wm_updates] == [None] * cfg.mbpo.init_wm_updates
    later = wm_parts[cfg.mbpo.init_wm_updates:]
    assert {part: later.count((part,)) for part in schedule} == {p: multiples(e) for p, e in schedule.items()}
    assert len(later) == sum(multiples(e) for e in schedule.values()) and mbpo.wm_updates == len(wm_parts)
    # rollouts: the initial batch plus one every gen_every_frames after the start, gen_batch each,
    # all kept (finite); the policy acts once per imagined step of each
    rollout_batches, rest = divmod(len(policy_steps), HORIZON)
    assert rest == 0 and rollout_batches == cfg.mbpo.init_rollout_batches + multiples(cfg.mbpo.gen_every_frames)
    assert mbpo.imagined.total_added == mbpo.imagined.size == rollout_batches * trainer.cfg.mbpo.gen_batch

    # An agent batch: the first real_ratio part from the real buffer, the rest imagined.
    sizes = []
    for source in (mbpo.real, mbpo.imagined):
        source.sample = (lambda sample: lambda n, rng: sizes.append(n) or sample(n, rng))(source.sample)
    batch = mbpo.agent_batch(16)
    n_real = 4  # round(16 x real_ratio 0.25)
    assert sizes == [n_real, 16 - n_real]
    imagined_frames = frame_keys(mbpo.imagined.frames[:mbpo.imagined.size, 3:])  # imagined steps only
    newest = batch.obs[:, -3:].numpy()
    from_imagination = [f.tobytes() in imagined_frames for f in newest]
    assert not any(from_imagination[:n_real])
    assert sum(from_imagination[n_real:]) >= 1  # step-0 samples start from a real frame

    # The loop trains the agent on these mixed batches: from the first rollouts on (the same step as
    # the first update here), each update's rows after n_real are imagined transitions, whose next
    # obs ends with an imagined frame (a stored rollout's frames after its real start), and the
    # first n_real rows are real.
    assert updates and all(held > 0 for held, _ in updates)
    for _, batch in updates:
        newest = [f.tobytes() in imagined_frames for f in batch.next_obs[:, -3:].cpu().numpy()]
        assert newest == [False] * n_real + [True] * (16 - n_real)

    run = tmp_path / "run"
    with open(run / "validation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(np.isfinite(float(r["psnr"])) for r in rows)
    assert list((run / "videos").glob("imagination_*.mp4"))
    with open(run / "train.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    assert int(last["imagined_size"]) == len(mbpo.imagined)


@pytest.mark.parametrize("start_frames, uses_policy", [(60, False), (90, True)])
def test_initial_rollouts_act_as_the_agent_at_its_latest_step(tmp_path, start_frames, uses_policy):
    """As the official code (global_step - 1), the agent's own schedule decides how the first rollouts
    act: at start_frames = num_seed_frames (the reference) it is still in its uniform exploration phase,
    like the seed data; with a later start_frames its trained policy acts."""
    trainer = make_trainer(tmp_path / "run", "world_model=ivideogpt", "agent.num_expl_steps=null",
                           f"mbpo.start_frames={start_frames}", f"num_train_frames={start_frames}")
    agent = trainer.agent
    assert agent.num_expl_steps == 30  # num_seed_frames 60 / action_repeat 2
    act, forward, actor_ran, rollout_acts = agent.act, agent.actor.forward, [], []

    def recording_forward(*args, **kwargs):
        actor_ran.append(True)
        return forward(*args, **kwargs)

    def recording_act(obs, step, eval_mode, generator=None):
        actor_ran.clear()
        action = act(obs, step, eval_mode, generator)
        if obs.shape[0] > 1:  # a rollout batch: (step, whether the actor chose the actions)
            rollout_acts.append((step, bool(actor_ran)))
        return action
    agent.actor.forward, agent.act = recording_forward, recording_act
    trainer.train()
    assert trainer.mbpo.started and trainer.frame == start_frames
    # the only rollouts are the initial batch, imagined after agent step start_frames / 2
    assert rollout_acts == [(start_frames // 2 - 1, uses_policy)] * HORIZON


@pytest.mark.parametrize("context", [1, 2, 3, 4])  # shorter than, as long as and longer than the frame stack
def test_generate_stacks_real_frames_then_imagined_ones_in_order(tmp_path, context):
    """Through MBPO.generate with the real tiny iVideoGPT: each stored rollout is
    [o_{t-2}, o_{t-1}, o_t, imagined_1..k] (real frames of the episode, then what world_model.step
    returned), the world model is reset on the last `context` real frames, and at imagined step i
    the policy sees the frame stack ending at the newest frame so far."""
    extra = ["+world_model.model.transformer.max_position_embeddings=1536"] if context > 3 else []  # 257 tokens/frame
    trainer = make_trainer(tmp_path / "run", "world_model=ivideogpt", f"world_model.model.context_frames={context}",
                           "mbpo.start_frames=1000000", *extra)
    mbpo, agent, fs = trainer.mbpo, trainer.agent, trainer.frame_stack
    wm = mbpo.world_model
    assert fs == 3 and wm.context_frames == context
    episode, _ = trainer.run_episode(trainer.train_env, eval_mode=False, seed=0)
    trainer.store_episode(episode)
    real = {f.tobytes(): t for t, f in enumerate(episode.obs)}
    assert len(real) == len(episode.obs)  # the episode's frames tell their time apart
    reset, step, act = wm.reset, wm.step, agent.act
    contexts, imagined, seen = [], [], []

    def recording_reset(context_obs, *args, **kwargs):
        contexts.append(context_obs.cpu().numpy().copy())
        return reset(context_obs, *args, **kwargs)

    def recording_step(state, action):
        frame, reward, state = step(state, action)
        imagined.append(frame.cpu().numpy().copy())
        return frame, reward, state

    def recording_act(obs, step, eval_mode, generator=None):
        seen.append(obs.cpu().numpy().copy())
        return act(obs, step, eval_mode, generator)
    wm.reset, wm.step, agent.act = recording_reset, recording_step, recording_act

    batch = trainer.cfg.mbpo.gen_batch
    assert mbpo.generate(trainer.step) == batch
    assert len(contexts) == 1 and len(imagined) == len(seen) == HORIZON
    stored = mbpo.imagined.frames[:batch]
    imagined = np.stack(imagined, 1)  # [B, k, 3, H, W]
    starts = []
    for b in range(batch):
        t = real[stored[b, fs - 1].tobytes()]  # the rollout's real start o_t
        starts.append(t)
        expected = [episode.obs[max(t - j, 0)] for j in range(fs - 1, -1, -1)] + list(imagined[b])
        np.testing.assert_array_equal(stored[b], np.stack(expected))
        np.testing.assert_array_equal(contexts[0][b], episode.obs[[max(t - j, 0) for j in range(context - 1, -1, -1)]])
        for i in range(HORIZON):
            np.testing.assert_array_equal(seen[i][b], np.concatenate(expected[i:i + fs]))
    assert max(starts) >= fs - 1  # some stack of three distinct real frames was checked
    trainer.close()


@pytest.mark.parametrize("ratio", [-0.25, 1.5])
def test_a_real_ratio_outside_0_1_is_refused_at_start(tmp_path, ratio):
    from mbrl.utils import ConfigValueError

    with pytest.raises(ConfigValueError, match=rf"mbpo\.real_ratio must be in \[0, 1\], got {ratio}"):
        make_trainer(tmp_path / "run", "world_model=ivideogpt", f"mbpo.real_ratio={ratio}")


def test_real_ratios_0_and_1_give_all_imagined_and_all_real_batches(tmp_path):
    trainer = make_trainer(tmp_path / "run", "world_model=ivideogpt", "mbpo.real_ratio=1.0",
                           "mbpo.start_frames=1000000")
    mbpo = trainer.mbpo
    episode, _ = trainer.run_episode(trainer.train_env, eval_mode=False, seed=0)
    trainer.store_episode(episode)
    mbpo.generate(trainer.step)
    imagined_frames = frame_keys(mbpo.imagined.frames[:mbpo.imagined.size, trainer.frame_stack:])
    for ratio, imagined in ((1.0, False), (0.0, True)):
        mbpo.cfg.real_ratio = ratio
        batch = mbpo.agent_batch(16)
        assert len(batch.obs) == 16
        assert [f.tobytes() in imagined_frames for f in batch.next_obs[:, -3:].numpy()] == [imagined] * 16
    trainer.close()


def test_validation_draws_from_its_own_stream(tmp_path):
    trainer = make_trainer(tmp_path / "run", "world_model=ivideogpt", "mbpo.start_frames=1000000")
    mbpo = trainer.mbpo
    episode, _ = trainer.run_episode(trainer.train_env, eval_mode=False, seed=0)
    trainer.store_episode(episode)
    rng, generator = mbpo.rng.bit_generator.state, mbpo.generator.get_state()
    first = mbpo.validate(None, 1, frame=30)
    assert mbpo.rng.bit_generator.state == rng and torch.equal(mbpo.generator.get_state(), generator)
    assert mbpo.validate(None, 1, frame=30) == first  # the same segments and noise at the same frame
    assert mbpo.validate(None, 1, frame=45) != first
    trainer.close()


def test_mbpo_resume_restores_world_model(tmp_path):
    run = tmp_path / "run"
    first = make_trainer(run, "world_model=ivideogpt", "num_train_frames=90")
    first.train()
    weights = {k: v.clone() for k, v in first.mbpo.world_model.state_dict().items()}
    updates = first.mbpo.wm_updates
    imagined = {k: v.copy() for k, v in first.mbpo.imagined.state_arrays().items()}
    assert imagined["counters"][0] > 0
    resumed = make_trainer(run, "world_model=ivideogpt", "num_train_frames=120", "resume=true")
    assert resumed.restore()
    assert resumed.frame == 90 and resumed.mbpo.wm_updates == updates and resumed.mbpo.started
    for key, value in resumed.mbpo.world_model.state_dict().items():
        torch.testing.assert_close(value, weights[key])
    # the imagined buffer goes on as it was, rather than being imagined afresh
    assert not resumed.mbpo.needs_refill
    for key, value in resumed.mbpo.imagined.state_arrays().items():
        np.testing.assert_array_equal(value, imagined[key])
    resumed.close()
    from worldmodel.registry import load_pretrained  # the run's world_model/ folder: the same weights

    exported = load_pretrained(run / "world_model")
    for key, value in exported.state_dict().items():
        torch.testing.assert_close(value, weights[key])
    finished = make_trainer(run, "world_model=ivideogpt", "num_train_frames=120", "resume=true")
    finished.train()
    assert finished.frame >= 120 and len(finished.mbpo.imagined) > 0
    # Stopped at 90 and resumed, the run is the uninterrupted one bit for bit: agent, world model,
    # imagined buffer and replay RNG (the checkpoint restores every random stream it draws from).
    whole = make_trainer(tmp_path / "whole", "world_model=ivideogpt", "num_train_frames=120")
    whole.train()
    for name in ("actor", "critic"):
        for key, value in getattr(whole.agent, name).state_dict().items():
            assert torch.equal(value, getattr(finished.agent, name).state_dict()[key]), (name, key)
    for key, value in whole.mbpo.world_model.state_dict().items():
        assert torch.equal(value, finished.mbpo.world_model.state_dict()[key]), key
    for key, value in whole.mbpo.imagined.state_arrays().items():
        np.testing.assert_array_equal(value, finished.mbpo.imagined.state_arrays()[key])
    assert whole.rng.bit_generator.state == finished.rng.bit_generator.state


def test_an_imagined_buffer_that_is_not_the_checkpoints_is_imagined_afresh(tmp_path, capsys):
    run = tmp_path / "run"
    first = make_trainer(run, "world_model=ivideogpt", "num_train_frames=90")
    first.train()
    first.close()
    saved = run / "checkpoints" / "imagined.npz"
    with np.load(saved) as data:  # as if killed after writing the buffer of a later checkpoint
        arrays = {k: data[k] for k in data.files}
    arrays["counters"][2] += 4
    np.savez(saved, **arrays)
    resumed = make_trainer(run, "world_model=ivideogpt", "resume=true")
    assert resumed.restore() and resumed.mbpo.needs_refill and len(resumed.mbpo.imagined) == 0
    assert "is not used (it holds the buffer after" in capsys.readouterr().err
    resumed.close()
    saved.unlink()  # checkpoint_imagined=false writes none, and a resumed run imagines afresh
    off = make_trainer(run, "world_model=ivideogpt", "num_train_frames=120", "resume=true",
                       "mbpo.checkpoint_imagined=false")
    off.train()
    assert not saved.exists() and off.mbpo.imagined.total_added > arrays["counters"][2] - 4


def test_world_model_that_does_not_fit_the_env_is_refused(tmp_path):
    from worldmodel.interface import WorldModelConfigError

    trainer = make_trainer(tmp_path / "a", "world_model=ivideogpt")
    trainer.mbpo.world_model.save_pretrained(tmp_path / "wm")
    trainer.close()
    with pytest.raises(WorldModelConfigError, match="64x64"):
        make_trainer(tmp_path / "b", "world_model=ivideogpt", f"world_model.pretrained={tmp_path / 'wm'}",
                     "task.image_size=84")


def test_a_world_model_that_needs_state_keys_is_refused_at_start(tmp_path):
    from worldmodel.interface import WorldModelConfigError

    with pytest.raises(WorldModelConfigError, match="use memory.key=pixel"):
        make_trainer(tmp_path / "run", "world_model=vid2world", "world_model.segment_length=16",
                     "+world_model.model.memory={name: vrag, window: 2, retrieved: 2, key: state, key_dim: 2}")


def test_pretrained_world_model_takes_the_runs_settings_and_bad_lengths_fail_at_start(tmp_path):
    """A checkpoint brings its weights and sizes; sampling and training come from the run's config."""
    from worldmodel.interface import WorldModelConfigError

    trainer = make_trainer(tmp_path / "a", "world_model=ivideogpt")
    trainer.mbpo.world_model.save_pretrained(tmp_path / "wm")
    trainer.close()
    loaded = make_trainer(tmp_path / "b", "world_model=ivideogpt", f"world_model.pretrained={tmp_path / 'wm'}",
                          "world_model.model.sampling.top_k=7", "world_model.model.training.lr=0.0005")
    model = loaded.mbpo.world_model
    assert model.sampling["top_k"] == 7 and model.optimizers["transformer"].param_groups[0]["lr"] == 5e-4
    loaded.close()
    with pytest.raises(WorldModelConfigError, match="holds a 'ivideogpt' model; set world_model=ivideogpt"):
        make_trainer(tmp_path / "c", "world_model=vid2world", f"world_model.pretrained={tmp_path / 'wm'}")
    # Refused when the run starts, not after the world model's first updates.
    with pytest.raises(WorldModelConfigError, match="segment_length between"):
        make_trainer(tmp_path / "d", "world_model=ivideogpt", "world_model.segment_length=40")
    with pytest.raises(WorldModelConfigError, match="longer than max_future_frames"):
        make_trainer(tmp_path / "e", "world_model=ivideogpt", "mbpo.gen_horizon=40")


def test_agent_updates_every_step_times_the_config_without_a_world_model_too(tmp_path):
    """The official DrQ-v2 baseline and MBPO alike update the agent update_times times per update step."""
    overrides = [o for o in TINY_MBPO if not o.startswith("world_model.")]
    with initialize_config_dir(config_dir=str(REPO / "cfgs"), version_base=None):
        cfg = compose("config", overrides=[*overrides, "world_model=none", "agent.update_every_steps=1",
                                           "agent.update_times=2"])
    trainer = Trainer(cfg, tmp_path / "run")
    steps = []
    update = trainer.agent.update

    def counting_update(batch, step):
        steps.append(step)
        return update(batch, step)

    trainer.agent.update = counting_update
    act, acted = trainer.agent.act, []  # (step passed, eval_mode) per env action

    def recording_act(obs, step, eval_mode, generator=None):
        acted.append((step, eval_mode))
        return act(obs, step, eval_mode, generator)
    trainer.agent.act = recording_act
    trainer.train()
    per_step = {s: steps.count(s) for s in steps}
    assert set(per_step.values()) == {2} and max(per_step) == trainer.step
    assert sorted(per_step) == list(range(min(per_step), trainer.step + 1))  # every agent step after seeding
    # The agent acts at its agent-step count (which drives num_expl_steps and the std schedule), not
    # the frame count: 0, 1, 2, ... in training, and the final evaluation at the last step.
    assert trainer.action_repeat == 2 and trainer.frame == 2 * trainer.step == 150
    assert [s for s, eval_mode in acted if not eval_mode] == list(range(trainer.step))
    assert {s for s, eval_mode in acted if eval_mode} == {trainer.step}


def test_a_resumed_run_meets_the_episode_starts_of_an_uninterrupted_one(tmp_path):
    from worldmodel.episodes import iter_episodes

    overrides = [o for o in TINY_MBPO if not o.startswith("world_model.")] + ["world_model=none"]

    def run(run_dir: Path, *extra: str) -> None:
        with initialize_config_dir(config_dir=str(REPO / "cfgs"), version_base=None):
            cfg = compose("config", overrides=[*overrides, *extra])
        trainer = Trainer(cfg, run_dir)
        trainer.train()
        trainer.close()

    run(tmp_path / "whole", "num_train_frames=120")  # 4 episodes of 30 frames
    run(tmp_path / "split", "num_train_frames=60")
    run(tmp_path / "split", "num_train_frames=120", "resume=true")
    starts = {name: [ep.obs[0] for _, ep in iter_episodes(tmp_path / name / "episodes", 64, 4)]
              for name in ("whole", "split")}
    assert len(starts["whole"]) == len(starts["split"]) == 4
    assert all(np.array_equal(a, b) for a, b in zip(starts["whole"], starts["split"]))
    assert not np.array_equal(starts["whole"][0], starts["whole"][2])  # the starts do vary


def test_eval_starts_repeat_within_a_run_and_differ_between_run_seeds(tmp_path):
    """Each evaluation of a run meets the same starts; runs with neighbouring seeds share none
    (seed + offset + i would share all but one)."""
    overrides = [o for o in TINY_MBPO if not o.startswith("world_model.")] + ["world_model=none", "num_eval_episodes=2"]
    trainers = []
    for s in (1, 2):
        with initialize_config_dir(config_dir=str(REPO / "cfgs"), version_base=None):
            trainers.append(Trainer(compose("config", overrides=[*overrides, f"seed={s}"]), tmp_path / f"seed{s}"))
    seeds = [[t.eval_episode_seed(i) for i in range(20)] for t in trainers]
    assert not set(seeds[0]) & set(seeds[1])
    reset_seeds, reset = [], trainers[0].eval_env.reset

    def recording_reset(*args, seed=None, **kwargs):
        reset_seeds.append(seed)
        return reset(*args, seed=seed, **kwargs)
    trainers[0].eval_env.reset = recording_reset
    for _ in range(2):  # two evaluations of the run: the same starts, from eval_episode_seed
        trainers[0].evaluate()
    n = trainers[0].cfg.num_eval_episodes
    assert reset_seeds == seeds[0][:n] * 2
    a, b = (trainers[0].eval_env.reset(seed=s)[0] for s in seeds[0][:2])
    assert not np.array_equal(a, b)  # the seeds reach the env: different starts
    for t in trainers:
        t.close()


@pytest.mark.parametrize("keep", [True, False])
def test_keep_freed_memory_decides_the_malloc_thresholds(tmp_path, monkeypatch, keep):
    import mbrl.trainer

    calls = []
    monkeypatch.setattr(mbrl.trainer, "keep_freed_host_memory", lambda: calls.append(True) or True)
    overrides = [o for o in TINY_MBPO if not o.startswith("world_model.")]
    with initialize_config_dir(config_dir=str(REPO / "cfgs"), version_base=None):
        cfg = compose("config", overrides=[*overrides, "world_model=none", f"keep_freed_memory={keep}"])
    Trainer(cfg, tmp_path / "run")
    assert calls == ([True] if keep else [])


def test_a_launch_without_resume_into_a_run_dir_that_holds_a_run_is_refused(tmp_path):
    from mbrl.utils import ConfigValueError

    run, no_mbpo = tmp_path / "run", ("world_model=ivideogpt", "mbpo.start_frames=1000000")
    make_trainer(run, *no_mbpo, "num_train_frames=30").train()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(ConfigValueError, match=f"already holds a run.*resume={run}"):
        make_trainer(run, *no_mbpo, "seed=2")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing touched
    resumed = make_trainer(run, *no_mbpo, "num_train_frames=60", "resume=true")
    resumed.train()
    assert resumed.frame == 60


def test_a_validation_horizon_longer_than_an_episode_is_refused_at_start(tmp_path):
    from mbrl.utils import ConfigValueError

    with pytest.raises(ConfigValueError, match="validation predicts mbpo.gen_horizon=4 .* more than an episode"):
        make_trainer(tmp_path / "run", "world_model=ivideogpt", "task.episode_length=4",
                     "world_model.segment_length=4", "mbpo.gen_horizon=4")
    make_trainer(tmp_path / "run", "world_model=ivideogpt", "task.episode_length=4", "world_model.segment_length=4",
                 "mbpo.gen_horizon=4", "mbpo.validate_every_episodes=0").close()


def test_a_second_trainer_in_a_run_dir_that_is_training_is_refused(tmp_path):
    """Two processes would write the same episode files and checkpoint: the second waits its turn.
    The lock is the OS's, so a killed run leaves none behind (here: the first trainer closes)."""
    import subprocess
    import sys

    from mbrl.run_lock import RunInUseError, run_dir_in_use

    run, no_mbpo = tmp_path / "run", ("world_model=ivideogpt", "mbpo.start_frames=1000000")
    first = make_trainer(run, *no_mbpo, "num_train_frames=30")
    probe = f"from pathlib import Path; from mbrl.run_lock import run_dir_in_use; print(run_dir_in_use(Path('{run}')))"
    in_use = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert in_use.stdout.strip() == "True"
    hydra = run / ".hydra"  # as Hydra leaves them: the refused launch rewrote config.yaml before the refusal
    (hydra / "started_with").mkdir(parents=True)
    (hydra / "started_with" / "config.yaml").write_text("agent:\n  lr: 0.0001\n")
    (hydra / "config.yaml").write_text("agent:\n  lr: 0.5\n")
    with pytest.raises(RunInUseError, match="another process is training in"):
        make_trainer(run, *no_mbpo, "resume=true")
    assert (hydra / "config.yaml").read_text() == "agent:\n  lr: 0.0001\n"  # the live run's settings back
    first.train()  # ends with close(), which releases the run dir
    assert not run_dir_in_use(run)
    make_trainer(run, *no_mbpo, "num_train_frames=60", "resume=true").train()


def test_an_update_schedule_for_a_part_the_world_model_lacks_is_one_clear_error(tmp_path):
    from worldmodel.interface import WorldModelConfigError

    with pytest.raises(WorldModelConfigError, match=r"names \['diffusion'\], but this world model trains the parts"):
        make_trainer(tmp_path / "run", "world_model=ivideogpt", "+world_model.update_every_frames.diffusion=40")


def test_a_filesystem_without_flock_trains_unguarded_with_a_warning(tmp_path, monkeypatch):
    import fcntl

    from mbrl import run_lock

    def no_locks(*args):
        raise OSError(37, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(RuntimeWarning, match="cannot lock .* training without the one-process-per-run-dir guard"):
        assert run_lock.lock_run_dir(tmp_path / "run") is None
    assert not run_lock.run_dir_in_use(tmp_path / "run")  # (a status report: not known to be in use)


def write_hydra_files(hydra_dir: Path, config: str, overrides: list[str], choices: str = "preset: fast") -> None:
    """The three files Hydra writes at a job's start (only what run_settings reads)."""
    hydra_dir.mkdir(parents=True, exist_ok=True)
    (hydra_dir / "config.yaml").write_text(config)
    (hydra_dir / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (hydra_dir / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    choices:\n      {choices}\n")


def test_a_relaunch_adding_or_dropping_a_key_it_sets_is_refused_and_code_added_keys_are_not(tmp_path):
    """A key only one launch has: a change when that launch's command line set it (``+key=``),
    a key the code added since the run started otherwise (mbrl/run_settings.py)."""
    from mbrl.run_settings import check_relaunch
    from mbrl.utils import ConfigValueError

    run, base = tmp_path / "run", "seed: 1\ntask:\n  name: plate_slide\nagent:\n  lr: 0.0001\n"
    hydra = run / ".hydra"
    write_hydra_files(hydra, base + "  extra: 3\n", ["+agent.extra=3"])
    check_relaunch(run, resume=False)  # the first start keeps its files
    started = (hydra / "started_with" / "config.yaml").read_text()

    write_hydra_files(hydra, base, ["resume=true"])  # the relaunch drops the run's +agent.extra=3
    with pytest.raises(ConfigValueError, match=r"agent.extra=3 \(this launch: \(absent\)\).* relaunch it with "
                                               r"\+\+agent.extra=3 \(its"):
        check_relaunch(run, resume=True)
    assert (hydra / "config.yaml").read_text() == started  # the run's own files are back

    write_hydra_files(hydra, base + "  extra: 3\n  other: 0.5\n", ["+agent.extra=3", "+agent.other=0.5"])
    with pytest.raises(ConfigValueError, match=r"agent.other=\(absent\) \(this launch: 0.5\).* relaunch it "
                                               r"without agent.other \(its"):
        check_relaunch(run, resume=True)

    write_hydra_files(hydra, "seed: 1\ntask:\n  name: plate_slide\nagent:\n  extra: 3\n  other: 1\n",
                      ["+agent.extra=3", "~agent.lr", "+agent.other=1"])  # a key deleted, one added
    with pytest.raises(ConfigValueError, match=r"agent.lr=0.0001 \(this launch: \(absent\)\).* relaunch it with "
                                               r"\+\+agent.lr=0.0001 and without agent.other \(its"):
        check_relaunch(run, resume=True)
    # Memory for time only (the same loss and gradients): relaunching a run that ran out of memory with it
    write_hydra_files(hydra, base + "  extra: 3\nworld_model:\n  model:\n    gradient_checkpointing: true\n",
                      ["+agent.extra=3", "+world_model.model.gradient_checkpointing=true"])
    check_relaunch(run, resume=True)

    # A key the config files gained since (no command line sets it), in a group the launch chose: it goes on.
    write_hydra_files(hydra, base + "  extra: 3\nmemory:\n  weights: 1\n", ["+agent.extra=3", "memory=vrag"],
                      "memory: vrag\n      preset: fast")
    check_relaunch(run, resume=True)
    assert "weights" in (hydra / "started_with" / "config.yaml").read_text()
