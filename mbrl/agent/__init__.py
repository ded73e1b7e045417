"""The DrQ-v2 agent `DrQV2Agent` and its parts (networks, augmentation, schedules)."""
from mbrl.agent.augment import RandomShiftsAug
from mbrl.agent.drqv2 import DrQV2Agent
from mbrl.agent.networks import Actor, Critic, Encoder, TruncatedNormal
from mbrl.agent.schedule import Schedule, schedule

__all__ = ["DrQV2Agent", "Encoder", "Actor", "Critic", "TruncatedNormal", "RandomShiftsAug",
           "Schedule", "schedule"]
