"""BAIR robot pushing (the ``softmotion30_44k`` release) -> episodes.

The release (bair_robot_pushing_dataset_v0.tar) holds ``softmotion30_44k/{train,test}/
traj_<a>_to_<b>.tfrecords``; each record is one 30-frame video serialized as a protobuf whose
field 1 is a ``Features`` map (TFDS reads it as a ``SequenceExample`` context, iVideoGPT as an
``Example``: the bytes are the same) with, for each frame t:

    {t}/image_main/encoded    bytes    raw RGB, 64 x 64 x 3 uint8 (not JPEG/PNG)
    {t}/image_aux1/encoded    bytes    the second camera, same format
    {t}/action                float[4] the command sent after frame t
    {t}/endeffector_pos       float[3]

A record of N frames becomes N frames and T = N-1 transitions (the action after the last frame
leads nowhere and is dropped); rewards are zero and success false (BAIR has neither). The
default camera is ``aux1``, the one the video-prediction benchmarks (and iVideoGPT) use.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from worldmodel.corpora.frames import decode_image, resize_frame, to_chw
from worldmodel.corpora.tfrecord import iter_example_episodes
from worldmodel.episodes import Episode

BAIR_FRAME = (64, 64)  # the release's frame size (H, W)
BAIR_ACTION_DIM = 4
CAMERAS = ("aux1", "main")
_FRAME_KEY = re.compile(r"^(\d+)/action$")


def _natural_key(path: Path) -> list[Any]:
    """traj_256_to_511 sorts after traj_0_to_255 (numbers compared as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


@dataclass
class BairReader:
    """Episodes from BAIR ``.tfrecords`` files.

    Args:
        root: ``softmotion30_44k`` (holding train/ and test/), a split folder, or one file.
        split: train | test, used when ``root`` holds split folders.
        camera: aux1 | main.
        image_size: output frame size (64: the frames are kept as they are).
        verify_crc: check the TFRecord checksums (not part of the settings: see ``settings``).
    """
    root: str
    split: str = "train"
    camera: str = "aux1"
    image_size: int = 64
    verify_crc: bool = True

    def __post_init__(self) -> None:
        self.root = str(self.root)
        if self.camera not in CAMERAS:
            raise ValueError(f"BAIR camera '{self.camera}' is not one of {CAMERAS}")

    def sources(self) -> list[Path]:
        root = Path(self.root)
        if root.is_file():
            return [root]
        folder = root / self.split if (root / self.split).is_dir() else root
        files = sorted(folder.glob("*.tfrecords"), key=_natural_key)
        if not files:
            raise FileNotFoundError(f"no .tfrecords files in {folder} (expected the BAIR release's "
                                    "softmotion30_44k/<split>/traj_*_to_*.tfrecords)")
        return files

    def settings(self) -> dict[str, Any]:
        """What changes the output. ``verify_crc`` does not (it only decides whether damaged
        records are caught), so a conversion may be resumed with or without checksums."""
        return {"format": "bair", **{k: v for k, v in asdict(self).items() if k not in ("root", "verify_crc")}}

    def normalise_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """A manifest's settings without ``verify_crc``, which manifests written before it left
        the settings still hold: those conversions resume."""
        return {k: v for k, v in settings.items() if k != "verify_crc"}

    def iter_episodes(self, source: Path, exists: Callable[[str], bool],
                      errors: list[str]) -> Iterator[tuple[str, Episode]]:
        return iter_example_episodes(source, self.episode, exists, errors, self.verify_crc, digits=4)

    def episode(self, example: dict[str, list[bytes] | np.ndarray]) -> Episode:
        """One parsed record -> Episode (raises ValueError / KeyError when malformed)."""
        frames_in_record = sorted(int(m.group(1)) for k in example if (m := _FRAME_KEY.match(k)))
        steps = len(frames_in_record)
        if steps < 2 or frames_in_record != list(range(steps)):
            raise ValueError(f"record holds frames {frames_in_record[:5]}..., expected 0..N-1 "
                             "with N >= 2 (is this a BAIR softmotion file?)")
        frames, actions = [], []
        for t in range(steps):
            image_key = f"{t}/image_{self.camera}/encoded"
            if image_key not in example or not example[image_key]:
                raise KeyError(f"record has no '{image_key}'")
            frame = decode_image(example[image_key][0], raw_shape=BAIR_FRAME)
            frames.append(resize_frame(frame, self.image_size, "center_crop"))
            action = np.asarray(example[f"{t}/action"], dtype=np.float32)
            if action.shape != (BAIR_ACTION_DIM,):
                raise ValueError(f"'{t}/action' has {action.size} values, expected {BAIR_ACTION_DIM}")
            actions.append(action)
        transitions = steps - 1
        return Episode(obs=to_chw(frames), action=np.stack(actions[:transitions]),
                       reward=np.zeros(transitions, dtype=np.float32),
                       success=np.zeros(transitions, dtype=bool),
                       meta={"source": "bair_robot_pushing", "camera": self.camera,
                             "task": "bair/push"})
