"""Segment sampling: never crosses an episode end, honours frame_step and the mix weights,
collates into SegmentBatch, works with DataLoader workers."""
from collections import OrderedDict

import numpy as np
import pytest
import torch

from worldmodel.data import SegmentDataset, collate_segments, segment_loader
from worldmodel.episodes import Episode, EpisodeFormatError, save_episode
from worldmodel.interface import SegmentBatch

SIZE, ACTION_DIM = 8, 2


def encoded_episode(episode_id: int, steps: int, action_dim: int = ACTION_DIM) -> Episode:
    """Every frame / action / reward encodes (episode id, time index), so a sampled segment
    tells exactly where it came from."""
    t = np.arange(steps + 1)
    obs = np.zeros((steps + 1, 3, SIZE, SIZE), dtype=np.uint8)
    obs[:, 0] = episode_id  # channel 0: episode id
    obs[:, 1] = t[:, None, None]  # channel 1: time index
    action = np.stack([np.full(steps, episode_id), np.arange(steps)], 1)[:, :action_dim]
    return Episode(obs=obs, action=action.astype(np.float32),
                   reward=np.arange(steps, dtype=np.float32), success=np.zeros(steps, bool),
                   meta={"id": episode_id})


def write_folder(folder, ids_and_lengths, action_dim=ACTION_DIM):
    for episode_id, steps in ids_and_lengths:
        save_episode(folder / f"ep_{episode_id:03d}.npz", encoded_episode(episode_id, steps, action_dim))
    return str(folder)


def test_segments_stay_inside_one_episode_with_frame_step(tmp_path):
    lengths = {1: 5, 2: 9, 3: 20, 4: 3}  # episode 4 is too short for a segment: never drawn
    folder = write_folder(tmp_path / "a", lengths.items())
    seg_len, k = 3, 2
    data = SegmentDataset([folder], segment_length=seg_len, frame_step=k, seed=0)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(400):
        obs, action, reward, f = data.sample(rng)
        assert obs.shape == (seg_len, 3, SIZE, SIZE) and obs.dtype == torch.uint8
        assert action.shape == (seg_len - 1, k * ACTION_DIM) and reward.shape == (seg_len - 1,)
        ids, times = obs[:, 0, 0, 0].long(), obs[:, 1, 0, 0].long()
        assert (ids == ids[0]).all(), "segment mixes episodes"
        episode_id, start = int(ids[0]), int(times[0])
        assert episode_id != 4
        assert torch.equal(times, start + k * torch.arange(seg_len))
        assert times[-1] <= lengths[episode_id], "segment crosses the episode end"
        # actions: the k actions between kept frames, concatenated; rewards summed
        expected_t = start + torch.arange((seg_len - 1) * k).reshape(seg_len - 1, k)
        assert torch.equal(action[:, 1::2].long(), expected_t)
        assert torch.equal(action[:, 0::2].long(), torch.full_like(expected_t, episode_id))
        assert torch.equal(reward, expected_t.sum(1).float())
        seen.add((episode_id, start))
    # every possible segment start gets drawn (uniform within the folder)
    possible = {(e, s) for e, n in lengths.items() for s in range(n - (seg_len - 1) * k + 1)}
    assert seen == possible


def test_episodes_are_drawn_in_proportion_to_their_segments(tmp_path):
    """The documented sampling (data.py, mix.py): within a folder every segment is equally likely,
    so a 100-step episode is drawn 94 / 98 of the time next to a 10-step
    one with 8-frame segments (iVideoGPT's uniform episode draw would give 1/2)."""
    folder = write_folder(tmp_path / "a", [(1, 100), (2, 10)])
    data = SegmentDataset([folder], segment_length=8, seed=0)
    rng = np.random.default_rng(0)
    draws = [int(data.sample(rng)[0][0, 0, 0, 0]) for _ in range(2000)]
    share = draws.count(1) / len(draws)
    assert abs(share - 94 / 98) < 0.02, share


