"""Open X-Embodiment / RLDS datasets, read from their TFDS shards without TensorFlow.

On disk (as downloaded, e.g. ``gsutil cp -r gs://gresearch/robotics/<name>/<version>``), a
TFDS builder folder holds ``features.json`` (the feature tree), ``dataset_info.json`` and
shards ``<name>-<split>.tfrecord-NNNNN-of-MMMMM``. Each record is one episode serialized by
TFDS as a ``tf.train.Example`` whose keys are the feature tree flattened with ``/``: the RLDS
``steps`` (a ``tfds.features.Dataset``) become ``steps/observation/image``,
``steps/action/world_vector``, ``steps/reward``, ``steps/is_terminal``... holding the values of
all N steps one after the other:

    Image                  bytes list, one encoded JPEG/PNG per step
    Tensor (encoding none) float list (floats) or int64 list (ints and bools), N*prod(shape)
                           values in row-major order
    Tensor (bytes / zlib)  bytes list, one raw (or zlib-compressed) little-endian array per step
    Text                   bytes list, one UTF-8 string per step

Step alignment. RLDS step t holds o_t, the action a_t taken there and the reward r_t that
followed it; the last step holds the final observation. An episode of N steps becomes N frames
and T = N-1 transitions: action[t] = a_t and reward[t] = r_t for t < N-1; the last step's
reward (datasets such as RT-1 put the success reward there) is added to the last transition;
terminal[t] = is_terminal of step t+1; success[t] = reward[t] >= ``success_reward`` when that
is set (False otherwise: most corpora do not label success).

Actions. ``action_keys`` picks the action features (full keys, or names under
``steps/action``) and concatenates them, flattened, into float32 [T, A] (bools -> 0/1); the
layout ``[[key, start, stop], ...]`` is stored in the episode meta. ``auto``: ``steps/action``
when it is one tensor, else every numeric entry under it except ``terminate_episode``-style
flags, in features.json order. ``none``: action-free episodes (A = 0).

Rewards and terminals. ``reward_key`` / ``terminal_key`` name per-step tensor features (full
keys or names under ``steps``, resolved like the image key); a key the dataset does not have is
refused before any work starts, with the per-step features it does have. ``none``: zero rewards /
no terminal steps.
"""
from __future__ import annotations

import contextlib
import json
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from worldmodel.corpora.frames import decode_image, resize_frame, to_chw
from worldmodel.corpora.tfrecord import iter_example_episodes
from worldmodel.episodes import Episode

STEPS = "steps"
FEATURES_FILE, INFO_FILE = "features.json", "dataset_info.json"
AUTO, NONE = "auto", "none"
EXCLUDED_ACTION_WORDS = ("terminate",)  # episode-control flags, not motor commands
INSTRUCTION_KEYS = ("steps/observation/natural_language_instruction", "steps/language_instruction",
                    "steps/observation/instruction")


@dataclass(frozen=True)
class RLDSPreset:
    image_key: str = "steps/observation/image"
    action_keys: tuple[str, ...] | str = AUTO
    fps: float | None = None  # control frequency, from iVideoGPT's per-dataset table


# Known layouts (keys checked against the datasets' features.json). The fps values are the
# control frequencies iVideoGPT uses to set each dataset's frame step in a mix.
PRESETS: dict[str, RLDSPreset] = {
    "fractal20220817_data": RLDSPreset(  # RT-1; image 256x320; base actions are always zero
        action_keys=("world_vector", "rotation_delta", "gripper_closedness_action",
                     "base_displacement_vector", "base_displacement_vertical_rotation"), fps=3),
    "bridge": RLDSPreset(  # OXE's BridgeData: image 480x640, dict actions
        action_keys=("world_vector", "rotation_delta", "open_gripper"), fps=5),
    "bridge_dataset": RLDSPreset(  # BridgeData V2 RLDS release: 4 cameras, action [7]
        image_key="steps/observation/image_0", action_keys=("steps/action",), fps=5),
    "kuka": RLDSPreset(fps=10),
    "taco_play": RLDSPreset(image_key="steps/observation/rgb_static", fps=15),
    "jaco_play": RLDSPreset(fps=10),
    "berkeley_cable_routing": RLDSPreset(fps=10),
    "roboturk": RLDSPreset(image_key="steps/observation/front_rgb", fps=10),
    "viola": RLDSPreset(image_key="steps/observation/agentview_rgb", fps=20),
    "toto": RLDSPreset(fps=30),
    "language_table": RLDSPreset(image_key="steps/observation/rgb", fps=10),
    "bc_z": RLDSPreset(fps=10),
    "robo_net": RLDSPreset(fps=1),
}


