"""Play a world model in the browser: each action you press is answered by the next imagined frame.

    python scripts/play.py world_model.pretrained=<dir> task=metaworld/plate_slide
    python scripts/play.py world_model.pretrained=<dir> task=metaworld/hammer port=8000 host=0.0.0.0
    python scripts/play.py world_model.pretrained=<dir> episodes=path/to/episodes/

then open http://127.0.0.1:7860. Overrides are Hydra's, composed from cfgs/play.yaml, which
includes the training config; of its keys the player reads task=, device and cpu_threads (as
mbrl/train_mbpo.py does), seed (the sampling seed new pages start with) and
world_model.pretrained= (loaded as saved, without train_mbpo.py's world_model.model.* run
settings). Start contexts come from the task's demonstration folder (mbrl.demos.demo_dir, where
collect_demos.py / convert_demos.py write; or ``episodes=``) and, when the simulator is
installed, from env resets that then run beside the world model as ground truth.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # runnable as a script from a source checkout
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("MUJOCO_GL", "egl")

CONFIG_DIR = str(REPO_ROOT / "cfgs")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def compose_config(overrides: list[str]):
    """(cfg, task key) from cfgs/play.yaml and Hydra overrides; a bad override exits with Hydra's message."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            cfg = compose("play", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise SystemExit(f"[play] bad arguments: {e}") from None
    return cfg, str(cfg.hydra.runtime.choices.task)


def main(argv: list[str]) -> None:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print((REPO_ROOT / "cfgs" / "play.yaml").read_text())
        return
    cfg, task_key = compose_config(argv)
    import uvicorn

    from mbrl.player.errors import PlayerError
    from mbrl.player.player import Player
    from mbrl.player.server import create_app

    try:
        player = Player.from_config(cfg, task_key)
    except PlayerError as e:
        raise SystemExit(f"[play] error: {e}") from None
    info = player.info()
    model = info["model"]
    print(f"[play] {model['type']} from {model['checkpoint']} on {model['device']} "
          f"({model['parameters'] / 1e6:.1f}M parameters, {model['action_dim']}-dim actions)")
    print(f"[play] task {task_key}: {len(info['episodes'])} start episodes in {info['episode_root']}; "
          f"env resets {'available' if info['env']['available'] else 'unavailable: ' + info['env']['reason']}")
    if player.address not in LOOPBACK:
        print(f"[play] warning: host={player.address} lets anyone who can reach this machine drive the model "
              f"and write files into out_dir={player.out_dir}; there is no authentication.")
    shown = f"[{player.address}]" if ":" in player.address else player.address
    url = f"http://{shown}:{player.port}"
    print(f"[play] open {url}  (Ctrl+C stops)")
    if cfg.open_browser:
        import webbrowser

        webbrowser.open(url)
    uvicorn.run(create_app(player), host=player.address, port=player.port, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