def test_mix_weights_are_honoured(tmp_path):
    a = write_folder(tmp_path / "a", [(1, 10), (2, 30)])
    b = write_folder(tmp_path / "b", [(3, 10)])
    data = SegmentDataset({a: 3.0, b: 1.0}, segment_length=4, seed=0)
    rng, cache = np.random.default_rng(123), OrderedDict()
    draws = 4000
    folders = np.array([data.sample(rng, cache)[3] for _ in range(draws)])
    share_a = (folders == 0).mean()
    # binomial std at p=0.75, n=4000 is 0.0068; the seed is fixed, the tolerance is ~6 std
    assert abs(share_a - 0.75) < 0.04, share_a
    # within folder a, episode 2 holds 27 of 34 segment starts
    rng = np.random.default_rng(7)
    ids = [int(data.sample(rng, cache)[0][0, 0, 0, 0]) for _ in range(draws)]
    ids_a = np.array([i for i in ids if i in (1, 2)])
    assert abs((ids_a == 2).mean() - 27 / 34) < 0.04


def test_zero_weight_folder_is_never_drawn(tmp_path):
    a = write_folder(tmp_path / "a", [(1, 10)])
    b = write_folder(tmp_path / "b", [(2, 10)])
    data = SegmentDataset({a: 1.0, b: 0.0}, segment_length=2)
    rng = np.random.default_rng(0)
    assert all(data.sample(rng)[3] == 0 for _ in range(200))


def test_dataloader_with_workers_gives_segment_batches(tmp_path):
    folder = write_folder(tmp_path / "a", [(1, 12), (2, 12)])
    data = SegmentDataset([folder], segment_length=4, image_size=SIZE, action_dim=ACTION_DIM, seed=3)
    loader = segment_loader(data, batch_size=5, num_workers=2)
    batches = [b for _, b in zip(range(3), loader)]
    for batch in batches:
        assert isinstance(batch, SegmentBatch)
        assert batch.obs.shape == (5, 4, 3, SIZE, SIZE) and batch.obs.dtype == torch.uint8
        assert batch.action.shape == (5, 3, ACTION_DIM) and batch.action.dtype == torch.float32
        assert batch.reward.shape == (5, 3)
    # two workers draw different streams; the same seed reproduces them
    again = [b for _, b in zip(range(3), segment_loader(data, batch_size=5, num_workers=2))]
    assert all(torch.equal(x.obs, y.obs) for x, y in zip(batches, again))
    assert not torch.equal(batches[0].obs, batches[1].obs)


def test_each_rank_of_a_distributed_run_draws_its_own_segments(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "a", [(1, 40), (2, 40)])
    data = SegmentDataset([folder], segment_length=2, image_size=SIZE, action_dim=ACTION_DIM, seed=3)

    def first_segments(rank: int) -> list[torch.Tensor]:
        monkeypatch.setenv("RANK", str(rank))
        stream = iter(data)
        return [next(stream)[0] for _ in range(8)]

    assert all(torch.equal(x, y) for x, y in zip(first_segments(0), first_segments(0)))
    assert not all(torch.equal(x, y) for x, y in zip(first_segments(0), first_segments(1)))


def test_action_free_corpus(tmp_path):
    folder = write_folder(tmp_path / "video", [(1, 6)], action_dim=0)
    data = SegmentDataset([folder], segment_length=3, frame_step=2)
    batch = collate_segments([data.sample(np.random.default_rng(0))[:3] for _ in range(2)])
    assert batch.action.shape == (2, 2, 0)


def test_clear_errors(tmp_path):
    folder = write_folder(tmp_path / "a", [(1, 4)])
    with pytest.raises(ValueError, match="no episode long enough"):
        SegmentDataset([folder], segment_length=10)
    with pytest.raises(EpisodeFormatError, match="but the run uses 64x64"):
        SegmentDataset([folder], segment_length=2, image_size=64)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SegmentDataset([str(tmp_path / "missing")], segment_length=2)
    b = write_folder(tmp_path / "b", [(2, 4)], action_dim=1)
    with pytest.raises(ValueError, match="action sizes"):
        SegmentDataset([folder, b], segment_length=2)


