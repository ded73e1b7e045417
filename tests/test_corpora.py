"""Corpus readers on small files in the real on-disk formats, written here.

Most TFRecord files are written here by worldmodel.corpora.tfrecord (TensorFlow is not a
dependency):
tf.train.Example protobufs (TFDS's flattened ``steps/...`` keys for RLDS, BAIR's ``{t}/...``
keys) in TFRecord framing with masked CRC-32C checksums. The framing was checked byte for byte
against the independent PyPI ``tfrecord`` writer; the CRC against the standard test vector.
Two checked-in fixtures were written by the real TensorFlow library
(tests/fixtures/corpora/make_tf_fixtures.py) and are read at the end of this file.
"""
from __future__ import annotations

import gzip
import importlib.util
import io
import json
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from worldmodel.corpora import tfrecord as tfr
from worldmodel.corpora.bair import BairReader
from worldmodel.corpora.convert import MANIFEST_NAME, ConversionError, convert_corpus
from worldmodel.corpora.frames import decode_image, resize_frame
from worldmodel.corpora.mix import frame_step_for, load_mix
from worldmodel.corpora.rlds import RLDSReader, _step_values, load_features
from worldmodel.corpora.video_folder import VideoFolderReader, episode_name
from worldmodel.episodes import Episode, episode_paths, load_episode, save_episode

REPO = Path(__file__).resolve().parents[1]
CRC32C_CHECK = 0xE3069283  # CRC-32C of b"123456789" (RFC 3720)


# ----- fixtures in the real formats -----
def tensor(shape, dtype="float32", encoding="none"):
    return {"pythonClassName": "tensorflow_datasets.core.features.tensor_feature.Tensor",
            "tensor": {"shape": {"dimensions": [str(d) for d in shape]} if shape else {},
                       "dtype": dtype, "encoding": encoding}}


def image(h, w, fmt):
    return {"pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
            "image": {"shape": {"dimensions": [str(h), str(w), "3"]}, "dtype": "uint8",
                      "encodingFormat": fmt}}


def fdict(features):
    return {"pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
            "featuresDict": {"features": features}}


def steps_tree(observation, action):
    step = fdict({"action": action, "observation": fdict(observation),
                  "reward": tensor([]), "is_first": tensor([], "bool"),
                  "is_last": tensor([], "bool"), "is_terminal": tensor([], "bool")})
    return fdict({"steps": {"pythonClassName":
                            "tensorflow_datasets.core.features.dataset_feature.Dataset",
                            "sequence": {"feature": step, "length": "-1"}}})


FRACTAL_ACTIONS = {"base_displacement_vector": 2, "base_displacement_vertical_rotation": 1,
                   "gripper_closedness_action": 1, "rotation_delta": 3, "world_vector": 3}
BRIDGE_ACTIONS = {"open_gripper": 0, "rotation_delta": 3, "terminate_episode": 0, "world_vector": 3}
H, W = 24, 32  # fractal-like frames (wider than tall, like RT-1's 256x320)


def encode(frame, fmt):
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG" if fmt == "png" else "JPEG", quality=95)
    return buf.getvalue()


def frame_for(episode, step, h=H, w=W):
    """A frame whose columns carry a ramp (so crops are checkable) and whose level encodes ids."""
    frame = np.zeros((h, w, 3), dtype=np.uint8)
    frame[..., 0] = np.arange(w, dtype=np.uint8)[None, :] * 4
    frame[..., 1] = 10 * step
    frame[..., 2] = 30 * episode
    return frame


def fractal_record(ep, steps):
    """One RT-1-like episode serialized the way TFDS does (flattened keys, all steps concatenated)."""
    feats = {"steps/observation/image": [encode(frame_for(ep, t), "png") for t in range(steps)],
             "steps/observation/natural_language_instruction": [b"pick coke can"] * steps,
             "steps/observation/natural_language_embedding": np.zeros(steps * 4, np.float32),
             "steps/reward": np.eye(1, steps, steps - 1, dtype=np.float32)[0],  # 1 on the last step
             "steps/is_first": np.eye(1, steps, 0, dtype=bool)[0],
             "steps/is_last": np.eye(1, steps, steps - 1, dtype=bool)[0],
             "steps/is_terminal": np.eye(1, steps, steps - 1, dtype=bool)[0],
             "steps/action/terminate_episode": np.tile([0, 1, 0], steps)}
    for i, (key, dim) in enumerate(FRACTAL_ACTIONS.items()):
        feats[f"steps/action/{key}"] = (100 * ep + 10 * np.arange(steps)[:, None] + i
                                        + np.zeros((steps, dim))).astype(np.float32).ravel()
    return tfr.make_example(feats)


def make_fractal(root: Path, lengths=((5, 6), (4, 7))) -> Path:
    builder = root / "fractal20220817_data" / "0.1.0"
    builder.mkdir(parents=True)
    action = fdict({k: tensor([d]) for k, d in FRACTAL_ACTIONS.items()}
                   | {"terminate_episode": tensor([3], "int32")})
    observation = {"image": image(H, W, "png"), "natural_language_embedding": tensor([4]),
                   "natural_language_instruction": tensor([], "string")}
    (builder / "features.json").write_text(json.dumps(steps_tree(observation, action)))
    (builder / "dataset_info.json").write_text(json.dumps({"name": "fractal20220817_data"}))
    ep = 0
    for shard, shard_lengths in enumerate(lengths):
        records = []
        for steps in shard_lengths:
            records.append(fractal_record(ep, steps))
            ep += 1
        tfr.write_records(builder / f"fractal20220817_data-train.tfrecord-{shard:05d}-of-"
                                    f"{len(lengths):05d}", records)
    return builder


