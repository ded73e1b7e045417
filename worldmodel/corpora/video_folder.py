"""A folder of video files (e.g. Something-Something v2's .webm) -> action-free episodes.

Each video becomes one episode: frames decoded with imageio's FFMPEG plugin (the ffmpeg binary
ships with imageio-ffmpeg), every ``frame_step``-th frame kept, resized to ``image_size``,
capped at ``max_frames``. Videos carry no actions: ``action`` is float32 [T, 0], rewards zero,
success false. ``labels`` optionally names a JSON list of {"id", "label" or "template"} (the
format of Something-Something v2's label files) whose text goes into ``meta["task"]``.

Episode names: the relative path with its extension plus a short hash of it
(``sub/101.mp4`` -> ``sub__101_mp4-<hash>.npz``, see ``episode_name``), unique and the same on
every run; videos whose names would still clash are refused before anything is converted. A
folder converted with the older naming (``sub__101.npz``) is refused on resume (its manifest has
no ``naming``): convert into a new folder.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from worldmodel.corpora.frames import resize_frame, to_chw
from worldmodel.episodes import Episode

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")
FFMPEG_PLUGIN = "FFMPEG"
NAME_HASH_CHARS = 8  # hex digits of sha1(relative path) in episode names: 2**32 values per name
NAMING = "path-ext-hash"  # the episode naming scheme, recorded in the settings (see episode_name)


def episode_name(relative: Path) -> str:
    """The episode name of a video at ``relative`` (a path under the root, with its extension):
    readable and unique. Separators become '__' and dots '_' (``sub/101.mp4`` ->
    ``sub__101_mp4-<hash>``); the hash of the exact relative path keeps apart what that mapping
    merges (``a/b.mp4`` and ``a__b.mp4``), and the extension keeps ``clip.mp4`` and ``clip.avi``
    apart. The same file always gets the same name, so reruns skip it."""
    readable = "__".join(relative.parts).replace(".", "_")
    digest = hashlib.sha1(relative.as_posix().encode()).hexdigest()[:NAME_HASH_CHARS]
    return f"{readable}-{digest}"


def read_video(path: str | Path, frame_step: int = 1, max_frames: int | None = None,
               transform: Callable[[np.ndarray], np.ndarray] | None = None
               ) -> tuple[list[np.ndarray], float | None]:
    """Frames uint8 [H, W, 3] (every ``frame_step``-th, at most ``max_frames``, each passed
    through ``transform`` as it is decoded) and the fps."""
    import imageio.v3 as iio  # imported here: only video conversion needs it

    frames: list[np.ndarray] = []
    for i, frame in enumerate(iio.imiter(path, plugin=FFMPEG_PLUGIN)):
        if i % frame_step == 0:
            frames.append(frame if transform is None else transform(frame))
            if max_frames is not None and len(frames) >= max_frames:
                break
    try:
        fps = float(iio.immeta(path, plugin=FFMPEG_PLUGIN).get("fps") or 0) or None
    except Exception:  # metadata is a nicety; the frames are what matters
        fps = None
    return frames, fps


@functools.lru_cache(maxsize=2)
def _read_labels(path: str, size: int, mtime_ns: int) -> dict[str, str]:
    """Video id -> caption of a labels JSON (Something-Something's ``[{"id", "label"}]``), read
    once per process: a parallel conversion hands each worker a fresh copy of the reader, and
    parsing the 30 MB train.json per video would cost more than decoding the video. ``size`` and
    ``mtime_ns`` only key the cache, so an edited file is read again."""
    entries = json.loads(Path(path).read_text())
    return {str(e["id"]): e.get("label") or e.get("template", "") for e in entries}


@dataclass
class VideoFolderReader:
    """Action-free episodes from every video file under ``root`` (recursively).

    Args:
        frame_step: keep every k-th frame (subsample high frame rates).
        max_frames: at most this many kept frames per episode (None: all).
        min_frames: videos with fewer kept frames are reported and skipped.
        resize: center_crop | pad | stretch (see frames.py).
    """
    root: str
    image_size: int = 64
    frame_step: int = 1
    max_frames: int | None = None
    min_frames: int = 2
    resize: str = "center_crop"
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS
    labels: str | None = None

    def __post_init__(self) -> None:
        self.root = str(self.root)
        names = [e.strip().lower() for e in self.extensions if e.strip()]  # "mp4, webm" from a command line
        self.extensions = tuple(e if e.startswith(".") else f".{e}" for e in names)
        if self.frame_step < 1:
            raise ValueError(f"frame_step must be >= 1 (got {self.frame_step})")
        if self.min_frames < 2:
            raise ValueError(f"min_frames must be >= 2: an episode needs a transition (got {self.min_frames})")

    def sources(self) -> list[Path]:
        root = Path(self.root)
        if not root.is_dir():
            raise FileNotFoundError(f"video folder {root} does not exist")
        videos = sorted(p for p in root.rglob("*") if p.suffix.lower() in self.extensions
                        and p.is_file() and not p.name.startswith("."))
        if not videos:
            raise FileNotFoundError(f"no video files ({', '.join(self.extensions)}) under {root}")
        self._check_unique_names(videos)
        return videos

    def _check_unique_names(self, videos: list[Path]) -> None:
        """Refuse videos whose episode names clash (also ignoring case: one file on a
        case-insensitive disk), rather than skip the second one as already converted."""
        seen: dict[str, Path] = {}
        for video in videos:
            key = episode_name(video.relative_to(self.root)).lower()
            if key in seen:
                raise ValueError(f"videos {seen[key]} and {video} would be written to the same "
                                 "episode file; rename one of them")
            seen[key] = video

    def settings(self) -> dict[str, Any]:
        return {"format": "videos", "naming": NAMING,
                **{k: v for k, v in asdict(self).items() if k != "root"}}

    def _label(self, video_id: str) -> str | None:
        if self.labels is None:
            return None
        path = Path(self.labels)
        stat = path.stat()
        return _read_labels(str(path.resolve()), stat.st_size, stat.st_mtime_ns).get(video_id)

    def iter_episodes(self, source: Path, exists: Callable[[str], bool],
                      errors: list[str]) -> Iterator[tuple[str, Episode]]:
        relative = source.relative_to(self.root)
        name = episode_name(relative)
        if exists(name):
            return
        original: list[int] = []

        def shrink(frame: np.ndarray) -> np.ndarray:  # resize as decoded: long videos fit in memory
            original[:] = original or list(frame.shape[:2])
            return resize_frame(frame, self.image_size, self.resize)

        try:
            frames, fps = read_video(source, self.frame_step, self.max_frames, shrink)
        except Exception as e:  # ffmpeg reports corrupt files in several ways
            errors.append(f"{source}: unreadable video ({type(e).__name__}: {e})")
            return
        if len(frames) < self.min_frames:
            errors.append(f"{source}: {len(frames)} frames kept, fewer than min_frames={self.min_frames}")
            return
        obs = to_chw(frames)  # [N, 3, S, S]
        transitions = len(frames) - 1
        meta = {"source": "video", "file": relative.as_posix(),
                "fps": fps / self.frame_step if fps else None, "frame_step": self.frame_step,
                "original_size": original, "resize": self.resize}
        label = self._label(source.stem)
        if label:
            meta["task"] = label
        yield name, Episode(obs=obs, action=np.zeros((transitions, 0), dtype=np.float32),
                            reward=np.zeros(transitions, dtype=np.float32),
                            success=np.zeros(transitions, dtype=bool), meta=meta)
