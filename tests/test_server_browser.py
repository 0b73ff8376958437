"""The web page in real headless Chromium (Debian's /usr/bin/chromium driven by Playwright for Python).

Skips cleanly when /usr/bin/chromium or the playwright package is missing (`.ci/run` installs both).
The server runs the model-free stand-in analyzer (magenta squares are "faces"), so these tests exercise
the page and the API without the bundled model; the photo test with the real model skips until it exists.
Set FERKIT_SCREENSHOT_DIR to keep the screenshots.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import cv2
import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
pytest.importorskip("httpx")
pytest.importorskip("fastapi")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_server_api import Server, encode, real_model_args, scene  # noqa: E402

from ferkit.server.fake import fake_emotion_for_width  # noqa: E402

BASE_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]


def launch(playwright, extra_args=()):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[*BASE_ARGS, *extra_args])


def keep_screenshot(path: Path) -> None:
    target = os.environ.get("FERKIT_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("browser") / "data", "--retention-hours", "1.5")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    b = launch(playwright)
    yield b
    b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.goto(server.base + "/")
    pg.wait_for_selector("#health.ok")
    yield pg
    context.close()
    # 4xx answers the tests provoke show up as console errors ("Failed to load resource"); anything else is a bug
    assert not [e for e in errors if "Failed to load resource" not in e], errors


def clear_store(server):
    for item in server.client.get("/api/v1/results", params={"limit": 100}).json()["items"]:
        server.client.delete(f"/api/v1/results/{item['id']}")


def test_upload_shows_annotated_image_and_face_cards_then_delete(page, server, tmp_path):
    clear_store(server)
    photo = tmp_path / "two-faces.png"
    photo.write_bytes(encode(scene()))
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("#face-cards .face-card >> nth=1")
    cards = page.locator("#face-cards .face-card")
    assert cards.count() == 2
    assert cards.nth(0).locator(".emotion-name").text_content() == fake_emotion_for_width(64)
    assert cards.nth(1).locator(".emotion-name").text_content() == fake_emotion_for_width(48)
    assert cards.nth(0).locator(".bars li").count() == 7
    # the annotated PNG and the thumbnails really loaded
    page.wait_for_function("() => document.getElementById('result-image').complete && "
                           "document.getElementById('result-image').naturalWidth === 640")
    page.wait_for_function("() => [...document.querySelectorAll('#face-cards .thumb')].every(i => i.complete && i.naturalWidth === 128)")
    assert "two-faces.png" in page.locator("#result-name").inner_text()
    assert "2 faces" in page.locator("#result-meta").inner_text()
    history = page.locator("#history .history-item")
    history.first.wait_for()
    assert history.count() == 1 and "two-faces.png" in history.first.inner_text()
    shot = tmp_path / "page-result.png"
    page.screenshot(path=str(shot), full_page=True)
    keep_screenshot(shot)
    assert shot.stat().st_size > 20_000

    page.click("#result-delete")
    page.wait_for_selector("#result", state="hidden")
    page.wait_for_selector("#history-empty", state="visible")
    assert page.locator("#history .history-item").count() == 0
    assert server.client.get("/api/v1/results").json()["total"] == 0


def test_drop_a_file_and_reopen_from_history(page, server):
    clear_store(server)
    for name, side in (("first.png", 80), ("second.png", 32)):
        data = list(encode(scene(squares=((40, 40, side),))))
        page.evaluate(
            """([bytes, name]) => {
                const dt = new DataTransfer();
                dt.items.add(new File([new Uint8Array(bytes)], name, {type: 'image/png'}));
                const zone = document.getElementById('dropzone');
                zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true, cancelable: true}));
                zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
            }""",
            [data, name],
        )
        page.wait_for_function(f"() => document.getElementById('result-name').textContent === {name!r}")
    assert page.locator("#face-cards .emotion-name").text_content() == fake_emotion_for_width(32)
    page.wait_for_function("() => document.querySelectorAll('#history .history-item').length === 2")
    page.locator("#history .history-item").nth(1).locator(".history-open").click()  # the older one
    page.wait_for_function("() => document.getElementById('result-name').textContent === 'first.png'")
    assert page.locator("#face-cards .emotion-name").text_content() == fake_emotion_for_width(80)
    assert page.url.endswith("#result=" + page.evaluate("() => location.hash.slice(8)"))
    # deleting from the list removes it there and from the store
    page.locator("#history .history-item").nth(0).locator(".history-delete").click()
    page.wait_for_function("() => document.querySelectorAll('#history .history-item').length === 1")
    assert server.client.get("/api/v1/results").json()["total"] == 1


def test_the_latest_choice_wins_and_history_pages_load_once(page, server, tmp_path):
    """Two files chosen in quick succession: the page shows the second even when the first answers last; a
    double click on "Show older" adds the next page once; a #result= address pasted into the tab opens it;
    the footer states the server's retention (1.5 h) correctly."""
    clear_store(server)
    assert page.locator("#retention-note").inner_text() == "Stored images are deleted after 1 hour 30 minutes."
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    first.write_bytes(encode(scene(squares=((40, 40, 80),))))
    second.write_bytes(encode(scene(squares=((40, 40, 32),))))
    held = []

    def hold_the_first(route):
        if not held:
            held.append(route)  # answered only after the second request is done
        else:
            route.continue_()

    page.route("**/api/v1/analyze", hold_the_first)
    page.set_input_files("#file-input", str(first))
    page.wait_for_function("() => document.getElementById('status').classList.contains('busy')")
    page.set_input_files("#file-input", str(second))
    page.wait_for_function("() => document.getElementById('result-name').textContent === 'second.png'")
    assert held, "the first request was not held"
    held[0].continue_()
    page.wait_for_function("() => document.querySelectorAll('#history .history-item').length === 2")
    page.wait_for_timeout(300)
    assert page.locator("#result-name").inner_text() == "second.png"  # the late first answer did not replace it
    assert not page.evaluate("() => document.getElementById('status').classList.contains('busy')")
    page.unroute("**/api/v1/analyze")
    first_id = next(i["id"] for i in server.client.get("/api/v1/results").json()["items"]
                    if i["source_name"] == "first.png")
    page.evaluate(f"() => {{ location.hash = '#result={first_id}'; }}")
    page.wait_for_function("() => document.getElementById('result-name').textContent === 'first.png'")

    for k in range(12):  # with the two above: 14 results, more than one page of 12
        server.client.post("/api/v1/analyze", content=encode(scene(squares=((40, 40, 40 + k),))),
                           headers={"Content-Type": "image/png"})
    page.click("#history-refresh")
    page.wait_for_selector("#history-more", state="visible")
    page.dblclick("#history-more")
    page.wait_for_selector("#history-more", state="hidden")
    page.wait_for_timeout(300)
    ids = page.evaluate("() => [...document.querySelectorAll('#history .history-item')].map(li => li.dataset.id)")
    assert len(ids) == 14 and len(set(ids)) == 14, ids


