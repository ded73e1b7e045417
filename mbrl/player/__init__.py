"""Interactive world-model player: drive a world model from the browser, one action at a time.

    python scripts/play.py world_model.pretrained=<dir> task=metaworld/plate_slide

``session.py`` holds the web-free logic (tensors in, tensors out), ``server.py`` the FastAPI
layer, ``static/`` the page. FastAPI and uvicorn are needed only here.
"""
from mbrl.player.errors import Conflict, NotFound, PlayerError
from mbrl.player.host import WorldModelHost
from mbrl.player.session import PlaySession, SessionManager, Step, psnr
from mbrl.player.sources import EpisodeCatalog

__all__ = ["Conflict", "EpisodeCatalog", "NotFound", "PlayerError", "PlaySession", "SessionManager", "Step",
           "WorldModelHost", "psnr"]
