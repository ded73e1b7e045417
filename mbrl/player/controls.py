"""Keyboard layouts of the player: which key moves which action dimension, per suite.

Actions are in [-1, 1] for every suite (``mbrl.envs``). A *momentary* dimension (a motion) is
sent for the one step of a key press, at +-step size; a *sticky* dimension (a gripper) keeps the
value its keys set until changed, because the gripper must be held closed to keep an object.
Key names are JavaScript ``KeyboardEvent.key`` values, letters lower-case.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ActionDim:
    name: str
    plus_key: str | None  # key that sends +step (sticky: sets +1)
    minus_key: str | None  # key that sends -step (sticky: sets -1)
    sticky: bool = False
    help: str = ""


GRIPPER_CLOSE, GRIPPER_OPEN = " ", "Shift"
# Keys the page keeps for itself: z undo, r restart, Enter step with the sliders, f follow the demo.
RESERVED_KEYS = ("z", "r", "Enter", "f")
# Key pairs handed out in order to dimensions without a named layout (e.g. DMC joints).
GENERIC_KEYS = (("ArrowRight", "ArrowLeft"), ("ArrowUp", "ArrowDown"), ("w", "s"), ("d", "a"),
                ("e", "q"), ("l", "j"), ("i", "k"), ("o", "u"), ("m", "n"), ("p", ";"))

# End-effector delta pose + gripper (ManiSkill pd_ee_delta_pose, LIBERO OSC_POSE).
_EE_POSE = (
    ActionDim("dx", "ArrowRight", "ArrowLeft", help="end effector along x"),
    ActionDim("dy", "ArrowUp", "ArrowDown", help="end effector along y"),
    ActionDim("dz", "w", "s", help="end effector up / down"),
    ActionDim("droll", "l", "j", help="rotation about x"),
    ActionDim("dpitch", "i", "k", help="rotation about y"),
    ActionDim("dyaw", "o", "u", help="rotation about z"),
)

LAYOUTS: dict[str, tuple[ActionDim, ...]] = {
    # Meta-World: mocap position deltas in the world frame, then the gripper effort (+1 closes).
    "metaworld": (
        ActionDim("x", "ArrowRight", "ArrowLeft", help="hand along world x"),
        ActionDim("y", "ArrowUp", "ArrowDown", help="hand along world y (away from / towards the robot base)"),
        ActionDim("z", "w", "s", help="hand up / down"),
        ActionDim("gripper", GRIPPER_CLOSE, GRIPPER_OPEN, sticky=True, help="space closes, shift opens"),
    ),
    # ManiSkill 3 Panda: the gripper is open at +1 and closed at -1.
    "maniskill": _EE_POSE + (
        ActionDim("gripper", GRIPPER_OPEN, GRIPPER_CLOSE, sticky=True, help="space closes, shift opens"),),
    # LIBERO (robosuite OSC_POSE): the gripper closes at +1.
    "libero": _EE_POSE + (
        ActionDim("gripper", GRIPPER_CLOSE, GRIPPER_OPEN, sticky=True, help="space closes, shift opens"),),
}


def action_layout(suite: str, action_dim: int) -> list[ActionDim]:
    """The suite's named layout when it fits ``action_dim``; otherwise a0, a1, ... with the
    generic key pairs (dimensions past the last pair get a slider only)."""
    named = LAYOUTS.get(suite)
    if named is not None and len(named) == action_dim:
        return list(named)
    dims = []
    for i in range(action_dim):
        plus, minus = GENERIC_KEYS[i] if i < len(GENERIC_KEYS) else (None, None)
        dims.append(ActionDim(f"a{i}", plus, minus))
    return dims


def layout_json(dims: list[ActionDim]) -> list[dict]:
    return [asdict(d) for d in dims]