def test_bad_file_skipped_only_when_asked(tmp_path):
    folder = write_folder(tmp_path / "a", [(1, 8), (2, 8)])
    bad = tmp_path / "a" / "ep_002.npz"
    bad.write_bytes(bad.read_bytes()[:50])
    with pytest.raises(EpisodeFormatError, match="ep_002"):
        SegmentDataset([folder], segment_length=3)
    data = SegmentDataset([folder], segment_length=3, skip_bad=True)
    rng = np.random.default_rng(0)
    assert {int(data.sample(rng)[0][0, 0, 0, 0]) for _ in range(50)} == {1}


def test_segments_of_the_shipped_demos_match_their_episodes():
    from pathlib import Path

    from worldmodel.episodes import load_episode

    root = Path(__file__).resolve().parents[1] / "demonstrations/metaworld"
    folders = {str(root / "plate_slide"): 1.0, str(root / "hammer"): 1.0}
    data = SegmentDataset(folders, segment_length=12, image_size=64, action_dim=4, seed=0)
    obs, action, reward, f = data.sample(np.random.default_rng(0))
    assert obs.shape == (12, 3, 64, 64) and action.shape == (11, 4) and reward.shape == (11,)
    # the segment is a verbatim slice of one of that folder's episodes
    matches = []
    for path in sorted(Path(data.folders[f]).glob("*.npz")):
        ep = load_episode(path)
        for s in range(len(ep) - 10):
            if np.array_equal(ep.obs[s:s + 12], obs.numpy()):
                matches.append((path.name, s))
                np.testing.assert_array_equal(ep.action[s:s + 11], action.numpy())
                np.testing.assert_array_equal(ep.reward[s:s + 11], reward.numpy())
    assert len(matches) == 1


def test_corrupt_member_skipped_at_indexing_and_at_sampling(tmp_path):
    """Bit rot in a compressed member (zlib.error): in the array header it shows when the
    folder is indexed, deeper in the data only when the episode is loaded; skip_bad skips both."""
    from test_episodes import break_deflate_stream

    for keep, when in ((0, "indexing"), (10_000, "sampling")):
        folder = tmp_path / when
        for episode_id in (1, 2):
            episode = encoded_episode(episode_id, 100)
            episode.obs[:, 2] = np.arange(SIZE)[None, :, None] * 16  # enough data for a long stream
            save_episode(folder / f"ep_{episode_id:03d}.npz", episode)
        break_deflate_stream(folder / "ep_002.npz", "obs.npy", keep)
        with pytest.raises(EpisodeFormatError, match="ep_002.*unreadable"):
            data, rng = SegmentDataset([str(folder)], segment_length=3), np.random.default_rng(0)
            for _ in range(50):
                data.sample(rng)
        data = SegmentDataset([str(folder)], segment_length=3, skip_bad=True)
        assert len(data.entries[0]) == (1 if when == "indexing" else 2)
        rng = np.random.default_rng(0)
        assert {int(data.sample(rng)[0][0, 0, 0, 0]) for _ in range(50)} == {1}


def test_a_split_reads_only_the_headers_of_its_own_files(tmp_path):
    """The held-out split of a corpus indexes its few files, not every header of the corpus."""
    from worldmodel.training.data import SplitSegmentDataset

    folder = write_folder(tmp_path / "a", [(1, 6), (2, 6)])
    (tmp_path / "a" / "ep_999.npz").write_bytes(b"not an episode")  # outside the split
    kept = str(tmp_path / "a" / "ep_002.npz")
    data = SplitSegmentDataset([folder], segment_length=2, skip_bad=False, only={kept})
    assert [str(e.path) for e in data.entries[0]] == [kept]
    with pytest.raises(EpisodeFormatError):
        SplitSegmentDataset([folder], segment_length=2, skip_bad=False, only={kept, str(tmp_path / "a" / "ep_999.npz")})


