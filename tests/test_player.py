"""World-model player (mbrl/player): sessions on a real tiny iVideoGPT, and the HTTP API.

The model is the real IVideoGPT with the tiny tokenizer and transformer at 64x64 (random weights,
action and reward heads randomised so actions matter), saved with save_pretrained and loaded by
the player exactly as a user's checkpoint. ``max_future_frames=4`` makes the player re-anchor
within a few steps, so undo and replay cross an anchor. Vid2World (micro backbone, weights
perturbed so history and actions matter) covers a model without a horizon whose states are kept."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the player needs fastapi (pip install fastapi uvicorn)")

from fastapi.testclient import TestClient  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from mbrl.player import Conflict, EpisodeCatalog, PlayerError, SessionManager, WorldModelHost, psnr  # noqa: E402
from mbrl.player.player import Player  # noqa: E402
from mbrl.player.server import create_app  # noqa: E402
from worldmodel.episodes import Episode, load_episode, save_episode  # noqa: E402
from worldmodel.ivideogpt.model import IVideoGPT  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASK = "metaworld/plate_slide"
DEMOS = REPO / "demonstrations" / TASK
IMG, ACT, HORIZON = 64, 4, 4
EPISODE_LENGTH = 12  # real env steps per episode in the ground-truth tests
BASE_URL = "http://127.0.0.1:7860"  # the Host the player (host=127.0.0.1) accepts


def make_checkpoint(directory: Path, seed: int, context_frames: int = 2, action_dim: int = ACT,
                    sampling: dict | None = None) -> Path:
    torch.manual_seed(seed)
    model = IVideoGPT(image_size=IMG, action_dim=action_dim, context_frames=context_frames, tokenizer="tiny",
                      transformer="tiny", max_future_frames=HORIZON, sampling=sampling)
    with torch.no_grad():  # zero-initialised heads would hide action / reward bugs
        model.transformer.action_linear.weight.normal_(std=0.5)
        model.transformer.reward_linear.weight.normal_(std=0.5)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("player_ckpt")
    return make_checkpoint(root / "a", 0), make_checkpoint(root / "b", 1)


@pytest.fixture(scope="module")
def v2w_checkpoint(tmp_path_factory) -> Path:
    from worldmodel.vid2world import Vid2World

    torch.manual_seed(0)
    micro = dict(channels=(16, 32), attention_resolutions=(), head_dim=8, emb_dim=32, groups=8)
    model = Vid2World(image_size=IMG, action_dim=ACT, backbone=micro, sampling_steps=2)
    with torch.no_grad():  # the default initialisation ignores the history: frames would not depend on it
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    directory = tmp_path_factory.mktemp("player_v2w") / "v2w"
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    """Two shipped plate_slide demos, copied so tests can add files beside them."""
    if not DEMOS.is_dir():
        pytest.skip(f"{DEMOS} is missing (shipped demos)")
    root = tmp_path_factory.mktemp("player_eps")
    for path in sorted(DEMOS.glob("*.npz"))[:2]:
        shutil.copy(path, root / path.name)
    return root


def play_config(checkpoint: Path, episodes: Path, tmp_path: Path, *overrides: str):
    """Sessions sample with seed 0 unless ``seed=`` is given: with the tiny random model, frames
    depend on the actions at only some steps, and with seed 0 two action sequences do differ."""
    seed = [] if any(o.startswith("seed=") for o in overrides) else ["seed=0"]
    with initialize_config_dir(config_dir=str(REPO / "cfgs"), version_base=None):
        return compose("play", overrides=[f"task={TASK}", f"world_model.pretrained={checkpoint}",
                                          f"episodes={episodes}", f"out_dir={tmp_path / 'out'}",
                                          f"task.episode_length={EPISODE_LENGTH}", "device=cpu", *seed, *overrides])


@pytest.fixture
def player(checkpoints, episodes, tmp_path):
    p = Player.from_config(play_config(checkpoints[0], episodes, tmp_path), TASK)
    yield p
    p.close()


def first_episode(player: Player) -> str:
    return player.catalog.names()[0]


def actions(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(ACT, generator=g) * 2 - 1 for _ in range(n)]


def continuous_frames(host: WorldModelHost, context: torch.Tensor, acts: list[torch.Tensor],
                      seed: int = 0) -> torch.Tensor:
    """The plain rollout: one reset on the context, then one step per action, same generator seed."""
    def run() -> torch.Tensor:
        model = host.model
        state = model.reset(context[None].to(host.device), generator=host.generator(seed))
        frames = []
        with torch.no_grad():
            for a in acts:
                frame, _, state = model.step(state, a[None].to(host.device))
                frames.append(frame[0].cpu())
        return torch.stack(frames)
    return host.call(run)


# ----------------------------------------------------------------- sessions (no web layer)
def test_steps_give_frames_rewards_and_reanchor_at_the_horizon(player):
    sessions = player.sessions
    sid = sessions.create()
    sessions.call(sid, lambda s: s.start_from_episode(first_episode(player)))
    steps = [sessions.call(sid, lambda s, a=a: s.step(a)) for a in actions(HORIZON + 2)]
    for st in steps:
        assert st.frame.dtype == torch.uint8 and st.frame.shape == (3, IMG, IMG)
        assert math.isfinite(st.reward)
    assert [st.anchored for st in steps] == [True, False, False, False, True, False]
    frames = sessions.call(sid, lambda s: s.frames())
    assert frames.shape == (HORIZON + 3, 3, IMG, IMG)
    assert len({f.float().sum().item() for f in frames[1:]}) > 1  # frames actually change
    # Random actions leave the demo: no ground truth for them.
    assert all(st.real_frame is None and st.psnr is None for st in steps)


def test_reanchoring_resets_the_model_on_the_last_context_frames_only(player, monkeypatch):
    """A re-anchor passes reset the last context_frames frames (WorldModel.reset takes T0), not
    the whole trajectory, which grew memory and device copies with every re-anchor."""
    model = player.host.model
    T0, contexts = model.context_frames, []
    real_reset = model.reset

    def spy(context_obs, *args, **kwargs):
        contexts.append(context_obs.cpu().clone())
        return real_reset(context_obs, *args, **kwargs)

    monkeypatch.setattr(model, "reset", spy)
    sessions = player.sessions
    sid = sessions.create()
    sessions.call(sid, lambda s: s.start_from_episode(first_episode(player)))
    for a in actions(2 * HORIZON + 1):
        sessions.call(sid, lambda s, a=a: s.step(a))
    frames = sessions.call(sid, lambda s: s.frames())  # o_0, then the imagined frames
    assert len(contexts) == 3  # the start, then after HORIZON and 2 * HORIZON steps
    assert torch.equal(contexts[0][0], sessions.call(sid, lambda s: s.context))
    for i, n in enumerate((HORIZON, 2 * HORIZON), start=1):
        assert contexts[i].shape == (1, T0, 3, IMG, IMG)
        assert torch.equal(contexts[i][0], frames[n + 1 - T0:n + 1])


def test_a_session_refuses_steps_past_max_steps(checkpoints, episodes, tmp_path):
    p = Player.from_config(play_config(checkpoints[0], episodes, tmp_path, "max_steps=3"), TASK)
    try:
        sid = p.sessions.create()
        p.sessions.call(sid, lambda s: s.start_from_episode(first_episode(p)))
        for a in actions(3):
            p.sessions.call(sid, lambda s, a=a: s.step(a))
        with pytest.raises(Conflict, match="max_steps=3 steps.*undo or restart"):
            p.sessions.call(sid, lambda s: s.step(torch.zeros(ACT)))
        assert p.sessions.call(sid, lambda s: len(s.steps)) == 3
        p.sessions.call(sid, lambda s: s.undo())  # room again
        p.sessions.call(sid, lambda s: s.step(torch.zeros(ACT)))
        with TestClient(create_app(p), base_url=BASE_URL) as c:
            assert "max_steps=3" in post(c, f"/api/sessions/{sid}/step", {"action": [0] * ACT}, status=409)["error"]
    finally:
        p.close()


def test_following_the_demo_has_the_recorded_frames_as_ground_truth(player):
    sessions = player.sessions
    sid = sessions.create()
    name = first_episode(player)
    sessions.call(sid, lambda s: s.start_from_episode(name, start=3))
    episode = load_episode(player.catalog.path(name))
    T0 = player.host.model.context_frames  # the context frames end at obs[start], the frame the steps start from
    context = sessions.call(sid, lambda s: s.context)
    assert torch.equal(context, torch.from_numpy(episode.obs[3 - T0 + 1:3 + 1]))
    for t in range(3):
        st = sessions.call(sid, lambda s: s.step(s.demo_action()))
        assert torch.equal(st.real_frame, torch.from_numpy(episode.obs[3 + t + 1]))
        assert st.real_reward == pytest.approx(float(episode.reward[3 + t]))
        assert 0 < st.psnr < 100 and st.psnr == pytest.approx(psnr(st.frame, st.real_frame))
    off = sessions.call(sid, lambda s: s.step(torch.zeros(ACT)))  # leaves the recording
    assert off.real_frame is None and sessions.call(sid, lambda s: s.demo_action()) is None


def test_undo_restores_the_model_state_and_the_generator(player):
    sessions = player.sessions
    sid = sessions.create()
    sessions.call(sid, lambda s: s.start_from_episode(first_episode(player)))
    acts = actions(HORIZON + 2)
    for a in acts:
        sessions.call(sid, lambda s, a=a: s.step(a))
    before = sessions.call(sid, lambda s: s.frames().clone())
    for _ in range(3):  # back across the re-anchor at step HORIZON
        sessions.call(sid, lambda s: s.undo())
    after = sessions.call(sid, lambda s: s.frames())
    assert torch.equal(after, before[:len(before) - 3])
    # The same actions again give the same frames: the sampling generator was restored too.
    for i, a in enumerate(acts[-3:]):
        st = sessions.call(sid, lambda s, a=a: s.step(a))
        assert torch.equal(st.frame, before[len(before) - 3 + i])
    while sessions.call(sid, lambda s: len(s.steps)):
        sessions.call(sid, lambda s: s.undo())
    with pytest.raises(Conflict, match="nothing to undo"):
        sessions.call(sid, lambda s: s.undo())


def test_two_sessions_are_independent(player):
    sessions = player.sessions
    a, b, c = (sessions.create() for _ in range(3))
    for sid in (a, b, c):
        sessions.call(sid, lambda s: s.start_from_episode(first_episode(player)))
    acts_a, acts_b = actions(5, seed=1), actions(5, seed=2)
    for x, y in zip(acts_a, acts_b):  # interleaved
        sessions.call(a, lambda s, x=x: s.step(x))
        sessions.call(b, lambda s, y=y: s.step(y))
    for x in acts_a:  # alone
        sessions.call(c, lambda s, x=x: s.step(x))
    frames_a, frames_b, frames_c = (sessions.call(sid, lambda s: s.frames()) for sid in (a, b, c))
    assert torch.equal(frames_a, frames_c)
    assert not torch.equal(frames_a, frames_b)
    sessions.call(b, lambda s: s.undo())
    assert sessions.call(a, lambda s: len(s.steps)) == 5 and sessions.call(b, lambda s: len(s.steps)) == 4


def test_sampling_settings_seed_and_reimagine(player):
    sessions = player.sessions
    model = player.host.model
    defaults = dict(model.sampling)
    sid = sessions.create()
    sessions.call(sid, lambda s: s.start_from_episode(first_episode(player)))
    acts = actions(3)

    def imagine(seed: int, **settings) -> torch.Tensor:
        def run(s):
            s.set_sampling(settings, seed=seed)
            s.restart()
            for a in acts:
                s.step(a)
            return s.frames()
        return sessions.call(sid, run)

    assert torch.equal(imagine(1, temperature=1.0), imagine(1))  # same seed: same frames
    assert not torch.equal(imagine(1), imagine(2))
    assert torch.equal(imagine(1, temperature=0.0), imagine(2, temperature=0.0))  # greedy ignores the seed
    assert model.sampling == defaults  # a session's settings never stick to the shared model
    # Re-imagine: the same actions with new settings and seed.
    sessions.call(sid, lambda s: s.set_sampling({"temperature": 1.0}, seed=7))
    sessions.call(sid, lambda s: s.reimagine())
    assert torch.equal(sessions.call(sid, lambda s: s.frames()), imagine(7))
    for bad, match in (({"beam": 2}, "no sampling setting 'beam'"), ({"temperature": -1.0}, ">= 0"),
                       ({"top_k": 2.5}, "integer"), ({"temperature": float("nan")}, "finite")):
        with pytest.raises(PlayerError, match=match):
            sessions.call(sid, lambda s, bad=bad: s.set_sampling(bad))
    with pytest.raises(PlayerError, match="seed"):
        sessions.call(sid, lambda s: s.set_sampling(seed=-1))


def test_bad_actions_and_starts_are_refused_with_clear_errors(player, episodes):
    sessions = player.sessions
    sid = sessions.create()
    with pytest.raises(Conflict, match="start context"):
        sessions.call(sid, lambda s: s.step(torch.zeros(ACT)))
    sessions.call(sid, lambda s: s.start_from_episode(first_episode(player)))
    for action, match in ((torch.zeros(3), "4 values"), (torch.tensor([0, float("nan"), 0, 0]), "NaN"),
                          (torch.tensor([0, 0, 2.0, 0]), r"\[-1, 1\]")):
        with pytest.raises(PlayerError, match=match):
            sessions.call(sid, lambda s, a=action: s.step(a))
    with pytest.raises(PlayerError, match="start frame 0 is out of range"):
        sessions.call(sid, lambda s: s.start_from_episode(first_episode(player), start=0))
    (episodes / "broken.npz").write_bytes(b"not a zip")
    try:
        with pytest.raises(PlayerError, match="broken.npz.*unreadable"):
            sessions.call(sid, lambda s: s.start_from_episode("broken.npz"))
    finally:
        (episodes / "broken.npz").unlink()
    assert sessions.call(sid, lambda s: len(s.steps)) == 0  # the session still works
    sessions.call(sid, lambda s: s.step(torch.zeros(ACT)))


@pytest.mark.parametrize("key, value", [("action_repeat", 1), ("camera", "topview"), ("flip_rows", False)])
def test_an_episode_recorded_at_other_env_settings_is_refused(client, player, episodes, key, value):
    """As demo=true training refuses it (mbrl.demos.check_settings): its frames are not the task's."""
    name = first_episode(player)
    episode = load_episode(player.catalog.path(name))
    episode.meta["env_settings"] = {**episode.meta["env_settings"], key: value}
    odd = f"other_{key}.npz"
    save_episode(episodes / odd, episode)
    try:
        sid = player.sessions.create()
        with pytest.raises(PlayerError, match=f"task.{key}=.* but this run has task.{key}="):
            player.sessions.call(sid, lambda s: s.start_from_episode(odd))
        err = post(client, f"/api/sessions/{sid}/start", {"source": "episode", "episode": odd}, status=400)["error"]
        assert f"task.{key}" in err
        player.sessions.call(sid, lambda s: s.start_from_episode(name))  # the task's own episodes still play
    finally:
        (episodes / odd).unlink()