def make_bridge(root: Path, episodes=3, steps=4) -> Path:
    builder = root / "bridge" / "0.1.0"
    builder.mkdir(parents=True)
    action = fdict({k: tensor([d] if d else [], "bool" if k == "open_gripper" else "float32")
                    for k, d in BRIDGE_ACTIONS.items()})
    observation = {"image": image(32, 40, "jpeg"), "state": tensor([7], "float32", "zlib")}
    (builder / "features.json").write_text(json.dumps(steps_tree(observation, action)))
    records = []
    for ep in range(episodes):
        records.append(tfr.make_example({
            "steps/observation/image": [encode(np.full((32, 40, 3), 40 * t, np.uint8), "jpeg")
                                        for t in range(steps)],
            "steps/observation/state": [zlib.compress(np.full(7, t, np.float32).tobytes())
                                        for t in range(steps)],
            "steps/action/open_gripper": np.arange(steps) % 2 == 0,
            "steps/action/rotation_delta": np.full(steps * 3, 0.5, np.float32),
            "steps/action/terminate_episode": np.zeros(steps, np.float32),
            "steps/action/world_vector": np.full(steps * 3, -ep, np.float32),
            "steps/reward": np.zeros(steps, np.float32),
            "steps/is_first": np.eye(1, steps, 0, dtype=bool)[0],
            "steps/is_last": np.eye(1, steps, steps - 1, dtype=bool)[0],
            "steps/is_terminal": np.zeros(steps, bool)}))
    for shard in range(2):  # two shards, so that conversion runs in two worker processes
        tfr.write_records(builder / f"bridge-train.tfrecord-{shard:05d}-of-00002", records[shard::2])
    return builder


# ----- TFRecord -----
def test_tfrecord_crc_framing_and_example_roundtrip(tmp_path):
    assert tfr.crc32c(b"123456789") == CRC32C_CHECK
    assert tfr.crc32c_python(b"123456789") == CRC32C_CHECK
    example = {"img": [b"\x00\x01", b"xyz"], "act": np.array([0.5, -1.0], np.float32),
               "flag": np.array([True, False]), "n": 7}
    path = tfr.write_records(tmp_path / "a.tfrecord", [tfr.make_example(example)] * 3)
    records = list(tfr.iter_records(path))
    assert [i for i, _ in records] == [0, 1, 2]
    parsed = tfr.parse_example(records[0][1])
    assert parsed["img"] == [b"\x00\x01", b"xyz"]
    np.testing.assert_array_equal(parsed["act"], [0.5, -1.0])
    np.testing.assert_array_equal(parsed["flag"], [1, 0])
    assert parsed["n"].dtype == np.int64 and parsed["n"].tolist() == [7]
    with pytest.raises(ValueError, match="not a tf.train.Example"):
        tfr.parse_example(b"\xff\xff\xff")


def test_tfrecord_corruption_is_reported_by_file(tmp_path):
    records = [tfr.make_example({"i": np.array([i])}) for i in range(3)]
    path = tfr.write_records(tmp_path / "bad.tfrecord", records)
    data = bytearray(path.read_bytes())
    first = len(tfr.frame_record(records[0]))
    data[first + 14] ^= 0xFF  # a data byte of record 1: its checksum fails, framing intact
    path.write_bytes(bytes(data))
    errors: list = []
    kept = [tfr.parse_example(d)["i"][0] for _, d in tfr.iter_records(path, errors=errors)]
    assert kept == [0, 2]
    assert len(errors) == 1 and errors[0].record == 1 and not errors[0].fatal
    assert "bad.tfrecord" in str(errors[0]) and "checksum" in str(errors[0])
    with pytest.raises(tfr.TFRecordError, match="bad.tfrecord record 1"):
        list(tfr.iter_records(path))
    # truncated: the records before the cut are read, the rest is reported as unreadable
    path.write_bytes(bytes(data[:first + 20]))
    errors = []
    assert [i for i, _ in tfr.iter_records(path, errors=errors)] == [0]
    assert errors[0].fatal and "truncated" in errors[0].fault


def test_a_corrupt_gzip_stream_ends_the_file_with_a_reported_error(tmp_path):
    """Damage inside the deflate stream of a .gz shard (zlib.error) is a fatal framing fault:
    the records before it are kept, the rest is reported (or TFRecordError with errors=None)."""
    rng = np.random.default_rng(0)
    records = [rng.integers(0, 4, 5000, dtype=np.uint8).tobytes() for _ in range(4)]
    deflate = zlib.compressobj(wbits=31)  # gzip framing; the flush ends on a byte boundary
    body = deflate.compress(b"".join(tfr.frame_record(r) for r in records)) + deflate.flush(zlib.Z_FULL_FLUSH)
    path = tmp_path / "shard.tfrecord.gz"
    path.write_bytes(body + b"\xff" * 64)  # then a deflate block of the invalid type 3
    errors: list = []
    kept = [data for _, data in tfr.iter_records(path, errors=errors)]
    assert kept and kept == records[:len(kept)]
    assert len(errors) == 1 and errors[0].fatal and "corrupt gzip data" in errors[0].fault
    assert "shard.tfrecord.gz" in str(errors[0])
    with pytest.raises(tfr.TFRecordError, match="corrupt gzip data"):
        list(tfr.iter_records(path))


def test_a_plain_tfrecord_whose_first_length_looks_like_gzip_is_read_plainly(tmp_path):
    """A record of 0x8b1f bytes starts the file with 1f 8b, gzip's magic: the length checksum
    tells the plain file apart, and a real gzip file is still read through gzip."""
    records = [b"x" * 0x8B1F, b"second"]
    path = tfr.write_records(tmp_path / "plain.tfrecord", records)
    assert path.read_bytes()[:2] == tfr.GZIP_MAGIC
    errors: list = []
    assert [d for _, d in tfr.iter_records(path, errors=errors)] == records and not errors
    zipped = tmp_path / "zipped.tfrecord"
    with gzip.open(zipped, "wb") as f:
        f.write(path.read_bytes())
    assert [d for _, d in tfr.iter_records(zipped)] == records


