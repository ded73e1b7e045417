"""The player's web layer: a FastAPI app over ``Player`` and a static page (plain JS, no build).

JSON in, JSON out; frames travel as PNG data URLs at the model's resolution and the page
upscales them (pixelated). Every error is ``{"error": message}`` with a 4xx status (5xx only for
a bug), and the server keeps serving. Endpoints (``sid``: the id ``POST /api/sessions`` returns):

    GET  /api/info                         task, model, controls, episodes, simulator
    POST /api/checkpoint   {pretrained}    switch the shared model (every session re-imagines)
    POST /api/sessions                     new session -> {"session": sid}
    GET  /api/sessions/{sid}               the whole trajectory
    POST /api/sessions/{sid}/start         {source: episode|env, episode, start, seed}
    POST /api/sessions/{sid}/step          {action: [A floats in -1..1]} -> the new step
    POST /api/sessions/{sid}/undo | restart | reimagine
    POST /api/sessions/{sid}/sampling      {settings: {temperature, top_k}, seed}
    POST /api/sessions/{sid}/save          -> files written (mp4, npz) and their URLs
    GET  /api/sessions/{sid}/files/{name}  a file of the last save
    POST /api/sessions/{sid}/close

Only the player's own page may drive it: a request whose Host header names another machine than
the one served (DNS rebinding) is refused, and so is a POST from a page of another origin (a
body-less POST needs no CORS preflight, so any site could otherwise create sessions and evict
the user's). Serving on 0.0.0.0 / :: accepts any Host, still only same-origin POSTs.
"""
from __future__ import annotations

import base64
import contextlib
import logging
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.middleware.trustedhost import TrustedHostMiddleware

from mbrl.player.errors import NotFound, PlayerError
from mbrl.player.player import Player
from mbrl.player.session import PlaySession, Step

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
ANY_ADDRESS = ("0.0.0.0", "::", "[::]")
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")


def allowed_hosts(address: str) -> list[str]:
    """Host header values to accept when serving on ``address`` (play.yaml's host): that address
    and the loopback names; any host when serving on every interface."""
    address = address.lower()
    if address in ANY_ADDRESS:
        return ["*"]
    if ":" in address and not address.startswith("["):  # an IPv6 literal: the Host header brackets it
        address = f"[{address}]"
    return sorted({address, *LOOPBACK_HOSTS})


# ----- request bodies -----
class StartBody(BaseModel):
    source: Literal["episode", "env"]
    episode: str | None = None
    start: int | None = None
    seed: int = 0


class StepBody(BaseModel):
    action: list[float]


class SamplingBody(BaseModel):
    settings: dict[str, Any] = {}  # typed against the model's own values by WorldModelHost.check_sampling
    seed: int | None = None


class CheckpointBody(BaseModel):
    pretrained: str


# ----- tensors -> JSON -----
def png_data_url(frame: torch.Tensor) -> str:
    """uint8 [3, H, W] -> a PNG data URL."""
    import imageio.v3 as iio

    data = iio.imwrite("<bytes>", np.ascontiguousarray(frame.permute(1, 2, 0).numpy()), extension=".png")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def step_png(step: Step, name: str) -> str | None:
    """``step.<name>`` (frame or real_frame) as a PNG data URL, encoded once per frame tensor: full
    views (undo, restart, reloads) would otherwise re-encode the whole trajectory every time."""
    frame = getattr(step, name)
    if frame is None:
        return None
    hit = step.encoded.get(name)
    if hit is None or hit[0] is not frame:  # not encoded yet, or the frame was replaced
        hit = step.encoded[name] = (frame, png_data_url(frame))
    return hit[1]


def step_json(step: Step, index: int) -> dict[str, Any]:
    return {"index": index, "action": step.action.tolist(), "frame": step_png(step, "frame"),
            "reward": step.reward, "anchored": step.anchored, "sampling": step.sampling,
            "real": step_png(step, "real_frame"),
            "real_reward": step.real_reward, "real_success": step.real_success, "psnr": step.psnr}


def _demo_action(s: PlaySession) -> list[float] | None:
    action = s.demo_action()
    return None if action is None else action.tolist()


def session_json(s: PlaySession) -> dict[str, Any]:
    start = None if s.start is None else {**s.start.__dict__, "describe": s.start.describe()}
    return {"session": s.sid, "revision": s.revision, "start": start,
            "context": [] if s.context is None else [png_data_url(f) for f in s.context],
            "steps": [step_json(st, i + 1) for i, st in enumerate(s.steps)],
            "sampling": s.sampling, "seed": s.seed, "window": s.window,
            "demo_action": _demo_action(s) if s.start else None}