def test_bad_checkpoints_are_refused_and_the_model_stays(checkpoints, tmp_path):
    with pytest.raises(PlayerError, match="no such directory"):
        WorldModelHost(tmp_path / "missing", IMG)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PlayerError, match="config.json is missing"):
        WorldModelHost(tmp_path / "empty", IMG)
    with pytest.raises(PlayerError, match="32x32"):
        WorldModelHost(checkpoints[0], 32)
    host = WorldModelHost(checkpoints[0], IMG)
    try:
        broken = tmp_path / "broken"
        shutil.copytree(checkpoints[0], broken)
        (broken / "model.safetensors").write_bytes(b"garbage")
        with pytest.raises(PlayerError, match="safetensors"):
            host.switch(broken)
        assert host.checkpoint == str(checkpoints[0]) and host.generation == 1
    finally:
        host.close()


def test_sessions_are_bounded_least_recently_used_first(checkpoints, episodes):
    host = WorldModelHost(checkpoints[0], IMG)
    try:
        sessions = SessionManager(host, {"suite": "metaworld", "name": "plate-slide-v3"}, EpisodeCatalog(episodes),
                                  max_sessions=2)
        a, b = sessions.create(), sessions.create()
        sessions.call(a, lambda s: None)  # a is now the most recently used
        c = sessions.create()
        assert a in sessions and c in sessions and b not in sessions and len(sessions) == 2
        with pytest.raises(PlayerError, match="unknown session"):
            sessions.call(b, lambda s: None)
    finally:
        host.close()


