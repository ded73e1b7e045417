"""A folder of video files (e.g. Something-Something v2's .webm) -> action-free episodes.

Each video becomes one episode: frames decoded with imageio's FFMPEG plugin (the ffmpeg binary
ships with imageio-ffmpeg), every ``frame_step``-th frame kept, resized to ``image_size``,
capped at ``max_frames``. Videos carry no actions: ``action`` is float32 [T, 0], rewards zero,
success false.

Selection. ``labels`` optionally names a JSON list of {"id", "label" and/or "template"} (the
format of Something-Something v2's label files, e.g. ``labels/train.json``): then only the videos
whose id (file name without extension) it lists are converted, and the label (else the template)
goes into ``meta["task"]``. Something-Something v2 ships the train, validation and test videos in
one folder, so ``labels=train.json`` converts the train split only, as iVideoGPT trains on.
``classes`` optionally names a text file of classes, one a line (blank lines and lines starting
with '#' ignored), and keeps only the listed videos whose class is one of them; a video's class is
its entry's template, else its label, compared ignoring case, brackets and repeated spaces
("Pushing [something] from left to right" = "pushing something from left to right"). The
selection is reported in the conversion summary (``notes``).

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
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from worldmodel.corpora.frames import resize_frame, to_chw
from worldmodel.episodes import Episode

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")
FFMPEG_PLUGIN = "FFMPEG"
NAME_HASH_CHARS = 8  # hex digits of sha1(relative path) in episode names: 2**32 values per name
NAMING = "path-ext-hash"  # the episode naming scheme, recorded in the settings (see episode_name)
SELECTION = "ids-listed-in-labels"  # recorded with a labels file: it selects the videos (see settings)


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
def _read_labels(path: str, size: int, mtime_ns: int) -> dict[str, tuple[str, str]]:
    """Video id -> (caption, class) of a labels JSON (Something-Something's ``[{"id", "label",
    "template"}]``; caption: the label, else the template; class: the template, else the label),
    read once per process: a parallel conversion hands each worker a fresh copy of the reader,
    and parsing the 30 MB train.json per video would cost more than decoding the video. ``size``
    and ``mtime_ns`` only key the cache, so an edited file is read again."""
    try:
        entries = json.loads(Path(path).read_text())
        if not isinstance(entries, list):
            raise TypeError(f"the top level is a {type(entries).__name__}")
        return {str(e["id"]): (e.get("label") or e.get("template") or "",
                               e.get("template") or e.get("label") or "") for e in entries}
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"labels file {path} is not a JSON list of {{\"id\", \"label\" | \"template\"}} "
                         f"entries ({type(e).__name__}: {e}); give Something-Something's "
                         "labels/train.json or a file of that form") from None


def class_key(name: str) -> str:
    """A class name as compared with the ``classes`` allow-list: lower case, without the
    template's brackets, spaces collapsed."""
    return " ".join(re.sub(r"[\[\]]", "", name).lower().split())


def read_classes(path: str | Path) -> list[str]:
    """The classes of an allow-list file: one a line; blank lines and '#' comments skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classes file {path} does not exist (expected a text file, one "
                                "class or template a line)")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    classes = [line for line in lines if line and not line.startswith("#")]
    if not classes:
        raise ValueError(f"classes file {path} lists no class (expected one class or template a line)")
    return classes


@dataclass
class VideoFolderReader:
    """Action-free episodes from every video file under ``root`` (recursively).

    Args:
        frame_step: keep every k-th frame (subsample high frame rates).
        max_frames: at most this many kept frames per episode (None: all).
        min_frames: videos with fewer kept frames are reported and skipped.
        resize: center_crop | pad | stretch (see frames.py).
        labels: a labels JSON: only the videos it lists are converted, their caption in
            ``meta["task"]`` (see the module doc).
        classes: a text file of allowed classes, one a line: only the listed videos of those
            classes are converted (needs ``labels``).
    """
    root: str
    image_size: int = 64
    frame_step: int = 1
    max_frames: int | None = None
    min_frames: int = 2
    resize: str = "center_crop"
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS
    labels: str | None = None
    classes: str | None = None

    def __post_init__(self) -> None:
        self.root = str(self.root)
        self.notes: list[str] = []  # what sources() selected, for the conversion summary
        if self.classes is not None and self.labels is None:
            raise ValueError("a classes allow-list needs a labels file (--labels): the class of a "
                             "video is read from its entry there")
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
        videos = self._select(videos)
        self._check_unique_names(videos)
        return videos

    def _labels(self) -> dict[str, tuple[str, str]]:
        path = Path(self.labels)
        if not path.is_file():
            raise FileNotFoundError(f"labels file {path} does not exist (expected a JSON list of "
                                    "{id, label | template}, e.g. Something-Something's labels/train.json)")
        stat = path.stat()
        return _read_labels(str(path.resolve()), stat.st_size, stat.st_mtime_ns)

    def _select(self, videos: list[Path]) -> list[Path]:
        """The videos the labels file lists (and, with ``classes``, of an allowed class); the
        counts go to ``notes``."""
        if self.labels is None:
            return videos
        entries = self._labels()
        listed = [v for v in videos if v.stem in entries]
        note = (f"{len(listed)} of the {len(videos)} videos under {self.root} are listed in "
                f"{self.labels} and converted (the others are left out)")
        if self.classes is not None:
            allowed = {class_key(c): c for c in read_classes(self.classes)}
            known = {class_key(cls) for _, cls in entries.values()}
            unknown = [c for key, c in allowed.items() if key not in known]
            if len(unknown) == len(allowed):
                raise ValueError(f"no class of {self.classes} is a class (template) of {self.labels}, "
                                 f"e.g. '{unknown[0]}'; list one class or template a line, as in the "
                                 "labels' \"template\" field")
            listed = [v for v in listed if class_key(entries[v.stem][1]) in allowed]
            note += (f"; {len(listed)} of them are of the {len(allowed)} classes in {self.classes} "
                     "and converted")
            if unknown:
                warning = (f"{len(unknown)} classes of {self.classes} match no entry of {self.labels}: "
                           f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
                log.warning("%s", warning)
                note += f"; {warning}"
        if not listed:
            raise FileNotFoundError(f"none of the {len(videos)} videos under {self.root} is selected: "
                                    f"{note}. Check that --labels (and --classes) belong to this folder "
                                    "(ids are the video file names without extension)")
        self.notes = [note]
        return listed

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
        """What changes the output. With a labels file, ``selection`` records that it selects the
        videos: folders converted before it did (every video, the labels only captions) lack it
        and are refused on resume, as they hold videos of the other splits."""
        settings = {"format": "videos", "naming": NAMING,
                    **{k: v for k, v in asdict(self).items() if k != "root"}}
        if self.labels is not None:
            settings["selection"] = SELECTION
        return settings

    def normalise_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """A manifest's settings with ``classes`` (absent before the allow-list existed) as None,
        so folders converted without labels resume."""
        return {"classes": None, **settings}

    def _label(self, video_id: str) -> str | None:
        if self.labels is None:
            return None
        entry = self._labels().get(video_id)
        return entry[0] if entry else None

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