def test_deleting_from_the_list_keeps_the_keyboard_there(page, server, tmp_path):
    clear_store(server)
    for k in range(3):
        server.client.post("/api/v1/analyze", content=encode(scene(squares=((40, 40, 40 + k),))),
                           headers={"Content-Type": "image/png"})
    page.click("#history-refresh")
    page.wait_for_function("() => document.querySelectorAll('#history .history-item').length === 3")
    gone = page.locator("#history .history-item").nth(1).get_attribute("data-id")
    server.client.delete(f"/api/v1/results/{gone}")  # deleted elsewhere meanwhile: its entry must go anyway
    page.locator("#history .history-item").nth(0).locator(".history-delete").focus()
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelectorAll('#history .history-item').length === 1")
    assert page.evaluate("() => document.activeElement.classList.contains('history-delete')")
    last = page.locator("#history .history-item").nth(0).get_attribute("data-id")
    server.client.delete(f"/api/v1/results/{last}")  # the entry still listed is stale now
    page.locator("#history .history-item").nth(0).locator(".history-delete").focus()
    page.keyboard.press("Enter")  # 404: the message shows and the list is refreshed from the server
    page.wait_for_selector("#error", state="visible")
    page.wait_for_selector("#history-empty", state="visible")
    assert page.locator("#history .history-item").count() == 0