def test_save_writes_valid_mp4_and_npz(player):
    import imageio.v2 as imageio

    sessions = player.sessions
    sid = sessions.create()
    sessions.call(sid, lambda s: s.start_from_episode(first_episode(player), start=1))
    sessions.call(sid, lambda s: s.step(s.demo_action()))
    sessions.call(sid, lambda s: s.step(s.demo_action()))
    sessions.call(sid, lambda s: s.step(torch.zeros(ACT)))  # off the demo: 2 known real steps
    paths = sessions.call(sid, lambda s: s.save(player.out_dir, fps=5, scale=2))
    imagined = load_episode(paths["imagined_npz"], image_size=IMG, action_dim=ACT)
    assert len(imagined) == 3 and imagined.meta["source"] == "world_model_player/imagined"
    assert torch.equal(torch.from_numpy(imagined.obs), sessions.call(sid, lambda s: s.frames()))
    real = load_episode(paths["real_npz"], image_size=IMG, action_dim=ACT)
    assert len(real) == 2 and np.array_equal(real.action, imagined.action[:2])
    video = np.stack(imageio.mimread(paths["video"]))
    assert video.shape == (4, IMG * 2, IMG * 2 * 2, 3)  # n + 1 frames, imagined | real, upscaled 2x
    with pytest.raises(Conflict, match="nothing to save"):
        sessions.call(sid, lambda s: (s.restart(), s.save(player.out_dir))[1])


