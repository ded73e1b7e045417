"""Meta-World's own scripted expert policies (``metaworld.policies``), one per v3 task.

They act on the 39-dim state observation, which our env passes as ``info["state"]``; their
actions are already in [-1, 1]. With action repeat, the expert decides once per agent step and
the env repeats that action (measured success rates: demonstrations/README.md).
"""
from __future__ import annotations

import warnings

import numpy as np

from mbrl.envs.errors import MissingSimulatorError, UnknownTaskError

METAWORLD_VERSION_SUFFIX = "-v3"


def metaworld_env_name(task: str) -> str:
    """``plate_slide`` / ``plate-slide`` / ``plate-slide-v3`` -> ``plate-slide-v3``."""
    name = task.replace("_", "-")
    return name if name.endswith(METAWORLD_VERSION_SUFFIX) else name + METAWORLD_VERSION_SUFFIX


def expert_policy_classes() -> dict[str, type]:
    """Meta-World env name -> scripted policy class, for every v3 task Meta-World ships."""
    try:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
        from metaworld.policies import ENV_POLICY_MAP
    except ImportError as e:
        raise MissingSimulatorError("metaworld", e) from None
    missing = sorted(set(ALL_V3_ENVIRONMENTS) - set(ENV_POLICY_MAP))
    if missing:
        raise RuntimeError(f"this metaworld release has no scripted policy for {missing}; "
                           "install the pinned version (pip install -e '.[metaworld]').")
    return {name: ENV_POLICY_MAP[name] for name in ALL_V3_ENVIRONMENTS}


class MetaWorldExpert:
    """Callable ``state [39] -> action float32 [4]`` wrapping the task's scripted policy."""

    def __init__(self, task: str):
        classes = expert_policy_classes()
        name = metaworld_env_name(task)
        if name not in classes:
            raise UnknownTaskError("Meta-World task", name, classes)
        self.name = name
        self.policy = classes[name]()

    def __call__(self, state: np.ndarray) -> np.ndarray:
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (39,):
            raise ValueError(f"the Meta-World expert needs the 39-dim state (info['state']), "
                             f"got shape {state.shape}.")
        with warnings.catch_warnings():  # "Constant(s) may be too high": by design, we clip
            warnings.simplefilter("ignore", UserWarning)
            action = self.policy.get_action(state)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