# ----- features.json -----
@dataclass(frozen=True)
class FeatureSpec:
    key: str  # flat key, e.g. steps/observation/image
    kind: str  # image | tensor | text | other
    shape: tuple[int | None, ...]
    dtype: str
    encoding: str = NONE  # tensors: none | bytes | zlib; images: jpeg | png
    per_step: bool = False  # inside the steps sequence


def _shape(node: dict[str, Any]) -> tuple[int | None, ...]:
    dims = node.get("shape", {}).get("dimensions", [])
    return tuple(None if int(d) < 0 else int(d) for d in dims)


def _walk(node: dict[str, Any], prefix: str, per_step: bool, out: dict[str, FeatureSpec]) -> None:
    cls = node.get("pythonClassName", "").rsplit(".", 1)[-1]
    if cls == "FeaturesDict":
        for name, child in node["featuresDict"]["features"].items():
            _walk(child, f"{prefix}/{name}" if prefix else name, per_step, out)
    elif cls in ("Dataset", "Sequence"):
        _walk(node["sequence"]["feature"], prefix, True, out)
    elif cls == "Image":
        image = node["image"]
        out[prefix] = FeatureSpec(prefix, "image", _shape(image), image.get("dtype", "uint8"),
                                  image.get("encodingFormat", "png"), per_step)
    elif cls in ("Tensor", "Scalar"):
        tensor = node["tensor"]
        out[prefix] = FeatureSpec(prefix, "tensor", _shape(tensor), tensor["dtype"],
                                  tensor.get("encoding", NONE), per_step)
    elif cls == "Text":
        out[prefix] = FeatureSpec(prefix, "text", (), "string", NONE, per_step)
    elif cls == "ClassLabel":
        out[prefix] = FeatureSpec(prefix, "tensor", (), "int64", NONE, per_step)
    else:
        out[prefix] = FeatureSpec(prefix, "other", (), node.get("pythonClassName", "?"), NONE, per_step)


def load_features(builder_dir: str | Path) -> dict[str, FeatureSpec]:
    """The flat feature specs of a TFDS builder folder, from its ``features.json``."""
    path = Path(builder_dir) / FEATURES_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: point at the TFDS builder folder that holds features.json and "
            "the .tfrecord shards (e.g. <root>/fractal20220817_data/0.1.0)")
    try:
        tree = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if "pythonClassName" not in tree:
        raise ValueError(f"{path} is not a TFDS features.json of the current format "
                         "(no 'pythonClassName' at the top)")
    specs: dict[str, FeatureSpec] = {}
    _walk(tree, "", False, specs)
    return specs


def _resolve(key: str, specs: dict[str, FeatureSpec], under: str) -> str:
    for candidate in (key, f"{under}/{key}", f"{STEPS}/{key}"):
        if candidate in specs:
            return candidate
    near = sorted(k for k in specs if specs[k].per_step)
    raise KeyError(f"feature '{key}' is not in features.json; per-step features are: {near}")


def action_keys_for(specs: dict[str, FeatureSpec], action_keys: tuple[str, ...] | str) -> list[str]:
    """The full keys of the action features to concatenate (see the module doc)."""
    under = f"{STEPS}/action"
    if action_keys == NONE:
        return []
    if action_keys != AUTO:
        keys = [action_keys] if isinstance(action_keys, str) else list(action_keys)
        return [_resolve(k, specs, under) for k in keys]
    if under in specs:
        return [under]
    keys = [k for k, s in specs.items() if k.startswith(under + "/") and s.kind == "tensor"
            and s.dtype != "string" and not any(w in k.rsplit("/", 1)[-1] for w in EXCLUDED_ACTION_WORDS)]
    if not keys:
        raise KeyError(f"no numeric action features under '{under}' in features.json; "
                       "give --action-keys, or 'none' for action-free episodes")
    return keys


def _step_tensor_key(key: str, specs: dict[str, FeatureSpec], option: str) -> str:
    """The full key of a per-step tensor feature (``reward_key``, ``terminal_key``), resolved
    like the image key; 'none' stays 'none'. Raises KeyError / ValueError naming the option."""
    if key == NONE:
        return NONE
    try:
        full = _resolve(key, specs, STEPS)
    except KeyError as e:
        raise KeyError(f"{option} {e.args[0]}; give one of them, or 'none'") from None
    spec = specs[full]
    if spec.kind != "tensor" or not spec.per_step or spec.dtype == "string":
        where = "" if spec.per_step else ", outside the steps"
        raise ValueError(f"{option} '{full}' is not a per-step number ({spec.kind} feature of dtype "
                         f"{spec.dtype}{where}); give another key, or 'none'")
    return full


