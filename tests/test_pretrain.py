"""scripts/pretrain.py: tiny real pretraining runs on the shipped Meta-World demos.

Action-free iVideoGPT pretraining -> loads into an action-conditioned MBPO model; action-
conditioned fine-tuning from it with frozen codebooks; SIGKILL + re-run resumes bit-exactly;
two gloo processes end with the same weights; Vid2World pretraining. Plus the pieces in-process:
metrics, the held-out split, restart-exact data positions, freeze patterns.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from worldmodel.interface import WorldModelConfigError
from worldmodel.registry import load_pretrained

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "scripts" / "pretrain.py")
DEMOS = REPO / "demonstrations" / "metaworld"
# Tiny everything: 2 segments of 7 frames (2 context + 5 future), one held-out batch.
TINY = ["preset=cpu", "log.wandb=disabled", "log.progress_bar=false", "data_loader.num_workers=0",
        "batch_size=2", "segment_length=7", "eval.batches=1", "optim.warmup_steps=2", "log.every=1"]
FINETUNE = ["steps.tokenizer=3", "steps.transformer=8", "eval.every=4", "checkpoint.every=2",
            "freeze=[context_codebook,future_codebook,'transformer.llm.model.layers.0.*']", "log.tensorboard=false"]
TIMEOUT = 300


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}


def pretrain(out: Path, *overrides: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + [SCRIPT, f"out={out}", *TINY, *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def action_free_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pt") / "action_free"
    pretrain(out, "data.action_free=true", "steps.tokenizer=3", "steps.transformer=3", "eval.every=3",
             "checkpoint.every=2")
    return out


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory, action_free_run) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("pt") / "finetune"
    args = [f"init_from={action_free_run}", *FINETUNE]
    pretrain(out, *args)
    return out, args


def test_action_free_pretraining_loads_into_mbpo_model(action_free_run):
    out = action_free_run
    assert (out / "pretrain_done.json").exists() and not any((out / "checkpoints").glob("*/step-*"))
    for name in ("tokenizer", "transformer"):
        assert len((out / "logs" / f"{name}_train.csv").read_text().splitlines()) == 1 + 3
        assert (out / "logs" / f"{name}_eval.csv").exists()
        assert (out / "videos" / f"{name}_step00000003.mp4").stat().st_size > 0
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = EventAccumulator(str(events[0].parent)).Reload()
    steps = {tag: [e.step for e in logged.Scalars(tag)] for tag in logged.Tags()["scalars"]}
    # the transformer's steps follow the tokenizer's 3 (wandb drops steps lower than one it has seen)
    assert steps["tokenizer/train/loss"] == [1, 2, 3] and steps["transformer/train/loss"] == [4, 5, 6]
    evals = (out / "logs" / "transformer_eval.csv").read_text()
    for key in ("teacher_forced_token_accuracy", "open_loop_psnr", "open_loop_ssim", "open_loop_reward_mse"):
        assert key in evals
    # the MBPO loader: action-free weights into the env's 4-dim action model, new heads at zero
    model = load_pretrained(out / "model", action_dim=4)
    assert model.action_dim == 4
    assert load_pretrained(out, action_dim=4).action_dim == 4  # the output folder itself also loads
    assert torch.count_nonzero(model.transformer.action_linear.weight) == 0
    trained = load_file(str(out / "model" / "model.safetensors"))
    assert "transformer.action_linear.weight" not in trained
    fresh = load_pretrained(out / "stages" / "0-tokenizer", action_dim=0)  # tokenizer trained, transformer at init
    assert not torch.equal(fresh.transformer.llm.lm_head.weight, model.transformer.llm.lm_head.weight)
    # it imagines
    obs = torch.from_numpy(np.load(DEMOS / "hammer" / "ep_0000_seed0.npz")["obs"][None, :2].copy())
    frames = model.rollout(obs, lambda f: torch.zeros(1, 4), horizon=2).obs
    assert frames.shape == (1, 3, 3, 64, 64) and frames.dtype == torch.uint8
    # a finished run says so and returns
    proc = pretrain(out, "data.action_free=true", "steps.tokenizer=3", "steps.transformer=3")
    assert "already finished" in proc.stdout


def test_finetune_from_action_free_with_frozen_codebooks(action_free_run, finetune_run):
    out, _ = finetune_run
    before = load_file(str(action_free_run / "model" / "model.safetensors"))
    after = load_file(str(out / "model" / "model.safetensors"))
    for key in ("tokenizer.quantize.embedding.weight", "tokenizer.dynamics_quantize.embedding.weight"):
        assert torch.equal(before[key], after[key]), f"{key} is frozen but changed"
    # a pattern freezes what loading action-free weights (codebooks=auto) would not: layer 0, not layer 1
    layer = "transformer.llm.model.layers.{}.self_attn.q_proj.weight"
    assert torch.equal(before[layer.format(0)], after[layer.format(0)])
    assert not torch.equal(before[layer.format(1)], after[layer.format(1)])
    assert not torch.equal(before["tokenizer.encoder.conv_in.weight"], after["tokenizer.encoder.conv_in.weight"])
    assert torch.count_nonzero(after["transformer.action_linear.weight"]) > 0  # learnt from the actions
    assert load_pretrained(out / "model", action_dim=4).action_dim == 4


def test_sigkill_and_rerun_resumes_exactly(tmp_path, action_free_run, finetune_run):
    reference, args = finetune_run
    out = tmp_path / "killed"
    cmd = [sys.executable, SCRIPT, f"out={out}", *TINY, *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + TIMEOUT
    try:
        while not list((out / "checkpoints" / "1-transformer").glob("step-*")):
            assert proc.poll() is None, "the run ended before its first transformer checkpoint"
            assert time.time() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "pretrain_done.json").exists()
    # a re-run with another effective batch would continue the stage under it: refused, nothing touched
    ckpts = sorted((out / "checkpoints" / "1-transformer").glob("step-*"))
    changed = subprocess.run([sys.executable, SCRIPT, f"out={out}", *TINY, *args, "grad_accum=2"], cwd=REPO,
                             env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert changed.returncode != 0 and "grad_accum=1 (this launch: 2)" in changed.stderr, changed.stderr[-2000:]
    assert "Traceback" not in changed.stderr
    assert sorted((out / "checkpoints" / "1-transformer").glob("step-*")) == ckpts
    # the same command again, now with two DataLoader workers: the batches do not depend on them
    rerun = pretrain(out, *args[:-1], "data_loader.num_workers=2", args[-1])
    step = int(re.search(r"resuming stage transformer at step (\d+)", rerun.stdout).group(1))
    assert 2 <= step < 8
    assert "resuming stage tokenizer" not in rerun.stdout  # finished stages are not redone
    ref, got = (load_file(str(d / "model" / "model.safetensors")) for d in (reference, out))
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), f"{key} differs from the uninterrupted run"
    ref_log = (reference / "logs" / "transformer_train.csv").read_text().splitlines()
    got_log = (out / "logs" / "transformer_train.csv").read_text().splitlines()
    loss = lambda lines: [ln.split(",")[:4] for ln in lines]  # noqa: E731  step, grad norm, loss, ...
    assert loss(ref_log) == loss(got_log)  # same batches after the resume: same losses


def test_resume_settings_refuse_learning_changes_once_a_stage_has_progress(tmp_path):
    import json

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from worldmodel.training.run_settings import SETTINGS_NAME, check_resume_settings, command_line_keys

    with initialize_config_dir(config_dir=str(REPO / "cfgs"), version_base=None):
        def config(*overrides: str) -> dict:
            return OmegaConf.to_container(compose("pretrain", overrides=[
                "world_model_preset@world_model=cpu_ivideogpt", *overrides]), resolve=True)
        base = config()
        # no progress yet: any settings may start the run (the last launch's are kept)
        check_resume_settings(tmp_path, config("batch_size=4"), 1, write=True)
        check_resume_settings(tmp_path, base, 1, write=True)
        (tmp_path / "checkpoints" / "0-tokenizer" / "step-00000002").mkdir(parents=True)
        (tmp_path / "checkpoints" / "0-tokenizer" / ".tmp-step-00000004").mkdir()
        for allowed in (["log.every=7", "eval.batches=9", "checkpoint.every=5", "data_loader.num_workers=0",
                         "data_loader.root=/moved/data", "keep_freed_memory=false"],
                        ["steps.transformer=5"]):  # a stage that has not started
            check_resume_settings(tmp_path, config(*allowed), 1, write=False)
        refused = {"batch_size=4": "batch_size", "grad_accum=3": "grad_accum", "optim.lr=0.1": "optim.lr",
                   "seed=1": "seed", "steps.tokenizer=7": "steps.tokenizer",
                   "world_model.model.tokenizer.size=paper64": "world_model.model.tokenizer.size",
                   "eval.val_fraction=0.2": "eval.held_out", "eval.every=0": "eval.held_out"}
        for override, key in refused.items():
            with pytest.raises(WorldModelConfigError, match=re.escape(key)):
                check_resume_settings(tmp_path, config(override), 1, write=True)
        with pytest.raises(WorldModelConfigError, match="num_processes=1 .this launch: 2."):
            check_resume_settings(tmp_path, base, 2, write=True)
        check_resume_settings(tmp_path, base, 1, write=True)  # the refusals kept the run's own settings
        # a key only this launch has: a change when its command line sets it (+key=...), else a
        # default the code added since the run started
        added = ["+world_model.model.tokenizer.dead_code_steps=2"]
        with pytest.raises(WorldModelConfigError, match=re.escape("dead_code_steps=(absent) (this launch: 2)")):
            check_resume_settings(tmp_path, config(*added), 1, write=True,
                                  set_keys=command_line_keys(added, ["world_model_preset@world_model"]))
        with pytest.raises(WorldModelConfigError, match="dead_code_steps"):  # command line unknown: a change
            check_resume_settings(tmp_path, config(*added), 1, write=True)
        check_resume_settings(tmp_path, config(*added), 1, write=False, set_keys=set())
        # a key only the run has (a +key it started with, dropped now): a change
        saved = json.loads((tmp_path / SETTINGS_NAME).read_text())
        (tmp_path / SETTINGS_NAME).write_text(json.dumps({**saved, "optim.foo": "1"}))
        with pytest.raises(WorldModelConfigError, match=re.escape("optim.foo=1 (this launch: (absent))")):
            check_resume_settings(tmp_path, base, 1, write=False, set_keys=set())
        (tmp_path / SETTINGS_NAME).write_text(json.dumps(saved))
        assert command_line_keys(["+a.b=1", "++c=2", "d.e=[1,2]", "~f", "memory=window", "hydra.run.dir=x",
                                  "world_model_preset@world_model=cpu_ivideogpt", "data=oxe_small"],
                                 groups=["memory", "data"]) == {"a.b", "c", "d.e", "f"}
        # the transformer's steps may change until its stage starts; then they are the run's
        check_resume_settings(tmp_path, config("steps.transformer=5"), 1, write=True)
        (tmp_path / "stages" / "0-tokenizer").mkdir(parents=True)
        (tmp_path / "checkpoints" / "1-transformer" / "step-00000002").mkdir(parents=True)
        with pytest.raises(WorldModelConfigError, match="steps.transformer"):
            check_resume_settings(tmp_path, base, 1, write=True)
        assert '"steps.transformer": "5"' in (tmp_path / SETTINGS_NAME).read_text()


def test_two_gloo_processes_end_with_the_same_weights(tmp_path):
    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    proc = pretrain(out, "steps.tokenizer=2", "steps.transformer=2", "eval.every=0", "checkpoint.every=1",
                    "log.tensorboard=false", launcher=launcher)
    text = proc.stdout + proc.stderr
    assert "2 process(es)" in text
    for stage in ("tokenizer", "transformer"):
        digests = dict(re.findall(rf"rank (\d)/2 stage {stage} weights sha256 (\w+)", text))
        assert set(digests) == {"0", "1"} and digests["0"] == digests["1"], digests
    assert load_pretrained(out / "model", action_dim=4).action_dim == 4


def test_vid2world_pretraining(tmp_path):
    out = tmp_path / "v2w"
    pretrain(out, "world_model=vid2world", "segment_length=4", "world_model.model.max_context_frames=3",
             "steps.diffusion=3", "steps.reward=2",
             "eval.every=3", "checkpoint.every=2", "log.tensorboard=false")
    model = load_pretrained(out / "model", action_dim=4)
    assert model.model_type == "vid2world"
    evals = (out / "logs" / "diffusion_eval.csv").read_text()
    assert "open_loop_psnr" in evals and "diffusion_loss" in evals
    assert "reward_mse" in (out / "logs" / "reward_eval.csv").read_text()
    init = load_pretrained(out / "stages" / "0-diffusion", action_dim=4)
    assert torch.equal(init.backbone.conv_in.weight, model.backbone.conv_in.weight)  # reward stage: backbone fixed
    assert not torch.equal(init.reward_head.mlp[-1].weight, model.reward_head.mlp[-1].weight)
    # optim.lr=null: each stage takes the model's lr for its part (vid2world: lr 1e-4, reward_lr 3e-4)
    # (the logged lr is the one each step applied: 0 at the first step of the warm-up, then rising)
    lrs = {stage: [float(r["lr"]) for r in _csv_rows(out / "logs" / f"{stage}_train.csv")]
           for stage in ("diffusion", "reward")}
    assert lrs["diffusion"][0] == 0.0 and lrs["diffusion"][1] > 0
    assert lrs["reward"][1] == pytest.approx(3 * lrs["diffusion"][1])


def test_vid2world_pretraining_refuses_a_memory_on_state_keys(tmp_path):
    """Episode folders carry no per-frame state keys: a memory.key=state model is refused at start,
    not at its first batch (or, as it was, at the checkpoint's first imagined step)."""
    cmd = [sys.executable, SCRIPT, f"out={tmp_path / 'keyed'}", *TINY, "world_model=vid2world", "memory=vrag",
           "world_model.model.max_context_frames=2", "world_model.model.memory.key=state",
           "world_model.model.memory.key_dim=2", "steps.diffusion=1", "stages=[diffusion]"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "pretraining data does not carry" in proc.stderr and "memory.key=pixel" in proc.stderr
    assert not (tmp_path / "keyed" / "stages").exists()


def test_vid2world_diffusion_stage_trains_what_update_trains():
    """The pretraining stage trains on the model's own objective: with a VRAG memory the backbone
    sees the clip the memory builds (2 retrieved + 2 recent frames + the target), not the whole
    segment, and the loss is the model's memory loss on the same batch and seed. It optimises
    what ``update`` optimises, the state-key embedding included."""
    from worldmodel.memory import pixel_key
    from worldmodel.training.stages import build_stage
    from worldmodel.vid2world import Vid2World
    from worldmodel.vid2world.model import to_float

    micro = dict(channels=(16, 32), attention_resolutions=(), head_dim=8, emb_dim=32, groups=8)
    vrag = {"name": "vrag", "window": 2, "retrieved": 2, "key_size": 4}
    model = Vid2World(image_size=16, action_dim=2, backbone=micro, memory=vrag)
    g = torch.Generator().manual_seed(0)
    obs = torch.randint(0, 256, (2, 8, 3, 16, 16), generator=g, dtype=torch.uint8)
    action = torch.rand(2, 7, 2, generator=g)
    stage = build_stage(model, "diffusion")
    clip_lengths: list[int] = []
    hook = model.backbone.register_forward_hook(lambda module, args, out: clip_lengths.append(args[0].shape[1]))
    torch.manual_seed(1)
    loss, _ = stage(obs, action, torch.zeros(2, 7))
    hook.remove()
    assert clip_lengths == [model.memory.context_size + 1]
    torch.manual_seed(1)
    assert torch.equal(loss, model.memory_diffusion_loss(to_float(obs), action, pixel_key(obs, 4))[0])

    keyed = Vid2World(image_size=16, action_dim=2, backbone=micro, memory={**vrag, "key": "state", "key_dim": 2})
    stage = build_stage(keyed, "diffusion")
    assert {id(p) for p in stage.parameters()} == {id(p) for p in keyed.diffusion_params}
    assert "key_embedding.weight" in stage.state_dict()


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----- the pieces, in-process -----
def test_psnr_ssim_fvd_distance():
    from worldmodel.training.metrics import frechet_distance, psnr, ssim

    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8, generator=g)
    noisy = (real.float() + torch.randn(real.shape, generator=g) * 20).clamp(0, 255).to(torch.uint8)
    assert psnr(real, real).min() > 90 and torch.allclose(ssim(real, real), torch.ones(2, 3))
    p = psnr(real, noisy)
    assert p.shape == (2, 3) and 15 < float(p.mean()) < 30
    assert float(ssim(real, noisy).mean()) < 0.99
    # flat frames: SSIM is the luminance term (2 mx my + c1) / (mx^2 + my^2 + c1), c1 = 0.01^2
    x, y = torch.full((1, 3, 16, 16), 255, dtype=torch.uint8), torch.full((1, 3, 16, 16), 51, dtype=torch.uint8)
    assert float(ssim(x, y)) == pytest.approx((2 * 0.2 + 1e-4) / (1 + 0.04 + 1e-4), rel=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        psnr(real.float(), real.float())
    a = np.random.default_rng(0).normal(size=(64, 4))
    assert abs(frechet_distance(a, a)) < 1e-6 and frechet_distance(a, a + 1.0) == pytest.approx(4.0, rel=1e-6)


def test_held_out_split_is_stable_and_disjoint():
    from worldmodel.training.data import held_out_files

    folders = [str(p) for p in sorted(DEMOS.iterdir()) if p.is_dir()]
    train, val = held_out_files(folders, 0.3)
    assert train and val and not train & val
    assert train | val == {str(p) for f in folders for p in Path(f).glob("*.npz")}
    assert held_out_files(folders, 0.3) == (train, val)
    for f in folders:  # every folder keeps training data
        assert any(p.startswith(f + "/") for p in train)


def test_nested_mix_folders_hold_out_each_file_once(tmp_path):
    from worldmodel.training.data import held_out_files

    for folder in ("oxe", "oxe/bridge"):
        _write_counting_episodes(tmp_path / folder, episodes=30, steps=2)
    outer, inner = str(tmp_path / "oxe"), str(tmp_path / "oxe" / "bridge")
    train, val = held_out_files([inner, outer], 0.2)
    assert train and val and not train & val  # a file of oxe/bridge is either held out or trained on
    assert len(train | val) == 60
    assert held_out_files([outer], 0.2)[1] <= val  # the outer folder's own decisions are unchanged
    assert any(p.startswith(inner + "/") for p in train)


def test_batches_are_a_function_of_their_position():
    from worldmodel.training.data import build_datasets, position_loader

    cfg = {"root": str(DEMOS), "image_size": 64, "datasets": {"hammer": {"path": "hammer"}}}
    train, val = build_datasets(cfg, segment_length=4, seed=3, val_fraction=0.3)
    first = list(zip(range(4), position_loader(train, 3, stage=0, start=0, rank=0, batch_size=2)))
    later = next(iter(position_loader(train, 3, stage=0, start=2, rank=0, batch_size=2, num_workers=2)))
    assert torch.equal(first[2][1].obs, later.obs) and torch.equal(first[2][1].action, later.action)
    other_rank = next(iter(position_loader(train, 3, stage=0, start=2, rank=1, batch_size=2)))
    assert not torch.equal(other_rank.obs, later.obs)
    assert {str(e.path) for e in train.entries[0]}.isdisjoint({str(e.path) for e in val.entries[0]})


def _pretrain_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pretrain_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_auto_overrides_go_where_hydra_reads_overrides():
    insert = _pretrain_script().insert_override
    assert insert(["data=x", "--cfg", "job"], "k=v") == ["data=x", "k=v", "--cfg", "job"]
    assert insert(["--cfg", "job", "data=x"], "k=v") == ["--cfg", "job", "data=x", "k=v"]
    assert insert(["--cfg", "job"], "k=v") == ["k=v", "--cfg", "job"]
    assert insert(["-m", "seed=1,2", "--config-name=pretrain"], "k=v") == \
        ["-m", "seed=1,2", "k=v", "--config-name=pretrain"]
    assert insert([], "k=v") == ["k=v"]
    choose = _pretrain_script().choose_preset
    assert choose(["preset=cpu", "world_model=vid2world", "--cfg", "job"]) == \
        ["world_model=vid2world", "world_model_preset@world_model=cpu_vid2world", "--cfg", "job"]


def test_script_prints_its_config_and_reports_missing_data_in_one_line(tmp_path):
    shown = subprocess.run([sys.executable, SCRIPT, "preset=cpu", "data=metaworld_demos", "--cfg", "job"],
                           cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "name: metaworld_demos" in shown.stdout and "name: ivideogpt" in shown.stdout
    missing = subprocess.run([sys.executable, SCRIPT, "preset=cpu", "data=oxe_small", f"data.root={tmp_path}",
                              f"out={tmp_path / 'out'}"], cwd=REPO, env={**_env(), "HYDRA_FULL_ERROR": "0"},
                             capture_output=True, text=True, timeout=TIMEOUT)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr, missing.stderr[-3000:]
    assert missing.stderr.startswith("[pretrain] error: mix datasets not found")
    # data that cannot be split (every folder holds one episode): the data module's reason, in one line
    single = tmp_path / "single"
    for folder in sorted(DEMOS.iterdir()):
        (single / folder.name).mkdir(parents=True)
        shutil.copy(sorted(folder.glob("*.npz"))[0], single / folder.name)
    one_each = subprocess.run([sys.executable, SCRIPT, *TINY, f"data.root={single}", f"out={tmp_path / 'out'}"],
                              cwd=REPO, env={**_env(), "HYDRA_FULL_ERROR": "0"}, capture_output=True, text=True,
                              timeout=TIMEOUT)
    assert one_each.returncode == 1 and "Traceback" not in one_each.stderr, one_each.stderr[-3000:]
    assert "[pretrain] error: data: every folder of the mix holds a single episode" in one_each.stderr
    no_log = subprocess.run([sys.executable, SCRIPT, *TINY, "log.every=0", f"out={tmp_path / 'out'}"], cwd=REPO,
                            env={**_env(), "HYDRA_FULL_ERROR": "0"}, capture_output=True, text=True, timeout=TIMEOUT)
    assert no_log.returncode == 1 and "log.every=0: " in no_log.stderr and "Traceback" not in no_log.stderr
    # MBPO's key would be ignored here: refused, naming pretraining's own
    mbpo_key = subprocess.run([sys.executable, SCRIPT, *TINY, f"world_model.pretrained={tmp_path}",
                               f"out={tmp_path / 'out'}"], cwd=REPO, env={**_env(), "HYDRA_FULL_ERROR": "0"},
                              capture_output=True, text=True, timeout=TIMEOUT)
    assert mbpo_key.returncode == 1 and "Traceback" not in mbpo_key.stderr, mbpo_key.stderr[-3000:]
    assert f"init_from={tmp_path} instead" in mbpo_key.stderr


def test_evaluation_draws_the_same_noise_every_time_and_leaves_training_rng_alone():
    from worldmodel.training.trainer import isolated_rng

    draws = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        expected_next = torch.randn(3, generator=torch.Generator().manual_seed(global_seed))
        with isolated_rng(seed=0):
            draws.append(torch.randn(4))
        assert torch.equal(torch.randn(3), expected_next)  # the training stream goes on as if untouched
    assert torch.equal(draws[0], draws[1])


def test_freeze_patterns():
    from worldmodel.ivideogpt.model import IVideoGPT
    from worldmodel.training.stages import freeze

    model = IVideoGPT.from_config({"image_size": 64, "action_dim": 4, "tokenizer": "tiny", "transformer": "tiny"})
    names = freeze(model, ["future_codebook", "transformer.llm.model.layers.0.*"])
    assert "tokenizer.dynamics_quantize.embedding.weight" in names
    assert not model.tokenizer.dynamics_quantize.embedding.weight.requires_grad
    assert not model.tokenizer.dynamics_quantize.dead_code_reset
    assert model.tokenizer.quantize.embedding.weight.requires_grad
    with pytest.raises(WorldModelConfigError, match="matches no parameter"):
        freeze(model, ["transformer.llm.layerz.*"])


def test_a_crash_in_the_tokenizer_stage_resumes_exactly_with_dead_codes_revived(tmp_path):
    """The codebooks' usage counters are not weights, but they decide which codes are
    re-initialised: checkpoints keep them (``training_statistics``). The run crashes after its last
    step, before the stage is saved: it resumes from its step-3 checkpoint. Two micro-batches per
    step (the data position is steps x grad_accum), and a checkpoint between two logged rows (the
    metric sums since the last row are in the checkpoint: the rows match the uninterrupted run's).
    Its launches log to one wandb run (offline)."""
    driver = tmp_path / "crash_after_checkpoint.py"
    driver.write_text(
        "import runpy, sys\n"
        "from worldmodel.training import trainer\n"
        "def crash_before_the_stage_is_saved(*args):\n"
        "    raise SystemExit(3)\n"
        "trainer.Pretrainer._finish_stage = crash_before_the_stage_is_saved\n"
        f"sys.argv[0] = {SCRIPT!r}\n"
        f"runpy.run_path({SCRIPT!r}, run_name='__main__')\n")
    args = ["stages=[tokenizer]", "steps.tokenizer=6", "checkpoint.every=3", "eval.every=100", "grad_accum=2",
            "log.every=2", "+world_model.model.tokenizer.dead_code_steps=2"]
    reference = tmp_path / "whole"
    pretrain(reference, *args)
    out = tmp_path / "crashed"
    env = {**_env(), "PYTHONPATH": str(REPO), "WANDB_SILENT": "true"}
    crashed = subprocess.run([sys.executable, str(driver), f"out={out}", *TINY, *args, "log.wandb=offline"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert crashed.returncode == 3, crashed.stderr[-3000:]
    # a key dropped or added with +key=... mid-stage is a change of what is learned: refused
    changed = subprocess.run([sys.executable, SCRIPT, f"out={out}", *TINY, *args[:-1],
                              "+world_model.model.tokenizer.commit_beta=0.5"], cwd=REPO, env=_env(),
                             capture_output=True, text=True, timeout=TIMEOUT)
    assert changed.returncode == 1 and "Traceback" not in changed.stderr, changed.stderr[-3000:]
    assert "commit_beta=(absent) (this launch: 0.5)" in changed.stderr
    assert "dead_code_steps=2 (this launch: (absent))" in changed.stderr
    rerun = pretrain(out, *args, "log.wandb=offline")
    assert "resuming stage tokenizer at step 3" in rerun.stdout
    run_id = (out / "wandb_run_id").read_text()
    assert sorted(d.name.rsplit("-", 1)[1] for d in (out / "wandb").glob("offline-run-*")) == [run_id, run_id]
    header, *rows = (reference / "logs" / "tokenizer_train.csv").read_text().splitlines()
    column = header.split(",").index("ctx_dead_codes_reset")
    assert any(float(r.split(",")[column]) > 0 for r in rows[1:])  # codes are revived after the crash point
    timing = ("steps_per_s", "frames_per_s", "tokens_per_s")
    logged = [{k: v for k, v in r.items() if k not in timing} for r in _csv_rows(reference / "logs" /
                                                                                 "tokenizer_train.csv")]
    assert [r["step"] for r in logged] == ["2", "4", "6"]
    assert logged == [{k: v for k, v in r.items() if k not in timing}
                      for r in _csv_rows(out / "logs" / "tokenizer_train.csv")]
    ref, got = (load_file(str(d / "model" / "model.safetensors")) for d in (reference, out))
    for key in ref:
        assert torch.equal(ref[key], got[key]), f"{key} differs from the uninterrupted run"
    # steps 4-6 were logged twice (before the crash, and after resuming from step 3): TensorBoard
    # shows each step once, as the uninterrupted run logged it
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    def shown(run: Path) -> list[tuple[int, float]]:
        events = EventAccumulator(str(next(run.joinpath("tensorboard").rglob("events.out.tfevents*")).parent))
        events.Reload()
        return [(e.step, e.tensor_proto.float_val[0]) for e in events.Tensors("tokenizer/train/loss")]
    assert [step for step, _ in shown(out)] == [2, 4, 6]
    assert shown(out) == shown(reference)


def test_train_state_keeps_the_metric_sums_and_resumes_checkpoints_without_them():
    from worldmodel.training.trainer import TrainState

    state = TrainState()
    state.step, state.sums, state.count = 3, {"loss": torch.tensor(1.25)}, 2
    saved = state.state_dict()
    resumed = TrainState()
    resumed.load_state_dict(saved)
    assert resumed.step == 3 and resumed.count == 2 and torch.equal(resumed.sums["loss"], torch.tensor(1.25))
    old = {k: v for k, v in saved.items() if k not in ("metric_sums", "metric_count")}  # an older checkpoint
    resumed.load_state_dict(old)
    assert resumed.step == 3 and resumed.sums == {} and resumed.count == 0


def test_settings_that_cannot_run_are_refused_before_any_setup(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from worldmodel.training import Pretrainer

    with initialize_config_dir(config_dir=str(REPO / "cfgs"), version_base=None):
        def config(*overrides: str) -> dict:
            return OmegaConf.to_container(compose("pretrain", overrides=[
                "world_model_preset@world_model=cpu_ivideogpt", f"out={tmp_path / 'out'}", *overrides]), resolve=True)
        refused = {"mixed_precision=bf32": "mixed_precision=bf32: give one of auto, no, fp16, bf16",
                   "grad_accum=0": "grad_accum=0: .* integer >= 1", "grad_accum=1.5": "grad_accum=1.5",
                   "optim.schedule=cosin": "optim.schedule=cosin: give one of linear, cosine,",
                   "optim.schedule=reduce_lr_on_plateau": "optim.schedule=reduce_lr_on_plateau",
                   "data_loader.num_workers=-1": r"data_loader.num_workers=-1: give a whole number >= 0"}
        for override, message in refused.items():
            with pytest.raises(WorldModelConfigError, match=message):
                Pretrainer(config(override))
    assert not (tmp_path / "out").exists()  # nothing was set up


def test_null_loader_workers_are_four_at_most_the_cpus_this_process_may_use(monkeypatch):
    import os

    from worldmodel.training.data import DEFAULT_LOADER_WORKERS, loader_workers

    assert loader_workers(0) == 0 and loader_workers(7) == 7  # as given
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert loader_workers(None) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert loader_workers(None) == DEFAULT_LOADER_WORKERS == 4


def test_auto_precision_is_bf16_on_a_gpu_unless_the_launch_config_asks_for_another():
    from worldmodel.training.trainer import mixed_precision

    assert mixed_precision("auto", None, bf16_gpu=True) == "bf16"
    assert mixed_precision("auto", "no", bf16_gpu=True) == "bf16"  # a plain `accelerate launch`
    assert mixed_precision("auto", "fp16", bf16_gpu=True) == "fp16"
    assert mixed_precision("auto", None, bf16_gpu=False) == "no"  # CPU
    assert mixed_precision("no", "bf16", bf16_gpu=True) == "no"  # the config's explicit choice wins


def test_a_folder_whose_held_out_episodes_are_short_is_left_out_of_evaluation(tmp_path):
    from worldmodel.episodes import Episode, save_episode
    from worldmodel.training.data import build_datasets, held_out_files

    def write(folder: Path, name: str, steps: int) -> None:
        rng = np.random.default_rng(steps)
        save_episode(folder / name, Episode(obs=rng.integers(0, 255, (steps + 1, 3, 16, 16), dtype=np.uint8),
                                            action=np.zeros((steps, 2), np.float32),
                                            reward=np.zeros(steps, np.float32), success=np.zeros(steps, bool)))

    for folder in ("long", "mixed"):
        for i in range(6):
            write(tmp_path / folder, f"ep{i}.npz", 8)
    _, val = held_out_files([str(tmp_path / "long"), str(tmp_path / "mixed")], 0.3)
    assert any("/mixed/" in p for p in val) and any("/long/" in p for p in val)
    for p in val:  # the held-out episodes of "mixed" become too short for a segment
        if "/mixed/" in p:
            write(tmp_path / "mixed", Path(p).name, 2)
    cfg = {"root": str(tmp_path), "image_size": 16,
           "datasets": {"long": {"path": "long"}, "mixed": {"path": "mixed"}}}
    train, held = build_datasets(cfg, segment_length=4, val_fraction=0.3)
    assert held.folders == [str(tmp_path / "long")] and len(train.folders) == 2
    assert held.sample(np.random.default_rng(0))[0].shape == (4, 3, 16, 16)
    for p in val:  # no held-out episode is long enough anywhere: a clear error, with the fix
        write(Path(p).parent, Path(p).name, 2)
    with pytest.raises(ValueError, match="held-out episodes: .*eval.val_folders"):
        build_datasets(cfg, segment_length=4, val_fraction=0.3)


# ----- held-out folders and FVD -----
def _write_counting_episodes(folder: Path, episodes: int = 3, steps: int = 40, size: int = 8) -> None:
    """Episodes whose pixel (0, 0) of channel 0 holds the frame index (to read the frame step)."""
    from worldmodel.episodes import Episode, save_episode

    for i in range(episodes):
        obs = np.random.default_rng(i).integers(0, 255, (steps + 1, 3, size, size), dtype=np.uint8)
        obs[:, 0, 0, 0] = np.arange(steps + 1)
        save_episode(folder / f"ep{i}.npz", Episode(obs=obs, action=np.zeros((steps, 2), np.float32),
                                                    reward=np.zeros(steps, np.float32), success=np.zeros(steps, bool)))


def test_val_folders_resolve_under_the_mix_root_and_take_its_frame_steps(tmp_path, monkeypatch, caplog):
    from omegaconf import OmegaConf

    from worldmodel.training.data import build_datasets

    root = tmp_path / "data"
    for folder in ("oxe/kuka", "val/kuka", "kuka_val", "other"):
        _write_counting_episodes(root / folder)
    cfg = {"root": str(root), "image_size": 8, "action_free": True,
           "datasets": {"kuka": {"path": "oxe/kuka", "weight": 1.0, "frame_step": 3}}}
    monkeypatch.chdir(tmp_path)  # relative val folders must not resolve against the working directory
    val_folders = OmegaConf.create(["val/kuka", "kuka_val", {"path": "other", "frame_step": 2}, "oxe/kuka"])
    with caplog.at_level("WARNING"):
        _, val = build_datasets(cfg, segment_length=5, val_folders=list(val_folders))
    assert val.folders == [str(root / f) for f in ("val/kuka", "kuka_val", "other", "oxe/kuka")]
    assert val.frame_steps == [3, 1, 2, 3]  # same name, no match, explicit, same folder
    assert "kuka_val belongs to no mix dataset" in caplog.text and "val/kuka" not in caplog.text
    assert f"{root / 'oxe/kuka'} overlaps the mix folder" in caplog.text  # trained on: said, not silent
    assert "kuka_val overlaps" not in caplog.text
    rng = np.random.default_rng(0)
    for _ in range(40):  # the segments really are cut at those steps
        obs, _, _, folder = val.sample(rng)
        assert set(np.diff(obs[:, 0, 0, 0].numpy().astype(int))) == {val.frame_steps[folder]}
    # data_loader.root overrides the mix root for the held-out folders too
    moved = tmp_path / "moved"
    _write_counting_episodes(moved / "oxe" / "kuka")
    _write_counting_episodes(moved / "val" / "kuka")
    _, val = build_datasets(cfg, segment_length=5, val_folders=["val/kuka"], root=str(moved))
    assert val.folders == [str(moved / "val" / "kuka")] and val.frame_steps == [3]
    with pytest.raises(FileNotFoundError, match="relative paths are under the mix root"):
        build_datasets(cfg, segment_length=5, val_folders=["nowhere"])
    with pytest.raises(ValueError, match="frame_step"):
        build_datasets(cfg, segment_length=5, val_folders=[{"folder": "other"}])


class _StubI3D(torch.nn.Module):
    """Stands in for the pretrained i3d_torchscript.pt, which cannot be downloaded here (FVD's maths
    and plumbing are what is tested): same call, 4 features (mean, std, max of the video, T)."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        # the real I3D takes videos in [-1, 1] (rescale=False): a video of [0, 1] or [-1, 0] is wrong
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0, "I3D input outside [-1, 1]"
        assert float(x.max() - x.min()) > 1.5, "I3D input spans less than most of [-1, 1]"
        flat = x.flatten(1)
        return torch.stack([flat.mean(1), flat.std(1), flat.amax(1), torch.full_like(flat[:, 0], float(x.shape[2]))], 1)


@pytest.fixture
def stub_i3d(tmp_path) -> Path:
    path = tmp_path / "i3d_stub.pt"
    torch.jit.script(_StubI3D()).save(str(path))
    return path


def test_fvd_checks_clip_length_runs_i3d_in_chunks_and_needs_scipy_at_start(stub_i3d, monkeypatch):
    from worldmodel.training.metrics import FVD, FVD_MIN_FRAMES

    assert FVD_MIN_FRAMES == 9  # I3D: ceil(ceil(ceil(T / 2) / 2) / 2) >= 2 frames for its last pool
    videos = torch.randint(0, 256, (5, 9, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    fvd = FVD(stub_i3d, chunk=2)
    whole = FVD(stub_i3d, chunk=16).features(videos)
    seen: list[tuple[int, ...]] = []
    detector = fvd.detector
    fvd.detector = lambda x, **kw: (seen.append(tuple(x.shape)), detector(x, **kw))[1]
    np.testing.assert_allclose(fvd.features(videos), whole)
    assert seen == [(2, 3, 9, 8, 8), (2, 3, 9, 8, 8), (1, 3, 9, 8, 8)]  # [N, 3, T, H, W] in chunks of 2
    assert whole.shape == (5, 4) and np.all(whole[:, 3] == 9)
    with pytest.raises(ValueError, match="at least 9 frames.*segment_length.*eval.fvd_i3d=null"):
        fvd.features(videos[:, :8])
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.linalg", None)
    with pytest.raises(ImportError, match="pip install scipy"):
        FVD(stub_i3d)


def test_frechet_distance_uses_n_normalised_covariances_and_regularises_singular_products(monkeypatch):
    import warnings

    import scipy.linalg

    from worldmodel.training.metrics import FRECHET_EPS, frechet_distance

    a, b = np.array([[0.0], [1.0], [2.0], [5.0]]), np.array([[1.0], [1.0], [3.0], [3.0]])
    expected = (a.mean() - b.mean()) ** 2 + (a.std() - b.std()) ** 2  # 1-D: std normalised by N (ddof=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated sqrtm(disp=...) and no other warning
        assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    calls = []
    sqrtm = scipy.linalg.sqrtm

    def singular_once(m):
        calls.append(m)
        return np.full_like(m, np.nan) if len(calls) == 1 else sqrtm(m)

    constant = np.random.default_rng(1).normal(size=(16, 3))
    constant[:, 0] = 1.0  # a constant feature: singular covariances, regularised without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(frechet_distance(constant, constant + 0.5))
    monkeypatch.setattr(scipy.linalg, "sqrtm", singular_once)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 3)), rng.normal(size=(16, 3))
    value = frechet_distance(x, y)
    cx, cy = np.cov(x, rowvar=False, bias=True), np.cov(y, rowvar=False, bias=True)
    offset = np.eye(3) * FRECHET_EPS
    assert len(calls) == 2 and np.allclose(calls[1], (cx + offset) @ (cy + offset)) and np.isfinite(value)
    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda m: np.full_like(m, np.nan))  # no root at all
    with pytest.warns(RuntimeWarning, match="not finite even after regularising"):
        assert np.isnan(frechet_distance(x, y))


def counting_resets(model):
    """``model`` with its resets counted in ``model.resets`` (one per rolled-out batch)."""
    reset = model.reset
    model.resets = 0

    def counted(*args, **kwargs):
        model.resets += 1
        return reset(*args, **kwargs)
    model.reset = counted
    return model


def test_fvd_runs_over_fvd_videos_fixed_held_out_segments(tmp_path, stub_i3d):
    from worldmodel.data import SegmentDataset
    from worldmodel.training.data import eval_batches, fvd_extra_batches
    from worldmodel.training.evaluation import EvalTools, evaluate
    from worldmodel.training.metrics import FVD

    _write_counting_episodes(tmp_path / "held_out", steps=30, size=16)  # SSIM needs 11+ pixels
    dataset = SegmentDataset([str(tmp_path / "held_out")], segment_length=9)
    batches = eval_batches(dataset, seed=0, batches=1, batch_size=4)
    extra = fvd_extra_batches(dataset, seed=0, videos=10, batch_size=4, eval_batches_count=1)
    assert len(extra) == 2  # ceil(10 / 4) = 3 batches of videos, one of them the eval batch
    assert torch.equal(extra[0].obs, eval_batches(dataset, seed=0, batches=2, batch_size=4)[1].obs)  # the same stream
    from worldmodel.vid2world import Vid2World

    micro = dict(channels=(16, 32), attention_resolutions=(), head_dim=8, emb_dim=32, groups=8)
    model = counting_resets(Vid2World(image_size=16, action_dim=2, backbone=micro, sampling_steps=2,
                                      max_context_frames=3))
    tools = EvalTools(video_samples=1, fvd=FVD(stub_i3d), fvd_videos=10, fvd_batches=extra)
    features, i3d_calls = tools.fvd.features, []
    tools.fvd.features = lambda videos: (i3d_calls.append(len(videos)), features(videos))[1]
    metrics, _ = evaluate(model, "diffusion", batches, tools)
    assert metrics["fvd_videos"] == 10 and np.isfinite(metrics["open_loop_fvd"]) and model.resets == 3
    assert i3d_calls == [4, 4, 4, 4, 2, 2]  # real and imagined videos of each batch
    again, _ = evaluate(model, "diffusion", batches, tools)  # fixed segments: the same value every time
    assert again["open_loop_fvd"] == metrics["open_loop_fvd"]
    assert i3d_calls[6:] == [4, 4, 2]  # the real videos' features are reused: I3D on the imagined ones only
    few = EvalTools(video_samples=1, fvd=FVD(stub_i3d), fvd_videos=3,
                    fvd_batches=fvd_extra_batches(dataset, 0, 3, 4, 1))
    model.resets = 0
    assert evaluate(model, "diffusion", batches, few)[0]["fvd_videos"] == 3 and model.resets == 1
    assert "fvd_videos" not in evaluate(model, "diffusion", batches, EvalTools(video_samples=1))[0]


def test_fvd_in_a_pretraining_run_and_too_short_clips_refused_at_start(tmp_path, stub_i3d):
    out = tmp_path / "v2w_fvd"
    pretrain(out, "world_model=vid2world", "segment_length=9", "world_model.model.max_context_frames=3",
             "steps.diffusion=2", "stages=[diffusion]", "eval.every=2", f"eval.fvd_i3d={stub_i3d}",
             "eval.fvd_videos=5", "log.tensorboard=false")
    header, row = (out / "logs" / "diffusion_eval.csv").read_text().splitlines()[-2:]
    values = dict(zip(header.split(","), row.split(",")))
    assert float(values["fvd_videos"]) == 5 and np.isfinite(float(values["open_loop_fvd"]))
    short = [sys.executable, SCRIPT, f"out={tmp_path / 'short'}", *TINY, "world_model=vid2world",
             f"eval.fvd_i3d={stub_i3d}"]  # TINY: segments of 7 frames
    proc = subprocess.run(short, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode != 0 and "FVD needs clips of at least 9 frames" in proc.stderr
    assert not (tmp_path / "short" / "stages").exists()  # refused before any training


def test_the_fallback_held_out_file_never_takes_the_only_episode_of_a_nested_folder(tmp_path):
    from worldmodel.training.data import build_datasets, file_hash, held_out_files

    root = tmp_path / "corpus"  # names chosen so that inner/ep0's hash is the smallest of the mix
    _write_counting_episodes(root, episodes=3, steps=6)
    _write_counting_episodes(root / "inner", episodes=1, steps=6)
    only_inner = root / "inner" / "ep0.npz"
    hashes = {p: file_hash(root, p) for p in root.rglob("*.npz")}
    val_fraction = 0.05
    assert min(hashes, key=hashes.get) == only_inner and min(hashes.values()) > val_fraction  # the hash holds out none
    cfg = {"root": str(root), "image_size": 8, "datasets": {"all": {"path": "."}, "inner": {"path": "inner"}}}
    train, held = build_datasets(cfg, segment_length=4, val_fraction=val_fraction)
    rest = min((p for p in hashes if p != only_inner), key=hashes.get)
    assert [str(e.path) for e in held.entries[0]] == [str(rest)]  # the smallest hash of the others
    assert str(only_inner) in {str(e.path) for e in train.entries[1]}
    # every file is the only one of a folder (other/ep0 of other, inner/ep0 of inner): a clear error
    _write_counting_episodes(root / "other", episodes=1, steps=6)
    for p in root.glob("ep*.npz"):
        p.unlink()
    with pytest.raises(ValueError, match="only episode of a folder.*eval.val_folders"):
        held_out_files([str(root), str(root / "inner"), str(root / "other")], val_fraction)


class _OneArgI3D(torch.nn.Module):
    """A TorchScript module without I3D's call (no rescale / resize / return_features)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :4]


class _PooledI3D(torch.nn.Module):
    """I3D's call, but one number per video instead of features [N, D]."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        return x.flatten(1).mean(1)


def test_an_unusable_i3d_file_is_refused_when_fvd_is_set_up(tmp_path, stub_i3d):
    from worldmodel.interface import WorldModelConfigError
    from worldmodel.training.metrics import FVD

    one_arg, pooled, weights = tmp_path / "one_arg.pt", tmp_path / "pooled.pt", tmp_path / "state_dict.pt"
    torch.jit.script(_OneArgI3D()).save(str(one_arg))
    torch.jit.script(_PooledI3D()).save(str(pooled))
    torch.save(torch.nn.Linear(3, 4).state_dict(), weights)  # weights, not a TorchScript module
    for path in (one_arg, pooled, weights):
        with pytest.raises(WorldModelConfigError) as err:
            FVD(path)
        message = str(err.value)
        assert message.startswith(f"eval.fvd_i3d={path} is not a usable I3D: it must be a TorchScript I3D")
        assert "\n" not in message and "eval.fvd_i3d=null" in message
    assert FVD(stub_i3d).features(torch.zeros(3, 9, 3, 8, 8, dtype=torch.uint8) + 255 * (
        torch.arange(8) % 2).to(torch.uint8)).shape == (3, 4)  # the stub I3D is accepted


def test_ssim_matches_an_independent_reference():
    """Wang et al. (2004) SSIM computed here with scipy: Gaussian 11x11 window of sigma 1.5, K1 = 0.01,
    K2 = 0.03, valid correlation, the map's mean per channel, then over channels."""
    from scipy.signal import correlate2d

    from worldmodel.training.metrics import ssim

    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (3, 20, 20), dtype=np.uint8)
    pred = np.clip(real.astype(int) + rng.integers(-150, 151, real.shape), 0, 255).astype(np.uint8)
    g = np.exp(-(np.arange(11) - 5.0) ** 2 / (2 * 1.5 ** 2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    per_channel = []
    for x, y in zip(real / 255.0, pred / 255.0):
        blur = lambda t: correlate2d(t, window, mode="valid")  # noqa: E731
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
        per_channel.append((((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))).mean())
    expected = float(np.mean(per_channel))
    assert 0.1 < expected < 0.9  # a pair where the structure term matters
    assert float(ssim(torch.from_numpy(real)[None], torch.from_numpy(pred)[None])) == pytest.approx(expected, rel=1e-4)


class _AddActionModel:
    """Not a world model (a test double for ``evaluate``): each imagined frame is the last frame
    (flat frames) plus the step's first action entry, and its reward is that entry halved, so every
    open-loop score is a known function of which real frames and actions ``evaluate`` uses."""
    device = torch.device("cpu")
    context_frames = 2

    def sampling_mode(self):
        import contextlib

        return contextlib.nullcontext()

    def diffusion_objective(self, batch):
        return torch.zeros(()), {}

    def reset(self, context_obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return context_obs[:, -1]

    def step(self, state: torch.Tensor, action: torch.Tensor):
        frame = (state.int() + action[:, 0, None, None, None].int()).to(torch.uint8)
        return frame, action[:, 0] / 2, frame


def test_open_loop_scores_compare_each_imagined_frame_with_its_real_frame():
    from worldmodel.interface import SegmentBatch
    from worldmodel.training.evaluation import EvalTools, evaluate
    from worldmodel.training.metrics import psnr, ssim

    B, T, size, T0 = 2, 6, 16, _AddActionModel.context_frames  # SSIM needs frames of 11+ pixels
    level = 20 * torch.arange(T)[None, :] + 5 * torch.arange(B)[:, None]  # [B, T]: every real frame differs
    obs = level[:, :, None, None, None].expand(B, T, 3, size, size).to(torch.uint8)
    step = 1 + torch.arange(T - 1)[None, :] + torch.arange(B)[:, None]  # [B, T-1]: every action differs
    action = torch.stack([step, -step], -1).float()
    reward = torch.ones(B, T - 1)
    batches = [SegmentBatch(obs, action, reward)]
    metrics, _ = evaluate(_AddActionModel(), "diffusion", batches, EvalTools(video_samples=1))
    # imagined frame j = real frame T0-1 + actions T0-1 .. T0-1+j (action t takes frame t to t+1)
    pred_level = level[:, T0 - 1, None] + torch.cumsum(step[:, T0 - 1:], 1)  # [B, T-T0]
    pred = pred_level[:, :, None, None, None].expand(B, T - T0, 3, size, size).to(torch.uint8)
    real = obs[:, T0:]
    assert metrics["open_loop_psnr"] == pytest.approx(float(psnr(real, pred).mean()), rel=1e-6)
    assert metrics["open_loop_ssim"] == pytest.approx(float(ssim(real, pred).mean()), rel=1e-6)
    assert metrics["open_loop_last_psnr"] == pytest.approx(float(psnr(obs[:, -1], pred[:, -1]).mean()), rel=1e-6)
    expected_mse = float(((step[:, T0 - 1:] / 2 - 1) ** 2).mean())
    assert metrics["open_loop_reward_mse"] == pytest.approx(expected_mse, rel=1e-6)
