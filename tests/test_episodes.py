"""Episode file format: round trip and one clear message per kind of corrupt file."""
import json
import logging
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from worldmodel.episodes import (Episode, EpisodeFormatError, iter_episodes, load_episode,
                                 load_episodes, save_episode)

STEPS, SIZE, ACTION_DIM = 6, 8, 4


def make_episode(steps: int = STEPS, size: int = SIZE, action_dim: int = ACTION_DIM,
                 seed: int = 0) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(
        obs=rng.integers(0, 256, (steps + 1, 3, size, size), dtype=np.uint8),
        action=rng.uniform(-1, 1, (steps, action_dim)).astype(np.float32),
        reward=rng.normal(size=steps).astype(np.float32),
        success=rng.random(steps) > 0.5,
        terminal=np.eye(1, steps, steps - 1, dtype=bool)[0],
        meta={"task": "plate_slide", "source": "test", "fps": 80},
    )


def write_raw(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def raw_arrays(ep: Episode) -> dict:
    return dict(obs=ep.obs, action=ep.action, reward=ep.reward, success=ep.success,
                terminal=ep.terminal, meta=np.array(json.dumps(ep.meta)))


def test_round_trip_is_exact(tmp_path):
    ep = make_episode()
    path = save_episode(tmp_path / "ep_000", ep)
    assert path.suffix == ".npz" and path.is_file()
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"
    back = load_episode(path, image_size=SIZE, action_dim=ACTION_DIM)
    for key in ("obs", "action", "reward", "success", "terminal"):
        np.testing.assert_array_equal(getattr(back, key), getattr(ep, key))
        assert getattr(back, key).dtype == getattr(ep, key).dtype
    assert back.meta == ep.meta
    assert len(back) == STEPS and back.image_size == SIZE and back.action_dim == ACTION_DIM


def test_missing_terminal_means_no_terminal(tmp_path):
    arrays = raw_arrays(make_episode())
    del arrays["terminal"]
    write_raw(tmp_path / "ep.npz", **arrays)
    assert not load_episode(tmp_path / "ep.npz").terminal.any()


def corrupt_cases(ep: Episode):
    arrays = raw_arrays(ep)
    yield "missing_key", {k: v for k, v in arrays.items() if k != "reward"}, "missing keys ['reward']"
    yield "obs_dtype", {**arrays, "obs": ep.obs.astype(np.float32)}, "'obs' has dtype float32"
    yield "action_dtype", {**arrays, "action": ep.action.astype(np.float64)}, "'action' has dtype float64"
    yield "success_dtype", {**arrays, "success": ep.success.astype(np.int64)}, "'success' has dtype int64"
    yield "obs_length", {**arrays, "obs": ep.obs[:-1]}, "'obs' has 6 frames but 'action' has 6 steps"
    yield "reward_length", {**arrays, "reward": ep.reward[:-2]}, "'reward' has shape (4,), expected (6,)"
    yield "obs_layout", {**arrays, "obs": ep.obs.transpose(0, 2, 3, 1).copy()}, "expected [T+1, 3, H, H]"
    yield "nan_action", {**arrays, "action": np.full_like(ep.action, np.nan)}, "NaN or inf"
    yield "bad_meta", {**arrays, "meta": np.array("{not json")}, "'meta' is not valid JSON"
    yield "meta_list", {**arrays, "meta": np.array("[1, 2]")}, "'meta' must be a JSON object (a dict), got list"
    yield "meta_number", {**arrays, "meta": np.array("3")}, "'meta' must be a JSON object (a dict), got int"


@pytest.mark.parametrize("case", [c[0] for c in corrupt_cases(make_episode())])
def test_each_corrupt_file_names_file_and_fault(tmp_path, case):
    _, arrays, expected = next(c for c in corrupt_cases(make_episode()) if c[0] == case)
    path = tmp_path / f"{case}.npz"
    write_raw(path, **arrays)
    with pytest.raises(EpisodeFormatError) as err:
        load_episode(path)
    assert str(path) in str(err.value) and expected in str(err.value)
    assert err.value.path == str(path)


def test_run_mismatch_messages(tmp_path):
    path = save_episode(tmp_path / "ep.npz", make_episode())
    with pytest.raises(EpisodeFormatError, match=r"frames are 8x8 but the run uses 64x64"):
        load_episode(path, image_size=64)
    with pytest.raises(EpisodeFormatError, match=r"actions have 4 dims but the run's env has 7"):
        load_episode(path, action_dim=7)


def test_truncated_bytes(tmp_path):
    path = save_episode(tmp_path / "ep.npz", make_episode())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(EpisodeFormatError, match="unreadable or truncated") as err:
        load_episode(path)
    assert str(path) in str(err.value)


def test_not_an_npz(tmp_path):
    path = tmp_path / "ep.npz"
    path.write_text("this is a text file, not an episode")
    with pytest.raises(EpisodeFormatError, match="unreadable or truncated"):
        load_episode(path)
    with zipfile.ZipFile(tmp_path / "zip.npz", "w") as z:  # a zip, but no arrays in it
        z.writestr("readme.txt", "hello")
    with pytest.raises(EpisodeFormatError, match="missing keys"):
        load_episode(tmp_path / "zip.npz")
    with pytest.raises(EpisodeFormatError, match="no such file"):
        load_episode(tmp_path / "absent.npz")


def test_plain_npy_array_under_npz_name_is_a_format_error(tmp_path, caplog):
    """np.load returns a bare ndarray for an np.save file: refused by name, and skipped with skip_bad."""
    save_episode(tmp_path / "a_good.npz", make_episode())
    with open(tmp_path / "b_array.npz", "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(EpisodeFormatError, match="not an .npz archive") as err:
        load_episode(tmp_path / "b_array.npz")
    assert "b_array.npz" in str(err.value)
    with caplog.at_level(logging.WARNING):
        assert len(load_episodes(tmp_path, skip_bad=True)) == 1
    assert "b_array.npz" in caplog.text


def test_saving_an_invalid_episode_is_refused(tmp_path):
    ep = make_episode()
    ep.reward = ep.reward.astype(np.float64)
    with pytest.raises(EpisodeFormatError, match="'reward' has dtype float64"):
        save_episode(tmp_path / "ep.npz", ep)
    assert not list(tmp_path.iterdir()), "nothing may be written for a refused episode"


def test_one_bad_file_among_many(tmp_path, caplog):
    for i in range(4):
        save_episode(tmp_path / f"ep_{i:03d}.npz", make_episode(seed=i))
    bad = tmp_path / "ep_002.npz"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(EpisodeFormatError, match="ep_002"):
        load_episodes(tmp_path)
    with caplog.at_level(logging.WARNING, logger="worldmodel.episodes"):
        loaded = list(iter_episodes(tmp_path, skip_bad=True))
    assert [p.name for p, _ in loaded] == ["ep_000.npz", "ep_001.npz", "ep_003.npz"]
    reports = [r.getMessage() for r in caplog.records]
    assert len(reports) == 1 and "ep_002.npz" in reports[0]


def break_deflate_stream(path: Path, member: str, keep: int) -> None:
    """Corrupt one compressed member in place, as bit rot would: its deflate stream decodes
    the member's first ``keep`` bytes, then meets an invalid block (zlib.error on read)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
        plain = archive.read(member)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    packer = zlib.compressobj(wbits=-15)  # raw deflate, as in a zip member
    # byte-aligned after a full flush; 0x07 = last block, block type 3 (reserved: invalid)
    prefix = packer.compress(plain[:keep]) + packer.flush(zlib.Z_FULL_FLUSH) + b"\x07"
    assert info.compress_type == zipfile.ZIP_DEFLATED and len(prefix) < info.compress_size
    raw[start:start + len(prefix)] = prefix
    path.write_bytes(bytes(raw))


def compressible_episode(steps: int = 40, size: int = 32) -> Episode:
    """Frames that deflate well (few grey levels), so a member is a long deflate stream."""
    ep = make_episode(steps, size)
    ep.obs = (ep.obs // 64 * 64).astype(np.uint8)
    return ep


@pytest.mark.parametrize("keep", [0, 10_000])  # the array header itself / only the data is corrupt
def test_corrupt_compressed_member_is_a_format_error(tmp_path, keep, caplog):
    for i in range(3):
        save_episode(tmp_path / f"ep_{i}.npz", compressible_episode())
    bad = tmp_path / "ep_1.npz"
    break_deflate_stream(bad, "obs.npy", keep)
    with pytest.raises(EpisodeFormatError, match="unreadable") as err:
        load_episode(bad)
    assert err.value.path == str(bad) and "decompressing" in err.value.fault
    with caplog.at_level(logging.WARNING, logger="worldmodel.episodes"):
        loaded = [p.name for p, _ in iter_episodes(tmp_path, skip_bad=True)]
    assert loaded == ["ep_0.npz", "ep_2.npz"] and "ep_1.npz" in caplog.text


def test_failed_write_leaves_no_temp_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = save_episode(tmp_path / "ep.npz", make_episode(seed=1))
    before = path.read_bytes()

    def disk_full(f, **arrays):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_episode(path, make_episode(seed=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep.npz"], "temporary file left behind"
    assert path.read_bytes() == before, "a failed write must not touch the existing file"

    monkeypatch.setattr(np, "savez_compressed", lambda f, **a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        save_episode(tmp_path / "other.npz", make_episode())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep.npz"]


def set_compression_method(path: Path, member: str, method: int) -> None:
    """Overwrite ``member``'s compression method in the zip central directory (what zipfile
    trusts), as a flipped byte there would: an unknown method is NotImplementedError in zipfile."""
    raw = bytearray(path.read_bytes())
    at = raw.find(b"PK\x01\x02")
    while at >= 0:
        name_len = struct.unpack_from("<H", raw, at + 28)[0]
        if raw[at + 46:at + 46 + name_len] == member.encode():
            struct.pack_into("<H", raw, at + 10, method)
            path.write_bytes(bytes(raw))
            return
        at = raw.find(b"PK\x01\x02", at + 1)
    raise AssertionError(f"{member} not in {path}")


def rewrite_header(path: Path, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` in an uncompressed member's array header, keeping every offset:
    ``new`` eats the header's space padding."""
    raw = path.read_bytes()
    padded = old + b" " * (len(new) - len(old))
    assert raw.count(padded) == 1
    path.write_bytes(raw.replace(padded, new))


UNKNOWN_ZIP_METHOD = 99  # no zip compression method has this number
# obs.npy must span more than zipfile's first read (4096 bytes): else its CRC check fails first
LONG_STEPS = 20
SHAPE_END = f"{SIZE}, {SIZE}), }}".encode()  # the end of obs.npy's shape in its array header
CORRUPTIONS = {  # what each raised out of load_episode before it was treated as a corrupt file
    "unknown compression method": (True, lambda p: set_compression_method(p, "obs.npy", UNKNOWN_ZIP_METHOD)),
    "header numpy cannot tokenize": (False, lambda p: rewrite_header(p, SHAPE_END, SHAPE_END.replace(b")", b"a"))),
    # 7.7e15 bytes: more than any 64-bit address space maps, so numpy's allocation fails everywhere
    "header claiming petabytes": (False, lambda p: rewrite_header(
        p, f"({LONG_STEPS + 1}, 3, ".encode() + SHAPE_END, b"(9999999999999, 3, " + SHAPE_END)),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_rarer_corruptions_are_format_errors_and_skipped(tmp_path, case, caplog):
    compress, corrupt = CORRUPTIONS[case]
    for i in range(3):
        save_episode(tmp_path / f"ep_{i}.npz", make_episode(LONG_STEPS, seed=i), compress=compress)
    bad = tmp_path / "ep_1.npz"
    corrupt(bad)
    with pytest.raises(EpisodeFormatError) as err:
        load_episode(bad)
    assert err.value.path == str(bad)
    with caplog.at_level(logging.WARNING, logger="worldmodel.episodes"):
        loaded = [p.name for p, _ in iter_episodes(tmp_path, skip_bad=True)]
    assert loaded == ["ep_0.npz", "ep_2.npz"] and "ep_1.npz" in caplog.text