# ----- decoding one episode -----
def _decompress(key: str, step: int, data: bytes) -> bytes:
    """One zlib-encoded step of a tensor feature (ValueError naming the feature when corrupt)."""
    try:
        return zlib.decompress(data)
    except zlib.error as e:
        raise ValueError(f"'{key}' step {step}: corrupt zlib data ({e})") from None


def _step_values(spec: FeatureSpec, raw: list[bytes] | np.ndarray, steps: int) -> np.ndarray:
    """The values of one per-step tensor feature -> array [N, *shape]."""
    dims = tuple(d for d in spec.shape if d is not None)
    if spec.encoding in ("bytes", "zlib"):
        if len(raw) != steps:
            raise ValueError(f"'{spec.key}' has {len(raw)} entries for {steps} steps")
        items = [_decompress(spec.key, step, b) if spec.encoding == "zlib" else b
                 for step, b in enumerate(raw)]
        return np.stack([np.frombuffer(b, dtype=spec.dtype).reshape(dims) for b in items])
    values = np.asarray(raw)
    if values.size != steps * int(np.prod(dims, dtype=np.int64)):
        raise ValueError(f"'{spec.key}' has {values.size} values, expected {steps} steps x "
                         f"shape {spec.shape}")
    return values.reshape(steps, *dims)


