"""Shared test set-up: headless rendering, few threads (CI has 2 cores), deterministic seeds."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HYDRA_FULL_ERROR", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

from worldmodel.host_memory import keep_freed_host_memory  # noqa: E402

torch.set_num_threads(1)  # CI has 2 cores: more threads than that only add contention
keep_freed_host_memory()  # as the training entry points do (cfgs/config.yaml keep_freed_memory)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