def test_an_unwritable_out_dir_is_refused_at_startup_and_on_save(player, checkpoints, episodes, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    for out_dir in (blocker, blocker / "sub"):
        with pytest.raises(PlayerError, match=f"out_dir={out_dir}.*not a folder"):
            Player.from_config(play_config(checkpoints[0], episodes, tmp_path, f"out_dir={out_dir}"), TASK)
    # A folder that goes away (or becomes a file) after startup: a 4xx naming out_dir, not a 500.
    player.out_dir = blocker
    with TestClient(create_app(player), base_url=BASE_URL) as c:
        sid = post(c, "/api/sessions")["session"]
        post(c, f"/api/sessions/{sid}/start", {"source": "episode", "episode": first_episode(player)})
        post(c, f"/api/sessions/{sid}/step", {"action": [0] * ACT})
        err = post(c, f"/api/sessions/{sid}/save", status=400)["error"]
        assert f"cannot save into out_dir={blocker}" in err and "NotADirectoryError" in err


# ----------------------------------------------------------------- ground truth from the simulator
def test_env_start_runs_the_real_env_beside_the_model(player):
    pytest.importorskip("metaworld", reason="env starts need Meta-World")
    from mbrl.envs import make_env

    sessions = player.sessions
    sid = sessions.create()
    sessions.call(sid, lambda s: s.start_from_env(seed=5))
    acts = actions(3)
    steps = [sessions.call(sid, lambda s, a=a: s.step(a)) for a in acts]
    # The same seed, the zero-action context step and the same actions in a fresh env.
    env = make_env(player.task_cfg, seed=5)
    try:
        obs, _ = env.reset(seed=5)
        obs, *_ = env.step(np.zeros(ACT, np.float32))
        assert torch.equal(sessions.call(sid, lambda s: s.context[-1]), torch.from_numpy(obs[-3:]))
        for a, st in zip(acts, steps):
            obs, reward, *_ = env.step(a.numpy())
            assert torch.equal(st.real_frame, torch.from_numpy(obs[-3:]))
            assert st.real_reward == pytest.approx(reward) and 0 < st.psnr < 100
    finally:
        env.close()
    sessions.call(sid, lambda s: s.undo())  # the env is replayed to the step before
    again = sessions.call(sid, lambda s: s.step(acts[-1]))
    assert torch.equal(again.real_frame, steps[-1].real_frame) and torch.equal(again.frame, steps[-1].frame)
    # The real episode ends after task.episode_length steps (the context step counts); imagination goes on.
    for _ in range(EPISODE_LENGTH):
        last = sessions.call(sid, lambda s: s.step(torch.zeros(ACT)))
    assert last.real_frame is None and last.frame.shape == (3, IMG, IMG)


# ----------------------------------------------------------------- keyboard layouts
def key_values(suite: str, action_dim: int) -> dict[str, tuple[str, float]]:
    """key -> (dimension name, the sign it sends) of the suite's layout."""
    from mbrl.player.controls import action_layout

    values = {}
    for dim in action_layout(suite, action_dim):
        values.update({k: (dim.name, sign) for k, sign in ((dim.plus_key, 1.0), (dim.minus_key, -1.0)) if k})
    return values


@pytest.mark.parametrize("suite, action_dim, close", [("metaworld", 4, 1.0), ("maniskill", 7, -1.0),
                                                      ("libero", 7, 1.0)])
def test_space_closes_and_shift_opens_each_suites_gripper(suite, action_dim, close):
    """README: space / shift close / open the gripper, held until changed. The value that closes
    differs per suite: Meta-World's effort and robosuite's (LIBERO) close at +1, ManiSkill's Panda
    gripper target is open at +1 and closed at -1."""
    from mbrl.player.controls import action_layout

    layout = action_layout(suite, action_dim)
    gripper = layout[-1]
    assert gripper.name == "gripper" and gripper.sticky and [d.sticky for d in layout].count(True) == 1
    keys = key_values(suite, action_dim)
    assert keys[" "] == ("gripper", close) and keys["Shift"] == ("gripper", -close)
    # Motions: -> / <- along +x / -x, up / down arrows +y / -y, w / s up / down.
    x, y, z = (d.name for d in layout[:3])
    assert (keys["ArrowRight"], keys["ArrowLeft"]) == ((x, 1.0), (x, -1.0))
    assert (keys["ArrowUp"], keys["ArrowDown"], keys["w"], keys["s"]) == ((y, 1.0), (y, -1.0), (z, 1.0), (z, -1.0))
    assert len(keys) == 2 * action_dim  # every dimension has its own two keys


def test_an_unknown_suite_or_action_dim_gets_generic_keys():
    from mbrl.player.controls import RESERVED_KEYS, action_layout

    for suite, action_dim in (("dmc", 6), ("metaworld", 3)):
        layout = action_layout(suite, action_dim)
        assert [d.name for d in layout] == [f"a{i}" for i in range(action_dim)] and not any(d.sticky for d in layout)
        keys = key_values(suite, action_dim)
        assert len(keys) == 2 * action_dim and not set(keys) & set(RESERVED_KEYS)


# ----------------------------------------------------------------- HTTP
@pytest.fixture
def client(player):
    with TestClient(create_app(player), base_url=BASE_URL) as c:
        yield c


def post(client, path, body=None, status=200):
    res = client.post(path, json=body) if body is not None else client.post(path)
    assert res.status_code == status, res.text
    return res.json()


def test_http_play_undo_save_and_download(client, player):
    assert "World-model player" in client.get("/").text
    assert client.get("/static/app.js").status_code == 200
    info = client.get("/api/info").json()
    assert info["model"]["action_dim"] == ACT and info["model"]["horizon"] == HORIZON
    assert [d["name"] for d in info["controls"]] == ["x", "y", "z", "gripper"]
    assert info["episodes"] == player.catalog.names() and info["model"]["sampling"]["top_k"] == 100
    assert info["collect_command"].startswith("python scripts/collect_demos.py task=metaworld/")
    sid = post(client, "/api/sessions")["session"]
    view = post(client, f"/api/sessions/{sid}/start", {"source": "episode", "episode": info["episodes"][0]})
    assert len(view["context"]) == 2 and view["context"][0].startswith("data:image/png;base64,")
    assert view["steps"] == [] and view["demo_action"] is not None
    first = post(client, f"/api/sessions/{sid}/step", {"action": view["demo_action"]})
    assert first["n_steps"] == 1 and first["step"]["real"] is not None and first["step"]["psnr"] > 0
    second = post(client, f"/api/sessions/{sid}/step", {"action": [0.5, 0, 0, 1]})
    assert second["step"]["index"] == 2 and second["step"]["real"] is None
    view = post(client, f"/api/sessions/{sid}/undo")
    assert len(view["steps"]) == 1 and view["steps"][0]["frame"] == first["step"]["frame"]
    saved = post(client, f"/api/sessions/{sid}/save")
    assert set(saved["files"]) == {"imagined_npz", "real_npz", "video"}
    res = client.get(saved["files"]["imagined_npz"])
    assert res.status_code == 200 and res.content[:2] == b"PK"  # an npz is a zip
    post(client, f"/api/sessions/{sid}/close")
    assert client.get(f"/api/sessions/{sid}").status_code == 404


def test_http_encodes_each_frame_once(client, player, monkeypatch):
    """Undo, restart and reloads send the whole trajectory: its PNGs are encoded once, not per request."""
    import mbrl.player.server as server

    encoded = []
    real_png = server.png_data_url
    monkeypatch.setattr(server, "png_data_url", lambda frame: encoded.append(frame) or real_png(frame))
    sid = post(client, "/api/sessions")["session"]
    view = post(client, f"/api/sessions/{sid}/start", {"source": "episode", "episode": first_episode(player)})
    T0 = len(view["context"])
    post(client, f"/api/sessions/{sid}/step", {"action": view["demo_action"]})  # frame and real frame
    for a in actions(HORIZON + 1):
        post(client, f"/api/sessions/{sid}/step", {"action": a.tolist()})
    n = len(encoded)
    assert n == T0 + 2 + HORIZON + 1
    first = client.get(f"/api/sessions/{sid}").json()
    assert len(encoded) == n + T0  # only the context frames again
    assert client.get(f"/api/sessions/{sid}").json() == first
    view = post(client, f"/api/sessions/{sid}/undo")  # replays from the re-anchor at step HORIZON: 1 new frame
    assert view["steps"] == first["steps"][:-1] and len(encoded) == n + 3 * T0 + 1


def test_http_serves_only_the_files_the_sessions_last_save_wrote(client, player):
    sid = post(client, "/api/sessions")["session"]
    post(client, f"/api/sessions/{sid}/start", {"source": "episode", "episode": player.catalog.names()[0]})
    post(client, f"/api/sessions/{sid}/step", {"action": [0] * ACT})
    saved = post(client, f"/api/sessions/{sid}/save")
    folder = Path(saved["dir"])
    (folder / "secret.txt").write_text("not written by the save")  # on disk, beside the saved files
    (folder.parent / "sibling.txt").write_text("another file in out_dir")
    for name in ("secret.txt", "sibling.txt"):
        res = client.get(f"/api/sessions/{sid}/files/{name}")
        assert res.status_code == 404 and f"no saved file '{name}'" in res.json()["error"], name
    shutil.rmtree(player.out_dir)  # the user cleaned out_dir up
    res = client.get(saved["files"]["video"])
    assert res.status_code == 404 and "gone" in res.json()["error"] and "save again" in res.json()["error"]
    for method, path in (("get", "/api/no_such_route"), ("get", f"/api/sessions/{sid}/step")):
        res = getattr(client, method)(path)  # no such route, or the wrong method: the documented {"error"} too
        assert res.status_code in (404, 405) and path in res.json()["error"], res.json()
    again = post(client, f"/api/sessions/{sid}/save")  # saving recreates the folder
    assert client.get(again["files"]["imagined_npz"]).status_code == 200


def test_http_refuses_other_hosts_and_changes_from_other_origins(client, player):
    """DNS rebinding (a foreign Host) and cross-site POSTs (no CORS preflight for a body-less POST:
    any page could create sessions until the user's is evicted) are refused."""
    from dataclasses import replace

    from mbrl.player.server import allowed_hosts

    evil = {"Origin": "http://evil.example"}
    sid = post(client, "/api/sessions")["session"]
    assert client.get("/api/info", headers={"Host": "attacker.example:7860"}).status_code == 400
    assert client.post("/api/sessions", headers={"Host": "attacker.example:7860"}).status_code == 400
    for _ in range(player.sessions.max_sessions):
        res = client.post("/api/sessions", headers=evil)
        assert res.status_code == 403 and "another origin (http://evil.example)" in res.json()["error"]
    res = client.post(f"/api/sessions/{sid}/close", headers={"Origin": "null"})  # a sandboxed page
    assert res.status_code == 403
    assert client.get(f"/api/sessions/{sid}").status_code == 200  # the user's session is still there
    assert post_with_origin(client, "/api/sessions", BASE_URL).status_code == 200  # the page itself
    assert client.get("/api/info", headers=evil).status_code == 200  # reading: the browser's CORS rules
    # Serving on every interface accepts any Host, and still only same-origin changes.
    assert allowed_hosts("0.0.0.0") == ["*"] and "[::1]" in allowed_hosts("::1")
    anywhere = TestClient(create_app(replace(player, address="0.0.0.0")), base_url="http://192.0.2.7:7860")
    assert anywhere.get("/api/info").status_code == 200
    assert anywhere.post("/api/sessions", headers=evil).status_code == 403
    assert post_with_origin(anywhere, "/api/sessions", "http://192.0.2.7:7860").status_code == 200


def post_with_origin(client, path: str, origin: str):
    return client.post(path, headers={"Origin": origin})


def test_http_bad_requests_get_4xx_with_a_message(client, player):
    sid = post(client, "/api/sessions")["session"]
    err = post(client, f"/api/sessions/{sid}/step", {"action": [0, 0, 0, 0]}, status=409)["error"]
    assert "start context" in err
    assert "unknown episode" in post(client, f"/api/sessions/{sid}/start", {"source": "episode", "episode": "x.npz"},
                                     status=404)["error"]
    assert "source" in post(client, f"/api/sessions/{sid}/start", {"source": "video"}, status=422)["error"]
    post(client, f"/api/sessions/{sid}/start", {"source": "episode", "episode": player.catalog.names()[0]})
    assert "4 values" in post(client, f"/api/sessions/{sid}/step", {"action": [0, 0]}, status=400)["error"]
    res = client.post(f"/api/sessions/{sid}/step", content='{"action": [NaN, 0, 0, 0]}',
                      headers={"content-type": "application/json"})
    assert res.status_code == 400 and "NaN" in res.json()["error"]
    assert "action" in post(client, f"/api/sessions/{sid}/step", {"action": "left"}, status=422)["error"]
    assert "unknown session" in post(client, "/api/sessions/nope/step", {"action": [0] * ACT}, status=404)["error"]
    assert "no sampling setting" in post(client, f"/api/sessions/{sid}/sampling", {"settings": {"beam": 1}},
                                         status=400)["error"]
    assert "no such directory" in post(client, "/api/checkpoint", {"pretrained": "/no/such/dir"}, status=400)["error"]
    # The server still serves the session after all that.
    assert post(client, f"/api/sessions/{sid}/step", {"action": [0] * ACT})["n_steps"] == 1


def test_http_switching_checkpoints_reimagines_sessions(client, checkpoints):
    sid = post(client, "/api/sessions")["session"]
    episode = client.get("/api/info").json()["episodes"][0]
    post(client, f"/api/sessions/{sid}/start", {"source": "episode", "episode": episode})
    before = [post(client, f"/api/sessions/{sid}/step", {"action": a.tolist()})["step"] for a in actions(2)]
    info = post(client, "/api/checkpoint", {"pretrained": str(checkpoints[1])})
    assert info["model"]["checkpoint"] == str(checkpoints[1])
    nxt = post(client, f"/api/sessions/{sid}/step", {"action": [0] * ACT})
    assert nxt["n_steps"] == 3 and nxt["revision"] > 1  # the page sees the revision bump and reloads
    view = client.get(f"/api/sessions/{sid}").json()
    assert [s["action"] for s in view["steps"][:2]] == [s["action"] for s in before]
    assert view["steps"][0]["frame"] != before[0]["frame"]  # imagined again, by the other model


def test_http_a_checkpoint_with_other_context_frames_is_refused_and_sessions_keep_playing(client, checkpoints,
                                                                                          tmp_path):
    other = make_checkpoint(tmp_path / "three_context_frames", 0, context_frames=3)
    sid = post(client, "/api/sessions")["session"]
    episode = client.get("/api/info").json()["episodes"][0]
    post(client, f"/api/sessions/{sid}/start", {"source": "episode", "episode": episode, "start": 2})
    for a in actions(2):
        post(client, f"/api/sessions/{sid}/step", {"action": a.tolist()})
    before = client.get(f"/api/sessions/{sid}").json()
    err = post(client, "/api/checkpoint", {"pretrained": str(other)}, status=400)["error"]
    assert "3 context frames" in err and "context_frames=2" in err
    assert client.get("/api/info").json()["model"]["checkpoint"] == str(checkpoints[0])
    assert client.get(f"/api/sessions/{sid}").json() == before  # nothing re-imagined, nothing lost
    nxt = post(client, f"/api/sessions/{sid}/step", {"action": [0] * ACT})
    assert nxt["n_steps"] == 3 and nxt["revision"] == before["revision"]


def test_a_failed_reimagination_after_a_switch_keeps_the_trajectory(player, checkpoints, monkeypatch):
    sessions, host = player.sessions, player.host
    sid = sessions.create()
    sessions.call(sid, lambda s: s.start_from_episode(first_episode(player)))
    for a in actions(3):
        sessions.call(sid, lambda s, a=a: s.step(a))
    sessions.call(sid, lambda s: s.set_sampling({"temperature": 0.5}))
    before = sessions.call(sid, lambda s: s.frames().clone())
    host.switch(checkpoints[1])

    def broken_step(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(host.model, "step", broken_step)
    with pytest.raises(RuntimeError, match="out of memory"):
        sessions.call(sid, lambda s: s.step(torch.zeros(ACT)))
    assert torch.equal(sessions.call(sid, lambda s: s.frames()), before)
    monkeypatch.undo()
    sessions.call(sid, lambda s: s.step(torch.zeros(ACT)))  # re-imagined with the new model, then stepped
    frames = sessions.call(sid, lambda s: s.frames())
    assert len(frames) == len(before) + 1 and not torch.equal(frames[:len(before)], before)
    assert sessions.call(sid, lambda s: s.sampling) == {**host.sampling_defaults(), "temperature": 0.5}


def test_http_sampling_settings_are_typed_like_the_models_own(client, player):
    model = player.host.model
    defaults = dict(model.sampling)
    info = client.get("/api/info").json()["model"]
    assert info["sampling_editable"] == ["temperature", "top_k"]
    sid = post(client, "/api/sessions")["session"]
    path = f"/api/sessions/{sid}/sampling"
    # What the page used to send for the switches: Number("false") and Number("auto") are 0.
    for settings, match in (({"compile": 0}, "compile=0 must be true or false"),
                            ({"cpu_bf16_decoding": 0}, "cpu_bf16_decoding=0 must be a str"),
                            ({"compile": True}, "runtime switch"), ({"cpu_bf16_decoding": "yes"}, "runtime switch"),
                            ({"temperature": None}, "finite number"), ({"top_k": True}, "finite number"),
                            ({"temperature": "0.5"}, "finite number"), ({"beam": 1}, "no sampling setting")):
        assert match in post(client, path, {"settings": settings}, status=400)["error"], settings
    res = post(client, path, {"settings": {"temperature": 0.5, "top_k": 7, "compile": False,
                                           "cpu_bf16_decoding": "auto"}})
    assert res["sampling"] == {**defaults, "temperature": 0.5, "top_k": 7}
    assert isinstance(res["sampling"]["top_k"], int) and model.sampling == defaults


def test_play_script_refuses_a_bad_checkpoint_at_startup(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("play_script", REPO / "scripts" / "play.py")
    play = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(play)
    with pytest.raises(SystemExit, match="no such directory"):
        play.main([f"world_model.pretrained={tmp_path / 'nope'}", f"task={TASK}"])
    with pytest.raises(SystemExit, match="world_model.pretrained=<dir"):
        play.main([f"task={TASK}"])
    with pytest.raises(SystemExit, match="bad arguments"):
        play.main(["task=metaworld/no_such_task"])
    cfg, key = play.compose_config(["task=metaworld/hammer", "port=8123", "host=0.0.0.0"])
    assert key == "metaworld/hammer" and cfg.port == 8123 and cfg.task.name == "hammer-v3"
    assert cfg.world_model.pretrained is None and cfg.seed == 1  # the training config's keys


def test_a_model_without_sampling_settings_plays_and_undoes(v2w_checkpoint, episodes):
    """Vid2World (diffusion) has no temperature / top-k and no trained horizon: the player offers
    no sampling settings and never re-anchors after the start."""
    host = WorldModelHost(v2w_checkpoint, IMG)
    try:
        assert host.info()["sampling"] == {} and host.horizon is None
        sessions = SessionManager(host, {"suite": "metaworld", "name": "plate-slide-v3"}, EpisodeCatalog(episodes),
                                  replay_window=2)
        sid = sessions.create()
        sessions.call(sid, lambda s: s.start_from_episode(sorted(p.name for p in episodes.glob("*.npz"))[0]))
        steps = [sessions.call(sid, lambda s: s.step(s.demo_action())) for _ in range(3)]
        assert [st.anchored for st in steps] == [True, False, False] and steps[-1].psnr is not None
        assert sessions.call(sid, lambda s: s.window) is None
        sessions.call(sid, lambda s: s.undo())
        again = sessions.call(sid, lambda s: s.step(s.demo_action()))
        assert torch.equal(again.frame, steps[-1].frame)
        with pytest.raises(PlayerError, match="no sampling setting 'temperature'"):
            sessions.call(sid, lambda s: s.set_sampling({"temperature": 0.5}))
    finally:
        host.close()


@pytest.mark.parametrize("state_budget_mb", [64.0, 0.0])
def test_vid2world_play_equals_the_continuous_rollout_beyond_the_replay_window(v2w_checkpoint, episodes,
                                                                               state_budget_mb):
    """Past ``replay_window`` steps the session keeps a state instead of resetting the model, so the
    page shows exactly the plain reset/step rollout; undo across kept states (or, with no budget
    for them, from the start) gives back the same frames."""
    host = WorldModelHost(v2w_checkpoint, IMG)
    try:
        sessions = SessionManager(host, {"suite": "metaworld", "name": "plate-slide-v3"}, EpisodeCatalog(episodes),
                                  replay_window=2, state_budget_mb=state_budget_mb)
        sid = sessions.create()
        sessions.call(sid, lambda s: s.start_from_episode(sorted(p.name for p in episodes.glob("*.npz"))[0]))
        acts = actions(5, seed=3)
        steps = [sessions.call(sid, lambda s, a=a: s.step(a)) for a in acts]
        context = sessions.call(sid, lambda s: s.context)
        expected = continuous_frames(host, context, acts)
        assert torch.equal(torch.stack([st.frame for st in steps]), expected)
        assert [st.anchored for st in steps] == [True] + [False] * 4
        kept = sessions.call(sid, lambda s: s.kept_state_bytes)
        assert (kept > 0) if state_budget_mb else (kept == 0)
        for _ in range(2):  # back across the kept state at step 4, to the one at step 2 (or the start)
            sessions.call(sid, lambda s: s.undo())
        for a in acts[3:]:
            sessions.call(sid, lambda s, a=a: s.step(a))
        assert torch.equal(sessions.call(sid, lambda s: s.frames())[1:], expected)
    finally:
        host.close()


def test_ivideogpt_play_equals_the_continuous_rollout_within_its_horizon(player):
    sessions = player.sessions
    sid = sessions.create()
    sessions.call(sid, lambda s: s.start_from_episode(first_episode(player)))
    acts = actions(HORIZON, seed=4)
    for a in acts:
        sessions.call(sid, lambda s, a=a: s.step(a))
    context, seed = sessions.call(sid, lambda s: (s.context, s.seed))
    assert torch.equal(sessions.call(sid, lambda s: s.frames())[1:],
                       continuous_frames(player.host, context, acts, seed=seed))


def test_generator_is_on_the_models_exact_device(checkpoints, episodes):
    """``device=cuda:1`` must give a cuda:1 generator, not the current GPU's (cuda:0)."""
    device = f"cuda:{torch.cuda.device_count() - 1}" if torch.cuda.is_available() else "cpu"
    host = WorldModelHost(checkpoints[0], IMG, device)
    try:
        assert host.generator(0).device == next(host.model.parameters()).device == torch.device(device)
        assert host.info()["device"] == str(torch.device(device))
        sessions = SessionManager(host, {"suite": "metaworld", "name": "plate-slide-v3"}, EpisodeCatalog(episodes))
        sid = sessions.create()
        sessions.call(sid, lambda s: s.start_from_episode(sorted(p.name for p in episodes.glob("*.npz"))[0]))
        assert sessions.call(sid, lambda s: s.step(torch.zeros(ACT))).frame.shape == (3, IMG, IMG)
    finally:
        host.close()


def test_seed_and_cpu_threads_of_the_config_apply(checkpoints, episodes, tmp_path):
    """play.yaml's seed is the sampling seed new sessions start with; cpu_threads sets torch's CPU
    threads (on the worker thread that runs the model too), as for training."""
    threads = torch.get_num_threads()
    want = 1 if threads != 1 else 2
    p = Player.from_config(play_config(checkpoints[0], episodes, tmp_path, "seed=7", f"cpu_threads={want}"), TASK)
    try:
        assert p.host.call(torch.get_num_threads) == want
        sessions = p.sessions
        sid = sessions.create()
        assert sessions.call(sid, lambda s: s.seed) == 7
        sessions.call(sid, lambda s: s.start_from_episode(first_episode(p)))
        acts = actions(HORIZON, seed=5)
        for a in acts:
            sessions.call(sid, lambda s, a=a: s.step(a))
        context = sessions.call(sid, lambda s: s.context)
        frames = sessions.call(sid, lambda s: s.frames())[1:]
        assert torch.equal(frames, continuous_frames(p.host, context, acts, seed=7))
        assert not torch.equal(frames, continuous_frames(p.host, context, acts, seed=0))
    finally:
        p.close()
        torch.set_num_threads(threads)
    for bad, match in [("seed=-1", r"seed must be an integer in \[0, 2\^63\); got -1"),
                       ("cpu_threads=-1", "cpu_threads=-1 must be an integer >= 0")]:
        with pytest.raises(PlayerError, match=match):
            Player.from_config(play_config(checkpoints[0], episodes, tmp_path, bad), TASK)


def test_start_episodes_come_from_the_tasks_demo_folder(checkpoints, tmp_path, monkeypatch):
    """The player looks where collect_demos.py / convert_demos.py write (mbrl.demos.demo_dir):
    LIBERO's task_<task_index>/ only (not the suite's other tasks), under MBRL_DEMO_ROOT, or
    task.demo_dir."""
    from mbrl.demos import DEMO_ROOT_ENV

    monkeypatch.setenv(DEMO_ROOT_ENV, str(tmp_path / "root"))
    suite = tmp_path / "root" / "libero" / "libero_goal"
    steps = 3
    episode = Episode(obs=np.zeros((steps + 1, 3, IMG, IMG), np.uint8), action=np.zeros((steps, 7), np.float32),
                      reward=np.zeros(steps, np.float32), success=np.zeros(steps, bool), meta={})
    for folder, name in [(suite / "task_3", "mine.npz"), (suite / "task_0", "other.npz"),
                         (tmp_path / "custom", "custom.npz")]:
        save_episode(folder / name, episode)
    for override, root, names in [("task.task_index=3", suite / "task_3", ["mine.npz"]),
                                  (f"task.demo_dir={tmp_path / 'custom'}", tmp_path / "custom", ["custom.npz"])]:
        with initialize_config_dir(config_dir=str(REPO / "cfgs"), version_base=None):
            cfg = compose("play", overrides=["task=libero/libero_goal", f"world_model.pretrained={checkpoints[0]}",
                                             "device=cpu", override])
        p = Player.from_config(cfg, "libero/libero_goal", check_simulator=False)
        try:
            assert p.catalog.root == root and p.catalog.names() == names
        finally:
            p.close()


# ----------------------------------------------------------------- failures leave things as they were
def test_a_failed_env_start_keeps_the_previous_start(player):
    """task.episode_length=1 ends the env during the context steps: the start is refused, and the
    session keeps the start (and trajectory) it had, or stays unstarted, instead of a half start."""
    pytest.importorskip("metaworld", reason="env starts need Meta-World")
    from omegaconf import OmegaConf

    short = {**OmegaConf.to_container(player.task_cfg), "episode_length": 1}
    sessions = SessionManager(player.host, short, player.catalog)
    fresh, playing = sessions.create(), sessions.create()
    sessions.call(playing, lambda s: s.start_from_episode(first_episode(player)))
    sessions.call(playing, lambda s: s.step(torch.zeros(ACT)))
    before = sessions.call(playing, lambda s: (s.start, s.context, s.frames().clone(), s.revision))
    for sid in (fresh, playing):
        with pytest.raises(PlayerError, match="ended during the context steps"):
            sessions.call(sid, lambda s: s.start_from_env(seed=0))
    with pytest.raises(Conflict, match="start context"):  # not a TypeError on a missing context
        sessions.call(fresh, lambda s: s.step(torch.zeros(ACT)))
    assert sessions.call(fresh, lambda s: (s.start, s.context, s._env)) == (None, None, None)
    start, context, frames, revision = before
    assert sessions.call(playing, lambda s: (s.start, s.revision)) == (start, revision)
    assert torch.equal(sessions.call(playing, lambda s: s.context), context)
    assert torch.equal(sessions.call(playing, lambda s: s.frames()), frames)
    assert len(sessions.call(playing, lambda s: (s.step(torch.zeros(ACT)), s.steps)[1])) == 2
    sessions.close_all()


@pytest.mark.parametrize("fail_at", [0, 1])  # 0: the step that resets the model (adds an anchor)
def test_a_failed_step_keeps_undo_and_redo_reproducible(player, monkeypatch, fail_at):
    """A step that fails part-way (e.g. out of memory) must not advance the sampling generator or
    leave an anchor behind: the next steps, and undo / redo, give what they would have."""
    sessions, model = player.sessions, player.host.model
    acts = actions(3)

    def play(fail: bool) -> tuple[torch.Tensor, torch.Tensor]:
        sid = sessions.create()
        sessions.call(sid, lambda s: s.start_from_episode(first_episode(player)))
        for i, a in enumerate(acts):
            if fail and i == fail_at:
                with monkeypatch.context() as m:
                    m.setattr(model, "_decode_newest", lambda *args, **kwargs: (_ for _ in ()).throw(
                        RuntimeError("out of memory (simulated)")))
                    with pytest.raises(RuntimeError, match="out of memory"):
                        sessions.call(sid, lambda s, a=a: s.step(a))
                assert sessions.call(sid, lambda s: (len(s.steps), len(s._anchors))) == (i, min(i, 1))
            sessions.call(sid, lambda s, a=a: s.step(a))
        shown = sessions.call(sid, lambda s: s.frames().clone())
        sessions.call(sid, lambda s: s.undo())
        sessions.call(sid, lambda s: s.step(acts[-1]))
        return shown, sessions.call(sid, lambda s: s.frames())

    expected, _ = play(fail=False)
    shown, redone = play(fail=True)
    assert torch.equal(shown, expected) and torch.equal(redone, shown)


# ----------------------------------------------------------------- checkpoint switches
def test_save_after_a_switch_writes_the_new_models_frames(player, checkpoints):
    sessions = player.sessions
    sid = sessions.create()
    sessions.call(sid, lambda s: s.start_from_episode(first_episode(player)))
    for a in actions(2):
        sessions.call(sid, lambda s, a=a: s.step(a))
    before = sessions.call(sid, lambda s: s.frames().clone())
    player.host.switch(checkpoints[1])
    paths = sessions.call(sid, lambda s: s.save(player.out_dir))  # no other call re-imagined it first
    saved = load_episode(paths["imagined_npz"])
    assert saved.meta["checkpoint"] == str(checkpoints[1])
    assert not torch.equal(torch.from_numpy(saved.obs), before)
    assert torch.equal(torch.from_numpy(saved.obs), sessions.call(sid, lambda s: s.frames()))


def test_after_a_switch_sessions_sample_with_the_new_models_switches(player, checkpoints, tmp_path, monkeypatch):
    """The runtime switches (compile, cpu_bf16_decoding) stay as the loaded checkpoint has them:
    a start or restart after a switch must not carry the old model's into the new one."""
    other = make_checkpoint(tmp_path / "bf16_off", 1, sampling={"cpu_bf16_decoding": False})
    sessions, host = player.sessions, player.host
    assert host.sampling_defaults()["cpu_bf16_decoding"] == "auto"
    restarted, started = sessions.create(), sessions.create()
    sessions.call(restarted, lambda s: s.start_from_episode(first_episode(player)))
    sessions.call(restarted, lambda s: s.set_sampling({"temperature": 0.5}))
    host.switch(other)
    seen = []
    step = host.model.step
    monkeypatch.setattr(host.model, "step", lambda *a, **k: (seen.append(dict(host.model.sampling)), step(*a, **k))[1])
    sessions.call(restarted, lambda s: s.restart())
    sessions.call(started, lambda s: s.start_from_episode(first_episode(player)))
    for sid in (restarted, started):
        sessions.call(sid, lambda s: s.step(torch.zeros(ACT)))
        assert sessions.call(sid, lambda s: s.sampling)["cpu_bf16_decoding"] is False
    assert [s["cpu_bf16_decoding"] for s in seen] == [False, False]
    assert seen[0]["temperature"] == 0.5  # the session's own numeric settings carry over


def test_a_checkpoint_with_other_actions_is_refused(player, checkpoints, tmp_path):
    other = make_checkpoint(tmp_path / "five_dim_actions", 0, action_dim=ACT + 1)
    with pytest.raises(PlayerError, match=f"{ACT + 1}-dim actions but this player serves {ACT}-dim"):
        player.host.switch(other)
    assert player.host.checkpoint == str(checkpoints[0]) and player.host.model.action_dim == ACT


# ----------------------------------------------------------------- resources and startup checks
def test_evicted_and_closed_sessions_close_their_env(player):
    pytest.importorskip("metaworld", reason="env starts need Meta-World")
    sessions = SessionManager(player.host, player.task_cfg, player.catalog, max_sessions=1)
    closes = []

    def start_counted(s) -> None:
        s.start_from_env(seed=0)
        env, close = s._env, s._env.close
        env.close = lambda: (closes.append(s.sid), close())[1]

    first = sessions.create()
    sessions.call(first, start_counted)
    second = sessions.create()  # evicts the first
    assert first not in sessions and closes == [first]
    sessions.call(second, start_counted)
    sessions.close(second)
    assert closes == [first, second]


@pytest.mark.parametrize("override, match", [
    ("replay_window=0", "replay_window=0 must be an integer >= 1"),
    ("state_budget_mb=-1", "state_budget_mb=-1 must be a number >= 0"),
    ("max_sessions=0", "max_sessions=0 must be an integer >= 1"),
    ("max_sessions=abc", "max_sessions='abc' must be an integer >= 1"),
    ("video_fps=0", "video_fps=0 must be an integer >= 1"),
    ("video_fps=-1", "video_fps=-1 must be an integer >= 1"),
    ("video_scale=1.5", "video_scale=1.5 must be an integer >= 1"),
    ("port=70000", r"port=70000 must be an integer in \[1, 65535\]"),
    ("cpu_threads=two", "cpu_threads='two' must be an integer >= 0"),
    ("max_steps=0", "max_steps=0 must be an integer >= 1"),
])
def test_bad_player_settings_are_refused_at_startup(checkpoints, episodes, tmp_path, override, match):
    with pytest.raises(PlayerError, match=match):
        Player.from_config(play_config(checkpoints[0], episodes, tmp_path, override), TASK)
    assert not worker_threads()


def test_a_failure_after_the_model_loaded_stops_the_worker(checkpoints, episodes, tmp_path, monkeypatch):
    import mbrl.player.player as player_module

    def broken(task_cfg):
        raise PlayerError("simulated")

    monkeypatch.setattr(player_module, "simulator_status", broken)
    with pytest.raises(PlayerError, match="simulated"):
        Player.from_config(play_config(checkpoints[0], episodes, tmp_path), TASK)
    assert not worker_threads()


def worker_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith("player-worker")]


def test_a_device_this_machine_lacks_is_refused_clearly(checkpoints):
    from mbrl.player.player import resolve_device

    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (cuda:0 without one)
    with pytest.raises(PlayerError, match=f"device={missing} but .*(no CUDA GPU|CUDA GPU\\(s\\))"):
        resolve_device(missing)
    if not torch.cuda.is_available():
        for device in ("cuda", "cuda:0"):
            with pytest.raises(PlayerError, match="use device=cpu or device=auto"):
                resolve_device(device)
        with pytest.raises(PlayerError, match="no CUDA GPU"):
            WorldModelHost(checkpoints[0], IMG, "cuda")
        assert not worker_threads()