def test_bad_file_shows_the_servers_message(page, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is text, not a picture")
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector("#error", state="visible")
    assert "not a supported image" in page.locator("#error").inner_text()
    assert page.locator("#result").is_hidden()


def test_no_face_message(page, tmp_path):
    empty = tmp_path / "landscape.png"
    empty.write_bytes(encode(scene(squares=())))
    page.set_input_files("#file-input", str(empty))
    page.wait_for_selector("#no-faces", state="visible")
    assert page.locator("#face-cards .face-card").count() == 0


def test_url_tab_reports_refused_address(page, server):
    page.click("#tab-url")
    page.fill("#url-input", server.base + "/static/favicon.svg")
    page.click("#url-form button[type=submit]")
    page.wait_for_selector("#error", state="visible")
    assert "public addresses" in page.locator("#error").inner_text()


def write_y4m(path: Path, frames: int = 20, width: int = 640, height: int = 480, side: int = 96) -> Path:
    """A short I420 Y4M clip (Chromium's fake camera input) with a magenta square drifting right."""
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            x = 200 + 4 * i
            img = scene(width, height, squares=((x - x % 2, 160, side),), bg=(90, 110, 120))
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(img, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


def test_camera_frames_are_analysed_and_drawn(playwright, server, tmp_path):
    clear_store(server)
    clip = write_y4m(tmp_path / "fake-camera.y4m")
    browser = launch(playwright, ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                                  f"--use-file-for-fake-video-capture={clip}"])
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.grant_permissions(["camera"], origin=server.base)
        page = context.new_page()
        page.add_init_script("""(() => {  // count the camera streams the page opens and which are still live
            const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
            window.__streams = [];
            navigator.mediaDevices.getUserMedia = async (c) => { const s = await open(c); window.__streams.push(s); return s; };
        })()""")
        live_tracks = "() => window.__streams.flatMap(s => s.getTracks()).filter(t => t.readyState === 'live').length"
        page.goto(server.base + "/")
        page.click("#tab-camera")
        page.dblclick("#camera-toggle")  # start, then stop while the camera is still opening: nothing stays on
        page.wait_for_function("() => window.__streams.length >= 1")
        page.wait_for_timeout(500)
        assert page.evaluate(live_tracks) == 0 and page.locator("#camera-toggle").inner_text() == "Start camera"
        page.click("#camera-toggle")
        page.wait_for_selector("#camera-overlay[data-faces='1']", timeout=20_000)
        assert page.evaluate(live_tracks) == 1
        assert fake_emotion_for_width(96) in page.locator("#camera-faces").inner_text()
        # the overlay canvas really has the box drawn on it
        page.wait_for_function("""() => {
            const c = document.getElementById('camera-overlay');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
            return n > 200;
        }""")
        assert "analyses/s" in page.locator("#camera-stats").inner_text()
        # live frames are not stored; a snapshot is
        assert server.client.get("/api/v1/results").json()["total"] == 0
        shot = tmp_path / "page-camera.png"
        page.screenshot(path=str(shot))
        keep_screenshot(shot)
        page.click("#camera-snapshot")
        page.wait_for_selector("#face-cards .face-card")
        assert page.locator("#result-name").inner_text().startswith("camera-")
        assert server.client.get("/api/v1/results").json()["total"] == 1
        page.click("#camera-toggle")
        page.wait_for_selector("#camera-overlay[data-faces='0']")
        assert page.evaluate("() => document.getElementById('camera-video').srcObject") is None
        assert page.evaluate(live_tracks) == 0
        context.close()
    finally:
        browser.close()


@pytest.mark.slow
def test_real_model_on_a_faces_dev_photo(playwright, tmp_path):
    model_args = real_model_args()
    if model_args is None:
        pytest.skip("ferkit.pipeline or the bundled model is not there yet")
    from conftest import FACES_DEV

    photos = sorted((FACES_DEV / "images").glob("*.jpg"))[:1] if (FACES_DEV / "images").is_dir() else []
    if not photos:
        pytest.skip("faces-dev photos not found")
    srv = Server(tmp_path / "data", *model_args, analyzer=None)
    browser = launch(playwright)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(srv.base + "/")
        page.set_input_files("#file-input", str(photos[0]))
        page.wait_for_selector("#face-cards .face-card", timeout=30_000)
        page.wait_for_function("() => document.getElementById('result-image').naturalWidth > 0")
        shot = tmp_path / "page-real-photo.png"
        page.screenshot(path=str(shot), full_page=True)
        keep_screenshot(shot)
        page.click("#result-delete")
        page.wait_for_selector("#result", state="hidden")
        assert srv.client.get("/api/v1/results").json()["total"] == 0
    finally:
        browser.close()
        srv.stop()
