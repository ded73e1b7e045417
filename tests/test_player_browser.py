"""The player page in a real headless browser: Debian's chromium driven by Playwright.

Playwright never downloads a browser here: it launches /usr/bin/chromium. Install with
``apt-get install -y chromium`` and ``pip install playwright==1.65.2``; without either the test
is skipped with that reason."""
from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest

CHROMIUM = os.environ.get("PLAYER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 30_000
MIN_PIXEL_STD = 10.0  # a blank or single-colour page has a standard deviation near 0
STEP_SIZE = 0.5  # the page's default step size (index.html #stepSize)

pytest.importorskip("fastapi", reason="the player needs fastapi and uvicorn")
pytest.importorskip("uvicorn", reason="the player needs fastapi and uvicorn")
pytest.importorskip("playwright.sync_api", reason="needs Playwright: pip install playwright==1.65.2")
if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"needs a chromium at {CHROMIUM}: apt-get install -y chromium", allow_module_level=True)

import uvicorn  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from mbrl.player.player import Player  # noqa: E402
from mbrl.player.server import create_app  # noqa: E402
from test_player import DEMOS, TASK, make_checkpoint, play_config  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server_url(tmp_path):
    if not DEMOS.is_dir():
        pytest.skip(f"{DEMOS} is missing (shipped demos)")
    episodes = tmp_path / "episodes"
    episodes.mkdir()
    shutil.copy(sorted(DEMOS.glob("*.npz"))[0], episodes)
    checkpoint = make_checkpoint(tmp_path / "ckpt", 0)
    player = Player.from_config(play_config(checkpoint, episodes, tmp_path), TASK, check_simulator=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(player), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the player server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=TIMEOUT_MS / 1000)
    player.close()


def step_count(page) -> int:
    return page.locator("#filmstrip .cell.step").count()


def press_for_action(page, key: str) -> list[float]:
    """Press ``key`` and return the action the page sent for it (the step response echoes it)."""
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/step")) as res:
        page.keyboard.press(key)
    assert res.value.ok, res.value.text()
    page.wait_for_selector("body[data-state=ready]")
    return res.value.json()["step"]["action"]


def test_page_answers_a_key_with_a_new_frame(server_url, tmp_path):
    import imageio.v3 as iio

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(server_url)
            page.wait_for_selector("#filmstrip .cell.context")  # started from the first episode
            page.wait_for_selector("body[data-state=ready]")
            assert step_count(page) == 0 and page.locator("#error").is_hidden()

            # Meta-World keys (README): -> is +x by the step size, space closes the gripper (+1) and
            # holds it while motions go on, shift opens it (-1).
            assert press_for_action(page, "ArrowRight") == [STEP_SIZE, 0, 0, 0]
            page.wait_for_function("document.querySelectorAll('#filmstrip .cell.step').length === 1")
            assert page.get_attribute("#imagined", "src").startswith("data:image/png;base64,")
            assert "step 1" in page.inner_text("#imaginedCaption")
            assert press_for_action(page, " ") == [0, 0, 0, 1]
            assert press_for_action(page, "ArrowLeft") == [-STEP_SIZE, 0, 0, 1]
            assert press_for_action(page, "s") == [0, 0, -STEP_SIZE, 1]
            assert press_for_action(page, "Shift") == [0, 0, 0, -1]
            assert press_for_action(page, "w") == [0, 0, STEP_SIZE, -1]  # z + step size, gripper still open
            page.wait_for_function("document.querySelectorAll('#filmstrip .cell.step').length === 6")
            for remaining in range(5, 0, -1):
                page.keyboard.press("z")  # undo
                page.wait_for_function(
                    f"document.querySelectorAll('#filmstrip .cell.step').length === {remaining}")
                page.wait_for_selector("body[data-state=ready]")

            shot = page.screenshot(path=str(tmp_path / "player.png"), full_page=True)
            pixels = iio.imread(io.BytesIO(shot), extension=".png").astype(np.float32)
            assert pixels.ndim == 3 and pixels.std() > MIN_PIXEL_STD, "the screenshot is blank"

            # Sampling: numbers are inputs, the model's switches are shown only; Apply sends valid types.
            assert page.locator("input#sampling_compile").count() == 0
            assert page.inner_text("#sampling_compile") == "false"
            assert page.inner_text("#sampling_cpu_bf16_decoding") == '"auto"'
            page.fill("#sampling_temperature", "0.5")
            page.click("#samplingBtn")
            page.wait_for_selector("body[data-state=ready]")
            assert page.locator("#error").is_hidden()
            assert page.input_value("#sampling_temperature") == "0.5"
            page.fill("#sampling_temperature", "")  # an empty field is refused, not sent as 0
            page.click("#samplingBtn")
            page.wait_for_selector("#error:not([hidden])")
            assert "sampling.temperature=None must be a finite number" in page.inner_text("#error")
            page.wait_for_selector("body[data-state=ready]")
            page.fill("#sampling_temperature", "1")
            page.click("#samplingBtn")
            page.wait_for_selector("#error", state="hidden")
            page.wait_for_selector("body[data-state=ready]")

            # A bad request is shown on the page, and the page keeps working.
            page.fill("#ckptInput", "/no/such/checkpoint")
            page.click("#ckptForm button")
            page.wait_for_selector("#error:not([hidden])")
            assert "no such directory" in page.inner_text("#error")
            page.wait_for_selector("body[data-state=ready]")
            page.keyboard.press("ArrowUp")
            page.wait_for_function("document.querySelectorAll('#filmstrip .cell.step').length === 2")
            assert page.locator("#error").is_hidden()
            page.wait_for_selector("body[data-state=ready]")

            # Browser shortcuts are not player keys: Ctrl+R must reload, not restart (r), Ctrl+Z not undo.
            requests = []
            page.on("request", lambda r: requests.append(f"{r.method} {r.url}") if "/api/" in r.url else None)
            for chord in ("Control+r", "Control+z", "Meta+z", "Alt+w", "Control+s", "Control+Enter"):
                page.keyboard.press(chord)  # a player key would start its request (and mark the page busy) now
                page.wait_for_selector("body[data-state=ready]")
            page.evaluate("fetch('/api/info')")  # once this one is seen, every earlier one has been
            deadline = time.monotonic() + TIMEOUT_MS / 1000
            while not any(r.endswith("/api/info") for r in requests) and time.monotonic() < deadline:
                page.wait_for_timeout(20)
            assert [r for r in requests if not r.endswith("/api/info")] == [] and step_count(page) == 2
        finally:
            browser.close()