@dataclass
class RLDSReader:
    """Episodes from the shards of one RLDS dataset (see the module doc for the mapping).

    Args:
        builder_dir: the TFDS builder folder (features.json + shards).
        split: which shards (``<name>-<split>.tfrecord-*``).
        image_size: output frame size; resize: center_crop | pad | stretch (frames.py).
        image_key / action_keys / fps: None takes the preset of the dataset (by folder name
            or ``preset``), else the defaults (``steps/observation/image``, ``auto``).
        reward_key / terminal_key: per-step reward and terminal flag, full keys or names under
            ``steps`` ('reward'); 'none': zero rewards / no terminal steps. A key the dataset
            does not have is refused (KeyError listing the per-step features).
        success_reward: reward at or above which a transition counts as success.
        verify_crc: check the TFRecord checksums.
    """
    builder_dir: str
    split: str = "train"
    image_size: int = 64
    resize: str = "center_crop"
    image_key: str | None = None
    action_keys: tuple[str, ...] | str | None = None
    reward_key: str = "steps/reward"
    terminal_key: str = "steps/is_terminal"
    success_reward: float | None = None
    fps: float | None = None
    preset: str | None = None
    verify_crc: bool = True
    dataset: str = ""  # filled in: dataset_info.json's name, else the folder name
    _specs: dict[str, FeatureSpec] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.builder_dir = str(self.builder_dir)
        self.dataset = self.dataset or self._dataset_name()
        name = self.preset or self.dataset
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown RLDS preset '{self.preset}'; known: {sorted(PRESETS)}")
        preset = PRESETS.get(name, RLDSPreset())
        self.image_key = self.image_key or preset.image_key
        self.action_keys = self.action_keys if self.action_keys is not None else preset.action_keys
        if isinstance(self.action_keys, list):
            self.action_keys = tuple(self.action_keys)
        self.fps = self.fps if self.fps is not None else preset.fps

    def _dataset_name(self) -> str:
        """The dataset name: from dataset_info.json, else the folder above the version."""
        info = Path(self.builder_dir) / INFO_FILE
        if info.is_file():
            try:
                return json.loads(info.read_text())["name"]
            except (json.JSONDecodeError, KeyError):
                pass
        path = Path(self.builder_dir).resolve()
        return path.parent.name if path.name[:1].isdigit() else path.name

    @property
    def specs(self) -> dict[str, FeatureSpec]:
        if not self._specs:
            self._specs = load_features(self.builder_dir)
            image = _resolve(self.image_key, self._specs, f"{STEPS}/observation")
            if self._specs[image].kind != "image":
                raise ValueError(f"image key '{image}' is a {self._specs[image].kind} feature, "
                                 "not an image")
            self.image_key = image
            action_keys_for(self._specs, self.action_keys)  # fail early on a bad key
            self.reward_key = _step_tensor_key(self.reward_key, self._specs, "reward_key")
            self.terminal_key = _step_tensor_key(self.terminal_key, self._specs, "terminal_key")
        return self._specs

    def sources(self) -> list[Path]:
        self.specs  # noqa: B018 - validates the keys before any work starts
        shards = sorted(Path(self.builder_dir).glob(f"*-{self.split}.tfrecord-*"))
        shards = [s for s in shards if not s.name.startswith(".")]
        if not shards:
            raise FileNotFoundError(f"no '{self.split}' shards (*-{self.split}.tfrecord-*) in "
                                    f"{self.builder_dir}")
        return shards

    def settings(self) -> dict[str, Any]:
        """What changes the output, with the feature keys resolved (``normalise_settings``)."""
        self.specs  # noqa: B018 - resolves the reward and terminal keys before they are read
        keep = ("split", "image_size", "resize", "image_key", "action_keys", "reward_key",
                "terminal_key", "success_reward", "fps")
        return self.normalise_settings({"format": "rlds", "dataset": self.dataset,
                                        **{k: v for k, v in asdict(self).items() if k in keep}})

    def normalise_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """``settings`` (these or a manifest's) with the image and action keys as the full
        feature keys they select, so that 'image' and 'steps/observation/image', or 'auto' and
        the keys it picks, compare equal: they give the same episodes. Keys this dataset does
        not have are left as they are (the settings then differ).

        The reward and terminal keys are written resolved (``specs``). A manifest's key that is
        not a full feature key of this dataset is read as 'none': versions before keys were
        resolved took such a key (a short name like 'reward', or a feature the dataset lacks)
        as absent and wrote zero rewards / no terminals. So a folder converted that way resumes
        with 'none', and is refused, as it should be, with the key that now finds the rewards."""
        out = dict(settings)
        specs = self.specs
        for name in ("reward_key", "terminal_key"):
            if name in out and out[name] not in specs:
                out[name] = NONE
        with contextlib.suppress(KeyError, TypeError):
            out["image_key"] = _resolve(out["image_key"], specs, f"{STEPS}/observation")
        with contextlib.suppress(KeyError, TypeError):
            keys = out["action_keys"]
            out["action_keys"] = action_keys_for(specs, tuple(keys) if isinstance(keys, list) else keys)
        return out

    def iter_episodes(self, source: Path, exists: Callable[[str], bool],
                      errors: list[str]) -> Iterator[tuple[str, Episode]]:
        return iter_example_episodes(source, self.episode, exists, errors, self.verify_crc, digits=5)

    def episode(self, example: dict[str, list[bytes] | np.ndarray]) -> Episode:
        """One parsed episode record -> Episode (raises ValueError / KeyError when malformed)."""
        specs = self.specs
        if self.image_key not in example:
            raise KeyError(f"record has no '{self.image_key}'")
        images = example[self.image_key]
        steps = len(images)
        if steps < 2:
            raise ValueError(f"episode has {steps} step(s); at least 2 are needed for a transition")
        frames = [resize_frame(decode_image(data, min_side=self.image_size), self.image_size,
                               self.resize)  # one by one: long episodes at full size are large
                  for data in images]
        obs = to_chw(frames)  # [N, 3, S, S]

        layout, parts, start = [], [], 0  # layout: [key, start, stop] of each part
        for key in action_keys_for(specs, self.action_keys):
            if key not in example:
                raise KeyError(f"record has no action feature '{key}'")
            values = _step_values(specs[key], example[key], steps).reshape(steps, -1)  # [N, a]
            layout.append([key, start, start + values.shape[1]])
            start += values.shape[1]
            parts.append(values.astype(np.float32))
        action = (np.concatenate(parts, axis=1) if parts
                  else np.zeros((steps, 0), dtype=np.float32))[:-1]  # [T, A]

        for key in (self.reward_key, self.terminal_key):
            if key != NONE and key not in example:
                raise KeyError(f"record has no '{key}'")
        reward = np.zeros(steps, dtype=np.float32)
        if self.reward_key != NONE:
            reward = _step_values(specs[self.reward_key], example[self.reward_key], steps)
            reward = reward.reshape(steps).astype(np.float32)
        last_reward = reward[-1]  # no next observation: credited to the last transition
        reward = reward[:-1].copy()
        reward[-1] += last_reward
        terminal = np.zeros(steps - 1, dtype=bool)
        if self.terminal_key != NONE:
            flags = _step_values(specs[self.terminal_key], example[self.terminal_key], steps)
            terminal = flags.reshape(steps)[1:].astype(bool)
        success = (reward >= self.success_reward if self.success_reward is not None
                   else np.zeros(steps - 1, dtype=bool))

        meta: dict[str, Any] = {"source": "rlds", "dataset": self.dataset, "fps": self.fps,
                                "image_key": self.image_key, "action_layout": layout,
                                "original_size": list(specs[self.image_key].shape[:2]),
                                "resize": self.resize}
        for key in INSTRUCTION_KEYS:
            if isinstance(example.get(key), list) and example[key]:
                meta["task"] = example[key][0].decode("utf-8", errors="replace")
                break
        return Episode(obs=obs, action=np.ascontiguousarray(action), reward=reward,
                       success=success, terminal=terminal, meta=meta)