def create_app(player: Player) -> FastAPI:
    """The app serving ``player``; closing the app (lifespan end) closes the player."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        player.close()

    app = FastAPI(title="world-model player", lifespan=lifespan)
    app.state.player = player
    sessions = player.sessions

    @app.middleware("http")
    async def same_origin_changes(request: Request, call_next):
        origin = request.headers.get("origin")
        own = request.headers.get("host", "")
        if request.method in STATE_CHANGING and origin is not None and urlsplit(origin).netloc.lower() != own.lower():
            return JSONResponse({"error": f"refused {request.method} {request.url.path} from a page of another "
                                          f"origin ({origin}): only the player's own page (http://{own}) may "
                                          "change its sessions; open that address instead."}, status_code=403)
        return await call_next(request)

    # Added last, so it runs first: the Origin check above compares against a trusted Host.
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(player.address), www_redirect=False)

    @app.exception_handler(PlayerError)
    async def player_error(request: Request, e: PlayerError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.exception_handler(ValueError)  # a world model's own check (its message names the fault)
    async def value_error(request: Request, e: ValueError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)  # no such route or method: the same {"error"} shape
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": f"{request.method} {request.url.path}: {e.detail}"}, status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, e: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in err['loc'] if x != 'body') or 'body'}: {err['msg']}"
                 for err in e.errors()]
        return JSONResponse({"error": "bad request: " + "; ".join(parts)}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("player: unexpected error on %s", request.url.path)
        return JSONResponse({"error": f"internal error ({type(e).__name__}: {e}); see the server log"},
                            status_code=500)

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return player.host.call(player.info)

    @app.post("/api/checkpoint")
    def checkpoint(body: CheckpointBody) -> dict[str, Any]:
        player.host.switch(body.pretrained)
        return player.host.call(player.info)

    @app.post("/api/sessions")
    def new_session() -> dict[str, Any]:
        return {"session": sessions.create()}

    @app.get("/api/sessions/{sid}")
    def get_session(sid: str) -> dict[str, Any]:
        return sessions.call(sid, lambda s: (s.sync(), session_json(s))[1])

    @app.post("/api/sessions/{sid}/start")
    def start(sid: str, body: StartBody) -> dict[str, Any]:
        def run(s: PlaySession) -> dict[str, Any]:
            if body.source == "env":
                if not player.simulator[0]:
                    raise PlayerError(f"an env reset needs the simulator: {player.simulator[1]}")
                s.start_from_env(body.seed)
            else:
                if not body.episode:
                    raise PlayerError("source=episode needs an 'episode' name (see /api/info).")
                s.start_from_episode(body.episode, body.start)
            return session_json(s)
        return sessions.call(sid, run)

    @app.post("/api/sessions/{sid}/step")
    def step(sid: str, body: StepBody) -> dict[str, Any]:
        def run(s: PlaySession) -> dict[str, Any]:
            st = s.step(torch.tensor(body.action, dtype=torch.float32))
            return {"step": step_json(st, len(s.steps)), "revision": s.revision, "n_steps": len(s.steps),
                    "demo_action": _demo_action(s)}
        return sessions.call(sid, run)

    def action_route(name: str):
        def run(sid: str) -> dict[str, Any]:
            return sessions.call(sid, lambda s: (getattr(s, name)(), session_json(s))[1])
        app.post(f"/api/sessions/{{sid}}/{name}", name=name)(run)

    for name in ("undo", "restart", "reimagine"):
        action_route(name)

    @app.post("/api/sessions/{sid}/sampling")
    def sampling(sid: str, body: SamplingBody) -> dict[str, Any]:
        def run(s: PlaySession) -> dict[str, Any]:
            s.set_sampling(body.settings, body.seed)
            return {"sampling": s.sampling, "seed": s.seed}
        return sessions.call(sid, run)

    @app.post("/api/sessions/{sid}/save")
    def save(sid: str) -> dict[str, Any]:
        def run(s: PlaySession) -> dict[str, Any]:
            paths = s.save(player.out_dir, fps=player.video_fps, scale=player.video_scale)
            return {"dir": str(s.saved_dir.resolve()),
                    "files": {kind: f"/api/sessions/{sid}/files/{p.name}" for kind, p in paths.items()}}
        return sessions.call(sid, run)

    @app.get("/api/sessions/{sid}/files/{name}")
    def saved_file(sid: str, name: str) -> FileResponse:
        files = sessions.call(sid, lambda s: {p.name: p for p in s.saved_files.values()})
        if name not in files:  # only the files the session's last save wrote, never a path
            raise NotFound(f"no saved file '{name}' in this session; press save first.")
        if not files[name].is_file():
            raise NotFound(f"the saved file {files[name]} is gone (deleted or moved); press save again.")
        return FileResponse(files[name], filename=name)

    @app.post("/api/sessions/{sid}/close")
    def close(sid: str) -> dict[str, Any]:
        sessions.close(sid)
        return {"closed": sid}

    return app