@pytest.mark.parametrize("compress", [True, False])
def test_rarer_corruptions_skipped_with_skip_bad(tmp_path, compress):
    """An unknown zip compression method (zipfile: NotImplementedError) and an array header numpy
    cannot tokenize (tokenize.TokenError) are corrupt files like any other: skipped, not raised."""
    from test_episodes import LONG_STEPS, UNKNOWN_ZIP_METHOD, rewrite_header, set_compression_method

    folder = tmp_path / "a"
    for episode_id in (1, 2):
        save_episode(folder / f"ep_{episode_id:03d}.npz", encoded_episode(episode_id, LONG_STEPS),
                     compress=compress)
    bad = folder / "ep_002.npz"
    if compress:
        set_compression_method(bad, "obs.npy", UNKNOWN_ZIP_METHOD)
    else:
        end = f"{SIZE}, {SIZE}), }}".encode()
        rewrite_header(bad, end, end.replace(b")", b"a"))
    with pytest.raises(EpisodeFormatError, match="ep_002.*unreadable"):
        SegmentDataset([str(folder)], segment_length=3)
    data = SegmentDataset([str(folder)], segment_length=3, skip_bad=True)
    rng = np.random.default_rng(0)
    assert {int(data.sample(rng)[0][0, 0, 0, 0]) for _ in range(20)} == {1}


def test_fixed_batches_are_the_same_at_every_read_when_a_file_fails_only_on_load(tmp_path, caplog):
    """A deflate error deep in obs.npy shows only when the episode is loaded; finding it must not
    change which segment a key gives, or the fixed held-out batches (and the cached FVD features
    of their real videos) would differ between the first read and the next."""
    from test_episodes import break_deflate_stream

    from worldmodel.training.data import FixedBatches

    folder = tmp_path / "a"
    for episode_id in (1, 2, 3, 4):
        episode = encoded_episode(episode_id, 100)
        episode.obs[:, 2] = np.arange(SIZE)[None, :, None] * 16  # enough data for a long stream
        save_episode(folder / f"ep_{episode_id:03d}.npz", episode)
    break_deflate_stream(folder / "ep_002.npz", "obs.npy", keep=10_000)
    data = SegmentDataset([str(folder)], segment_length=3, skip_bad=True)
    assert len(data.entries[0]) == 4  # the headers are fine: only loading finds it
    batches = FixedBatches(data, seed=0, start=0, count=4, batch_size=8)
    with caplog.at_level("WARNING", logger="worldmodel.data"):
        first = [batches[j].obs for j in range(len(batches))]
    assert "ep_002.npz" in caplog.text  # found (and reported) during the first read
    second = [batches[j].obs for j in range(len(batches))]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert 2 not in {int(v) for b in first for v in b[:, 0, 0, 0, 0]}
    fresh = FixedBatches(SegmentDataset([str(folder)], segment_length=3, skip_bad=True), 0, 0, 4, 8)
    assert all(torch.equal(a, fresh[j].obs) for j, a in enumerate(first))  # and in a fresh worker


def test_an_unreadable_episode_holding_most_segments_never_stops_sampling(tmp_path):
    """Redraws of an episode already known to be bad are no new failures: a folder whose long
    episode is unreadable still gives its short one's segments, every time."""
    from test_episodes import break_deflate_stream

    folder = tmp_path / "a"
    for episode_id, steps in ((1, 2000), (2, 4)):
        episode = encoded_episode(episode_id, steps)
        episode.obs[:, 2] = np.arange(SIZE)[None, :, None] * 16  # enough data for a long stream
        save_episode(folder / f"ep_{episode_id:03d}.npz", episode)
    break_deflate_stream(folder / "ep_001.npz", "obs.npy", keep=10_000)
    data = SegmentDataset([str(folder)], segment_length=3, skip_bad=True)
    assert data.num_segments[0].tolist() == [1999, 3]  # the bad one holds 99.85% of the draws
    rng = np.random.default_rng(0)
    for _ in range(50):
        obs, *_ = data.sample(rng)
        assert int(obs[0, 0, 0, 0]) == 2  # the readable episode's frames