@dataclass
class SlowReader:
    """Sources that take a while each; the one named ``interrupt_at`` is a Ctrl-C in its worker."""
    root: str
    interrupt_at: str = "2"

    def sources(self) -> list[Path]:
        return sorted(Path(self.root).iterdir(), key=lambda p: int(p.name))

    def settings(self) -> dict:
        return {"format": "slow"}

    def iter_episodes(self, source, exists, errors):
        time.sleep(0.1)
        if source.name == self.interrupt_at:
            raise KeyboardInterrupt
        yield source.name, Episode(obs=np.zeros((2, 3, 4, 4), np.uint8), action=np.zeros((1, 0), np.float32),
                                   reward=np.zeros(1, np.float32), success=np.zeros(1, bool))


def test_an_interrupted_parallel_conversion_stops_without_converting_the_queue(tmp_path):
    """Ctrl-C used to wait for every queued source (hours on OXE) before the manifest was written."""
    sources = tmp_path / "sources"
    sources.mkdir()
    for i in range(60):
        (sources / str(i)).write_bytes(b"")
    out = tmp_path / "eps"
    with pytest.raises(KeyboardInterrupt):
        convert_corpus(SlowReader(str(sources)), out, workers=2, progress=False)
    written = len(episode_paths(out))
    assert written < 20  # a few running or queued in the pool's call queue; 59 before the fix
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert len(manifest["sources"]) <= written  # what finished is kept for the resume


