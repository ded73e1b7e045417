"""Pretrain a world model on folders of episodes (iVideoGPT: tokenizer then transformer;
Vid2World: diffusion backbone then reward head). The output's ``model/`` is what
``mbrl/train_mbpo.py world_model.pretrained=<out>/model`` loads.

    python scripts/pretrain.py world_model=ivideogpt data=metaworld_demos
    python scripts/pretrain.py world_model=ivideogpt data=oxe_small preset=reference steps.tokenizer=200000
    accelerate launch --multi_gpu --num_processes 8 scripts/pretrain.py world_model=ivideogpt data=oxe_small
    python scripts/pretrain.py data=metaworld_demos init_from=pretrained/oxe_small/ivideogpt freeze=[context_codebook]

Re-running a command resumes its ``out`` directory. Without ``preset=``, the reference sizes
are used on a CUDA machine and the tiny CPU sizes otherwise (printed). Keys: cfgs/pretrain.yaml.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # runnable as a script from a source checkout
    sys.path.insert(0, str(REPO_ROOT))

import logging  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from mbrl.train_mbpo import override_value  # noqa: E402  (the same argv reading as training)
from mbrl.utils import insert_override  # noqa: E402

CONFIG_DIR = str(REPO_ROOT / "cfgs")
PRESETS = ("reference", "cpu")



def choose_preset(args: list[str]) -> list[str]:
    """``preset=<name>`` (or the automatic choice) -> the world_model_preset group choice
    (``cfgs/world_model_preset/<preset>_<world_model>.yaml``)."""
    if any(a.startswith("world_model_preset@world_model=") for a in args):
        return args
    preset = override_value(args, "preset")
    args = [a for a in args if not a.startswith("preset=")]
    if preset is None:
        import torch

        preset = "reference" if torch.cuda.is_available() else "cpu"
        if int(os.environ.get("RANK", "0")) == 0:
            why = "CUDA is available" if preset == "reference" else "no CUDA device: the tiny CPU sizes"
            print(f"[pretrain] preset={preset} ({why}; override with preset=reference|cpu)", file=sys.stderr,
                  flush=True)  # stderr: stdout stays Hydra's (--cfg job)
    if preset not in PRESETS:
        raise SystemExit(f"[pretrain] preset={preset}: choose one of {PRESETS}")
    model = override_value(args, "world_model") or "ivideogpt"
    return insert_override(args, f"world_model_preset@world_model={preset}_{model}")


@hydra.main(config_path=CONFIG_DIR, config_name="pretrain", version_base=None)
def main(cfg: DictConfig) -> None:
    from mbrl.utils import ConfigValueError, user_errors
    from worldmodel.episodes import EpisodeFormatError
    from worldmodel.interface import WorldModelConfigError
    from worldmodel.training import Pretrainer

    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpoint file otherwise
    with user_errors("pretrain", (FileNotFoundError, WorldModelConfigError, EpisodeFormatError, ConfigValueError)):
        Pretrainer(cfg).run()


if __name__ == "__main__":
    sys.argv = [sys.argv[0]] + choose_preset(sys.argv[1:])
    main()