# ----- RLDS -----
def test_rlds_features_and_fractal_episode_mapping(tmp_path):
    builder = make_fractal(tmp_path / "oxe")
    specs = load_features(builder)
    assert specs["steps/observation/image"].kind == "image"
    assert specs["steps/action/world_vector"].shape == (3,) and specs["steps/reward"].per_step
    out = tmp_path / "episodes"
    report = convert_corpus(RLDSReader(str(builder), image_size=H), out, progress=False)
    assert report.written == 4 and not report.bad_records and not report.failed_sources
    paths = episode_paths(out)
    assert len(paths) == 4
    ep = load_episode(paths[1], image_size=H, action_dim=10)  # shard 0, record 1: 6 steps
    assert ep.obs.shape == (6, 3, H, H) and len(ep) == 5
    # center crop of a 24x32 frame to 24x24 keeps columns 4..27 exactly (PNG is lossless)
    np.testing.assert_array_equal(ep.obs[2].transpose(1, 2, 0), frame_for(1, 2)[:, 4:28])
    layout = ep.meta["action_layout"]
    assert [k.rsplit("/", 1)[1] for k, _, _ in layout] == [
        "world_vector", "rotation_delta", "gripper_closedness_action", "base_displacement_vector",
        "base_displacement_vertical_rotation"]  # the preset's order, terminate_episode left out
    key_index = {k: i for i, k in enumerate(FRACTAL_ACTIONS)}
    for key, start, stop in layout:
        expected = 100 * 1 + 10 * np.arange(5) + key_index[key.rsplit("/", 1)[1]]
        np.testing.assert_array_equal(ep.action[:, start:stop], np.repeat(expected[:, None], stop - start, 1))
    # the success reward of the last step goes to the last transition; terminal aligned to it
    np.testing.assert_array_equal(ep.reward, [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(ep.terminal, [0, 0, 0, 0, 1])
    assert ep.meta["task"] == "pick coke can" and ep.meta["fps"] == 3
    assert ep.meta["dataset"] == "fractal20220817_data" and ep.meta["original_size"] == [H, W]


def test_rlds_bridge_like_in_parallel_and_custom_keys(tmp_path):
    builder = make_bridge(tmp_path / "oxe")
    out = tmp_path / "bridge_eps"
    reader = RLDSReader(str(builder), image_size=16, resize="pad")
    report = convert_corpus(reader, out, workers=2, progress=False)
    assert report.written == 3
    ep = load_episode(sorted(episode_paths(out))[1], image_size=16, action_dim=7)  # shard 0, #1
    assert ep.obs.shape == (4, 3, 16, 16)
    np.testing.assert_array_equal(ep.action[:, :3], -2.0)  # world_vector of episode 2
    np.testing.assert_array_equal(ep.action[:, 3:6], 0.5)
    np.testing.assert_array_equal(ep.action[:, 6], [1, 0, 1])  # open_gripper bools -> 0/1
    # pad: a 32x40 frame is letterboxed: black rows at the top, the frame's level in the middle
    assert ep.obs[3, :, 0].max() == 0 and abs(int(ep.obs[3, 0, 8, 8]) - 120) <= 6
    # any dataset by its keys: a zlib-encoded tensor as the action
    custom = RLDSReader(str(builder), image_size=16, action_keys=("steps/observation/state",))
    example = tfr.parse_example(next(tfr.iter_records(custom.sources()[0]))[1])
    episode = custom.episode(example)
    np.testing.assert_array_equal(episode.action, np.repeat(np.arange(3.0)[:, None], 7, 1))
    values = _step_values(custom.specs["steps/observation/state"],
                          example["steps/observation/state"], 4)
    assert values.shape == (4, 7)
    with pytest.raises(KeyError, match="not in features.json"):
        RLDSReader(str(builder), action_keys=("no_such_key",)).sources()


def load_cli():
    spec = importlib.util.spec_from_file_location("convert_dataset", REPO / "scripts" / "convert_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_rlds_bad_records_resume_and_settings_guard(tmp_path, capsys):
    cli = load_cli()
    builder = make_fractal(tmp_path / "oxe", lengths=((5, 6, 4), (4, 7)))
    shard0, shard1 = sorted(builder.glob("*.tfrecord-*"))
    data = bytearray(shard0.read_bytes())
    first = len(tfr.frame_record(fractal_record(0, 5)))
    data[first + 100] ^= 0xFF  # corrupt record 1 of shard 0
    shard0.write_bytes(bytes(data))
    bad_image = tfr.make_example({"steps/observation/image": [b"not a png"] * 3})
    tfr.write_records(builder / "fractal20220817_data-train.tfrecord-00002-of-00003", [bad_image])
    shard1.write_bytes(shard1.read_bytes()[:-30])  # truncated: its last record is lost
    out = tmp_path / "eps"

    # a first run stops after one source; the rerun converts only the rest
    args = ["rlds", str(builder), "--out", str(out), "--image-size", "16", "--no-progress"]
    assert cli(args + ["--max-sources", "1"]) == 0
    assert len(episode_paths(out)) == 2
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert "1 of 3 sources" not in printed and "2 of 3 sources converted now, 1 finished before" in printed
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    errors = {Path(s).name: e["errors"] for s, e in manifest["sources"].items()}
    assert any("checksum" in e for e in errors[shard0.name])
    assert any("truncated" in e for e in errors[shard1.name])
    assert any("undecodable image" in e for e in errors[builder.glob("*00002-of-00003").__next__().name])
    assert len(episode_paths(out)) == 3  # 2 of shard 0 and 1 of shard 1
    assert "bad records skipped" in printed and shard0.name in printed

    # resume: nothing left to do; a deleted episode is rewritten when its source is redone
    report = convert_corpus(RLDSReader(str(builder), image_size=16), out, progress=False)
    assert report.resumed == 3 and report.written == 0 and len(report.bad_records) == 3
    # a different setting into the same folder is refused with a clear message
    with pytest.raises(ConversionError, match="other settings"):
        convert_corpus(RLDSReader(str(builder), image_size=32), out, progress=False)
    assert cli(["rlds", str(builder), "--out", str(out), "--image-size", "32"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert cli(["rlds", str(builder), "--list-features"]) == 0
    assert "steps/action/world_vector" in capsys.readouterr().out


def test_rlds_resume_skips_existing_episodes_without_decoding(tmp_path):
    builder = make_fractal(tmp_path / "oxe")
    out = tmp_path / "eps"
    convert_corpus(RLDSReader(str(builder), image_size=16), out, progress=False)
    (out / MANIFEST_NAME).unlink()  # as if the run died before writing the manifest
    victim = episode_paths(out)[0]
    victim.unlink()
    report = convert_corpus(RLDSReader(str(builder), image_size=16), out, progress=False)
    assert report.written == 1 and report.existing == 3 and victim.is_file()


def test_a_bad_record_is_skipped_and_the_rest_of_its_shard_converted(tmp_path):
    """A NaN action (refused by Episode.validate) or a corrupt zlib tensor is one bad record:
    the records after it are converted, and reruns skip what was written and report it again."""
    builder = make_bridge(tmp_path / "oxe", episodes=6, steps=4)  # shard 0 holds records 0, 2, 4
    shard = sorted(builder.glob("*.tfrecord-*"))[0]
    records = [data for _, data in tfr.iter_records(shard)]
    nan_action = tfr.parse_example(records[0])
    nan_action["steps/action/world_vector"] = nan_action["steps/action/world_vector"].copy()
    nan_action["steps/action/world_vector"][0] = np.nan
    bad_zlib = tfr.parse_example(records[1])
    bad_zlib["steps/observation/state"][1] = b"not zlib data"
    tfr.write_records(shard, [tfr.make_example(nan_action), tfr.make_example(bad_zlib), records[2]])
    reader = RLDSReader(str(builder), image_size=16, action_keys=("world_vector", "steps/observation/state"))
    out = tmp_path / "eps"

    report = convert_corpus(reader, out, progress=False)
    assert not report.failed_sources and report.written == 4  # 3 of the other shard + record 2
    assert len(report.bad_records) == 2
    assert f"{shard.name} record 0: 'action' or 'reward' holds NaN" in report.bad_records[0]
    assert f"{shard.name} record 1: " in report.bad_records[1] and "corrupt zlib" in report.bad_records[1]
    assert (out / f"{shard.name.replace('.', '_')}-00002.npz").is_file()
    again = convert_corpus(reader, out, progress=False)  # finished: resumed from the manifest
    assert again.resumed == 2 and again.written == 0 and again.bad_records == report.bad_records
    (out / MANIFEST_NAME).unlink()  # as if the run died before writing it: the episodes are skipped
    rerun = convert_corpus(reader, out, progress=False)
    assert not rerun.failed_sources and rerun.written == 0 and rerun.existing == 4
    assert rerun.bad_records == report.bad_records


def test_rlds_settings_compare_resolved_keys(tmp_path):
    """Short keys ('image', 'world_vector') and the full keys they select give the same
    episodes: converting again, with either, or over a manifest holding short keys, is accepted."""
    builder = make_bridge(tmp_path / "oxe")
    out = tmp_path / "eps"
    short = RLDSReader(str(builder), image_key="image", action_keys=("world_vector",), image_size=16)
    assert short.settings()["image_key"] == "steps/observation/image"
    assert short.settings()["action_keys"] == ["steps/action/world_vector"]
    assert convert_corpus(short, out, progress=False).written == 3
    assert convert_corpus(short, out, progress=False).resumed == 2  # the same reader again
    full = RLDSReader(str(builder), image_key="steps/observation/image",
                      action_keys=("steps/action/world_vector",), image_size=16)
    assert convert_corpus(full, out, progress=False).resumed == 2
    manifest = json.loads((out / MANIFEST_NAME).read_text())  # as written before keys were resolved
    manifest["reader"].update(image_key="image", action_keys=["world_vector"])
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert convert_corpus(full, out, progress=False).resumed == 2
    with pytest.raises(ConversionError, match="action_keys"):  # other keys are still refused
        convert_corpus(RLDSReader(str(builder), action_keys=("rotation_delta",), image_size=16), out,
                       progress=False)


def test_rlds_reward_and_terminal_keys_are_resolved_or_refused(tmp_path, capsys):
    """Short names find the features, a key the dataset lacks fails before any work (it used to
    give all-zero rewards / no terminals silently), and the resolved keys are the settings."""
    builder = make_fractal(tmp_path / "oxe")
    short = RLDSReader(str(builder), image_size=16, reward_key="reward", terminal_key="is_terminal",
                       success_reward=1.0)
    settings = short.settings()
    assert settings["reward_key"] == "steps/reward" and settings["terminal_key"] == "steps/is_terminal"
    out = tmp_path / "eps"
    assert convert_corpus(short, out, progress=False).written == 4
    ep = load_episode(episode_paths(out)[0])
    assert ep.reward.tolist() == [0, 0, 0, 1] and ep.terminal.tolist() == [False, False, False, True]
    assert ep.success.tolist() == [False, False, False, True]
    for option in ("reward_key", "terminal_key"):
        with pytest.raises(KeyError, match=f"{option} feature 'steps/nope' is not in features.json.*steps/reward"):
            convert_corpus(RLDSReader(str(builder), **{option: "steps/nope"}), tmp_path / option, progress=False)
        assert not (tmp_path / option / MANIFEST_NAME).exists()  # refused before anything was written
    with pytest.raises(ValueError, match="reward_key 'steps/observation/image' is not a per-step number"):
        RLDSReader(str(builder), reward_key="observation/image").settings()
    cli = load_cli()
    assert cli(["rlds", str(builder), "--out", str(tmp_path / "cli"), "--reward-key", "rewards"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: reward_key feature 'rewards'") and "steps/reward" in err
    assert len(err.strip().splitlines()) == 1
    none = RLDSReader(str(builder), image_size=16, reward_key="none", terminal_key="none")
    assert none.settings()["reward_key"] == "none"
    episode = none.episode(tfr.parse_example(fractal_record(0, 5)))
    assert not episode.reward.any() and not episode.terminal.any()


def test_rlds_manifest_reward_keys_from_before_resolution(tmp_path):
    """A manifest written before the keys were resolved: its full keys resume; a key that is not
    a feature key gave zeros then, so it reads as 'none' (resumes with 'none', refused with the
    key that now finds the rewards)."""
    builder = make_fractal(tmp_path / "oxe")
    out = tmp_path / "eps"
    assert convert_corpus(RLDSReader(str(builder), image_size=16), out, progress=False).written == 4
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["reader"]["reward_key"] == "steps/reward"
    assert convert_corpus(RLDSReader(str(builder), image_size=16, reward_key="reward"), out,
                          progress=False).resumed == 2
    manifest["reader"]["reward_key"] = "reward"  # an old run: the short name was ignored (zeros)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ConversionError, match="reward_key: 'none' -> 'steps/reward'"):
        convert_corpus(RLDSReader(str(builder), image_size=16, reward_key="reward"), out, progress=False)
    assert convert_corpus(RLDSReader(str(builder), image_size=16, reward_key="none"), out,
                          progress=False).resumed == 2


# ----- BAIR -----
def bair_record(traj, frames=5):
    feats = {}
    for t in range(frames):
        for cam, level in (("main", 50), ("aux1", 100)):
            img = np.full((64, 64, 3), level + t, np.uint8)
            img[0, 0] = traj
            feats[f"{t}/image_{cam}/encoded"] = img.tobytes()  # raw RGB bytes, as in the release
        feats[f"{t}/action"] = np.array([t, -t, traj, 0.5], np.float32)
        feats[f"{t}/endeffector_pos"] = np.array([0.1, 0.2, t], np.float32)
    return tfr.make_example(feats)


def test_bair_reader(tmp_path):
    split = tmp_path / "softmotion30_44k" / "train"
    tfr.write_records(split / "traj_0_to_255.tfrecords", [bair_record(0), bair_record(1)])
    tfr.write_records(split / "traj_256_to_511.tfrecords",
                      [bair_record(2), tfr.make_example({"0/action": np.zeros(4, np.float32)})])
    (split / "traj_512_to_767.tfrecords").mkdir()  # not a file: that source fails as a whole
    out = tmp_path / "bair"
    report = convert_corpus(BairReader(str(tmp_path / "softmotion30_44k")), out, progress=False)
    assert report.written == 3 and len(report.bad_records) == 1
    assert "traj_256_to_511.tfrecords record 1" in report.bad_records[0]
    assert len(report.failed_sources) == 1 and "traj_512_to_767" in report.failed_sources[0]
    again = convert_corpus(BairReader(str(tmp_path / "softmotion30_44k")), out, progress=False)
    assert again.resumed == 2 and len(again.failed_sources) == 1  # failed sources are retried
    ep = load_episode(episode_paths(out)[1], image_size=64, action_dim=4)
    assert ep.obs.shape == (5, 3, 64, 64) and len(ep) == 4
    assert ep.obs[3, 0, 0, 0] == 1 and ep.obs[3, 1, 5, 5] == 103  # traj id, aux1 level + t
    np.testing.assert_array_equal(ep.action[:, 0], [0, 1, 2, 3])
    assert not ep.reward.any() and not ep.success.any()
    main = BairReader(str(split), camera="main", image_size=32)
    episode = main.episode(tfr.parse_example(bair_record(0)))
    assert episode.obs.shape == (5, 3, 32, 32) and episode.obs[2, 1, 10, 10] == 52


def test_bair_resumes_with_or_without_checksum_verification(tmp_path):
    """verify_crc does not change the episodes: a rerun with --no-verify-crc resumes, also over a
    manifest written when verify_crc was still part of BAIR's settings."""
    split = tmp_path / "softmotion30_44k" / "train"
    tfr.write_records(split / "traj_0_to_1.tfrecords", [bair_record(0), bair_record(1)])
    out = tmp_path / "bair"
    assert convert_corpus(BairReader(str(split)), out, progress=False).written == 2
    assert convert_corpus(BairReader(str(split), verify_crc=False), out, progress=False).resumed == 1
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert "verify_crc" not in manifest["reader"]
    manifest["reader"]["verify_crc"] = True  # as written by an older version
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert convert_corpus(BairReader(str(split), verify_crc=False), out, progress=False).resumed == 1
    assert load_cli()(["bair", str(split), "--out", str(out), "--no-verify-crc", "--no-progress"]) == 0
    with pytest.raises(ConversionError, match="camera"):  # what changes the episodes is still guarded
        convert_corpus(BairReader(str(split), camera="main"), out, progress=False)


# ----- videos -----
def test_video_folder_action_free(tmp_path):
    import imageio.v3 as iio

    videos = tmp_path / "ssv2"
    frames = np.zeros((12, 48, 64, 3), np.uint8)
    frames[..., 1] = (np.arange(12) * 20)[:, None, None]  # green level = frame index * 20
    (videos / "sub").mkdir(parents=True)
    iio.imwrite(videos / "sub" / "101.mp4", frames, fps=12, plugin="FFMPEG", codec="libx264",
                quality=10)
    (videos / "202.webm").write_bytes(b"\x1a\x45\xdf\xa3 this is not a video")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([{"id": "101", "template": "Pushing [something] left"},
                                  {"id": "202", "template": "Holding [something]"}]))
    out = tmp_path / "eps"
    reader = VideoFolderReader(str(videos), image_size=32, frame_step=2, labels=str(labels))
    report = convert_corpus(reader, out, progress=False)
    assert report.written == 1 and len(report.bad_records) == 1 and "202.webm" in report.bad_records[0]
    ep = load_episode(out / f"{episode_name(Path('sub/101.mp4'))}.npz", image_size=32)
    assert ep.obs.shape == (6, 3, 32, 32) and ep.action.shape == (5, 0) and ep.action_dim == 0
    green = ep.obs[:, 1, 16, 16].astype(int)
    assert np.all(np.abs(green - np.arange(0, 12, 2) * 20) <= 8)  # every 2nd frame, in order
    assert ep.meta["task"] == "Pushing [something] left" and ep.meta["fps"] == 6.0
    assert ep.meta["file"] == "sub/101.mp4"


def test_video_labels_select_the_videos_and_classes_filter_them(tmp_path, capsys, caplog):
    """Something-Something keeps all splits in one folder: a labels file converts only the ids it
    lists (the train split), and a classes allow-list keeps only those classes."""
    import imageio.v3 as iio

    videos = tmp_path / "20bn"
    videos.mkdir()
    for vid in ("1", "2", "3"):  # 2 is not in the labels: another split
        iio.imwrite(videos / f"{vid}.mp4", np.full((3, 16, 16, 3), 40 * int(vid), np.uint8), fps=5,
                    plugin="FFMPEG", codec="mpeg4")
    labels = tmp_path / "train.json"
    labels.write_text(json.dumps([
        {"id": "1", "label": "pushing a cup left", "template": "Pushing [something] left"},
        {"id": "3", "label": "holding a pen", "template": "Holding [something]"},
        {"id": "99", "label": "a video not in this folder", "template": "Holding [something]"}]))
    out = tmp_path / "eps"
    reader = VideoFolderReader(str(videos), image_size=16, labels=str(labels))
    report = convert_corpus(reader, out, progress=False)
    assert report.written == 2 and report.sources == 2
    assert sorted(load_episode(p).meta["file"] for p in episode_paths(out)) == ["1.mp4", "3.mp4"]
    assert "2 of the 3 videos" in report.summary() and "listed in" in report.summary()
    assert reader.settings()["labels"] == str(labels) and reader.settings()["classes"] is None
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    del manifest["reader"]["selection"]  # converted before labels selected: every video is there
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ConversionError, match="selection"):
        convert_corpus(reader, out, progress=False)

    classes = tmp_path / "classes.txt"
    classes.write_text("# my subset\npushing something LEFT\n\nNo such class\n")
    cli = load_cli()
    args = ["videos", str(videos), "--image-size", "16", "--labels", str(labels), "--no-progress"]
    with caplog.at_level("WARNING"):
        assert cli(args + ["--out", str(tmp_path / "subset"), "--classes", str(classes)]) == 0
    printed = capsys.readouterr().out
    assert "1 of them are of the 2 classes" in printed and "No such class" in caplog.text
    assert [load_episode(p).meta["task"] for p in episode_paths(tmp_path / "subset")] == ["pushing a cup left"]
    settings = json.loads((tmp_path / "subset" / MANIFEST_NAME).read_text())["reader"]
    assert settings["classes"] == str(classes) and settings["labels"] == str(labels)

    with pytest.raises(ValueError, match="needs a labels file"):
        VideoFolderReader(str(videos), classes=str(classes))
    classes.write_text("Dropping [something]\n")
    with pytest.raises(ValueError, match="no class of .*classes.txt is a class"):
        VideoFolderReader(str(videos), labels=str(labels), classes=str(classes)).sources()
    labels.write_text(json.dumps([{"id": "7", "label": "x"}]))
    with pytest.raises(FileNotFoundError, match="none of the 3 videos"):
        VideoFolderReader(str(videos), labels=str(labels)).sources()
    labels.write_text("{not json")
    assert cli(args + ["--out", str(tmp_path / "bad")]) == 2
    assert "is not a JSON list" in capsys.readouterr().err
    # a folder converted without labels (manifest from before the allow-list) still resumes
    plain = VideoFolderReader(str(videos), image_size=16)
    assert convert_corpus(plain, tmp_path / "all", progress=False).written == 3
    manifest = json.loads((tmp_path / "all" / MANIFEST_NAME).read_text())
    del manifest["reader"]["classes"]
    (tmp_path / "all" / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert convert_corpus(plain, tmp_path / "all", progress=False).resumed == 3


def test_video_labels_are_read_once_per_process_and_extensions_normalised(tmp_path):
    from worldmodel.corpora.video_folder import _read_labels

    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([{"id": "7", "label": "pushing a cup"}]))
    _read_labels.cache_clear()
    for _ in range(3):  # a parallel conversion hands every source a fresh copy of the reader
        assert VideoFolderReader(str(tmp_path), labels=str(labels))._label("7") == "pushing a cup"
    assert _read_labels.cache_info().misses == 1
    labels.write_text(json.dumps([{"id": "7", "label": "pushing a mug"}, {"id": "8", "label": "x"}]))
    assert VideoFolderReader(str(tmp_path), labels=str(labels))._label("7") == "pushing a mug"
    reader = VideoFolderReader(str(tmp_path), extensions=tuple("mp4, .WEBM,".split(",")))
    assert reader.extensions == (".mp4", ".webm")


def test_video_episode_names_are_unique_and_stable(tmp_path, monkeypatch):
    """clip.mp4 / clip.avi and a/b.mp4 / a__b.mp4 used to share an episode name (the second was
    skipped as already converted): each video now gets its own, the same on every run."""
    import imageio.v3 as iio

    from worldmodel.corpora import video_folder

    videos = tmp_path / "videos"
    (videos / "a").mkdir(parents=True)
    levels = {"a/b.mp4": 40, "a__b.mp4": 80, "clip.mp4": 120, "clip.avi": 160}
    for relative, level in levels.items():
        iio.imwrite(videos / relative, np.full((3, 16, 16, 3), level, np.uint8), fps=5, plugin="FFMPEG",
                    codec="mpeg4")
    out = tmp_path / "eps"
    report = convert_corpus(VideoFolderReader(str(videos), image_size=16), out, progress=False)
    assert report.written == 4 and not report.bad_records
    for relative, level in levels.items():
        name = episode_name(Path(relative))
        assert name == episode_name(Path(relative)) and name.startswith(relative.replace("/", "__").replace(".", "_"))
        ep = load_episode(out / f"{name}.npz")
        assert ep.meta["file"] == relative and abs(int(ep.obs[0].mean()) - level) <= 8
    (out / MANIFEST_NAME).unlink()
    rerun = convert_corpus(VideoFolderReader(str(videos), image_size=16), out, progress=False)
    assert rerun.written == 0 and rerun.existing == 4
    # names that still clash are refused before anything is converted (here: without the hash)
    monkeypatch.setattr(video_folder, "NAME_HASH_CHARS", 0)
    with pytest.raises(ValueError, match="same episode file"):
        VideoFolderReader(str(videos)).sources()


# ----- mixes -----
def write_folder(folder: Path, action_dim: int, level: int, episodes=3, steps=12):
    for i in range(episodes):
        obs = np.full((steps + 1, 3, 8, 8), level, np.uint8)
        obs[:, 0, 0, 0] = np.arange(steps + 1)  # frame index, to check the frame step
        save_episode(folder / f"ep{i}.npz", Episode(
            obs=obs, action=np.ones((steps, action_dim), np.float32),
            reward=np.ones(steps, np.float32), success=np.zeros(steps, bool)))


def test_mix_samples_datasets_at_their_weights(tmp_path):
    for name, dim, level in (("a", 4, 10), ("b", 7, 20), ("c", 0, 30)):
        write_folder(tmp_path / name, dim, level)
    cfg = OmegaConf.create({"root": str(tmp_path), "image_size": 8, "action_free": True,
                            "datasets": {"a": {"path": "a", "weight": 6, "frame_step": 1},
                                         "b": {"path": "b", "weight": 3, "frame_step": 2},
                                         "c": {"path": "c", "weight": 1, "frame_step": 3}}})
    dataset = load_mix(cfg, segment_length=4, seed=0)
    rng = np.random.default_rng(0)
    draws = 6000
    counts = np.zeros(3)
    cache = OrderedDict()
    for _ in range(draws):
        obs, action, reward, folder = dataset.sample(rng, cache)
        counts[folder] += 1
        step = int(obs[1, 0, 0, 0]) - int(obs[0, 0, 0, 0])
        assert step == (1, 2, 3)[folder] and action.shape == (3, 0)
        assert reward.tolist() == [float(step)] * 3  # rewards summed over the skipped steps
    # binomial sd at p=0.6 and n=6000 is 0.0063: 0.03 is > 4.5 sd (and the seed is fixed)
    np.testing.assert_allclose(counts / draws, [0.6, 0.3, 0.1], atol=0.03)
    # with actions the action sizes (A x frame_step) differ: refused with a clear message
    with pytest.raises(ValueError, match="action sizes"):
        load_mix(OmegaConf.merge(cfg, {"action_free": False}), segment_length=4)
    assert [frame_step_for(hz) for hz in (3, 5, 10, 15, 1)] == [1, 2, 3, 5, 1]
    # one folder under two names would keep only the last weight: refused
    twice = OmegaConf.merge(cfg, {"datasets": {"a_again": {"path": str(tmp_path / "a"), "weight": 2}}})
    with pytest.raises(ValueError, match="'a' and 'a_again' of the mix are the same folder"):
        load_mix(twice, segment_length=4)


def test_shipped_mix_configs(tmp_path):
    demos = OmegaConf.load(REPO / "cfgs" / "data" / "metaworld_demos.yaml")
    dataset = load_mix(demos, segment_length=5, root=REPO / "demonstrations" / "metaworld")
    obs, action, reward, folder = dataset.sample(np.random.default_rng(0))
    assert obs.shape == (5, 3, 64, 64) and action.shape == (4, 4) and 0 <= folder < 6
    for path in sorted((REPO / "cfgs" / "data").glob("*.yaml")):
        cfg = OmegaConf.load(path)
        assert cfg.datasets and all(float(d.weight) > 0 for d in cfg.datasets.values()), path.name
        if path.name != "metaworld_demos.yaml":  # corpora not downloaded here: a clear error
            with pytest.raises(FileNotFoundError, match="convert_dataset.py"):
                load_mix(cfg, segment_length=4, root=tmp_path)


def test_resize_modes():
    frame = np.zeros((20, 40, 3), np.uint8)
    frame[:, :10] = 255  # a white band on the left
    assert resize_frame(frame, 20, "center_crop").max() == 0  # the crop keeps columns 10..29
    padded = resize_frame(frame, 20, "pad")
    assert padded[0].max() == 0 and padded[10, 0].min() > 200  # black top border, band kept
    assert resize_frame(frame, 20, "stretch")[:, 0].min() > 200
    with pytest.raises(ValueError, match="resize mode"):
        resize_frame(frame, 20, "zoom")


def test_scaled_jpeg_decoding_matches_full_decoding():
    gradient = np.zeros((256, 320, 3), np.uint8)
    gradient[..., 0] = np.linspace(0, 255, 320, dtype=np.uint8)[None]
    gradient[..., 1] = np.linspace(0, 255, 256, dtype=np.uint8)[:, None]
    data = encode(gradient, "jpeg")
    fast = decode_image(data, min_side=64)
    assert fast.shape == (64, 80, 3)  # decoded at 1/4 scale, short side still 64
    full = resize_frame(decode_image(data), 64)
    assert np.abs(resize_frame(fast, 64).astype(int) - full).max() <= 4
    with pytest.raises(ValueError, match="undecodable image"):
        decode_image(b"\xff\xd8 broken")


# ----- files written by the real TensorFlow library (tests/fixtures/corpora/make_tf_fixtures.py) -----
TF_FIXTURES = REPO / "tests" / "fixtures" / "corpora"


def test_rlds_shard_written_by_tensorflow(tmp_path):
    """A tiny RT-1-like dataset whose shard TensorFlow wrote (tf.io.TFRecordWriter + tf.train.Example)."""
    reader = RLDSReader(str(TF_FIXTURES / "tf_rt1_like" / "0.1.0"), image_size=8, resize="stretch",
                        action_keys=("steps/action/world_vector", "steps/action/rotation_delta",
                                     "steps/action/gripper_closedness_action"), success_reward=1.0)
    report = convert_corpus(reader, tmp_path / "out", progress=False)
    assert report.written == 2 and not report.bad_records and not report.failed_sources
    episodes = [load_episode(p, image_size=8, action_dim=7) for p in episode_paths(tmp_path / "out")]
    for ep_index, ep in enumerate(episodes):
        assert ep.obs.shape == (4, 3, 8, 8) and len(ep) == 3  # 4 steps -> 4 frames, 3 transitions
        np.testing.assert_array_equal(ep.obs[:, 0, 0, 0], [0, 20, 40, 60])  # red level = 20 * step
        assert (ep.obs[:, 1] == 100 * ep_index).all()  # green level = 100 * episode
        for t in range(3):
            np.testing.assert_allclose(ep.action[t], [ep_index + 0.1 * t] * 3 + [-t] * 3 + [0.5 * t], rtol=1e-6)
        assert ep.reward[-1] == 1.0 and ep.success[-1] and ep.terminal[-1] and not ep.success[:-1].any()
        assert [k for k, *_ in ep.meta["action_layout"]] == [
            "steps/action/world_vector", "steps/action/rotation_delta", "steps/action/gripper_closedness_action"]


def test_bair_shard_written_by_tensorflow(tmp_path):
    reader = BairReader(str(TF_FIXTURES / "tf_bair" / "softmotion30_44k"), image_size=64)
    report = convert_corpus(reader, tmp_path / "bair", progress=False)
    assert report.written == 2 and not report.bad_records
    for record, path in enumerate(episode_paths(tmp_path / "bair")):
        ep = load_episode(path, image_size=64, action_dim=4)
        assert ep.obs.shape == (3, 3, 64, 64) and len(ep) == 2
        np.testing.assert_array_equal(ep.obs[:, 0, 0, 0], [0, 50, 100])  # aux1 camera: red = 50 * t
        assert (ep.obs[:, 1] == 80 * record).all()
        np.testing.assert_array_equal(ep.obs[0, 2, :, 0], np.arange(64) * 3)  # rows not flipped
        np.testing.assert_allclose(ep.action, [[record, 0, 0, 0.5], [record, 1, -1, 0.5]])
