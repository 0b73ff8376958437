"""REST API tests against a real `ferkit serve` (uvicorn) process on a free loopback port.

Most tests use the model-free stand-in analyzer (`--analyzer ferkit.server.fake:BlobAnalyzer`: magenta
squares are "faces", the emotion follows the square's width), so they run without the bundled model; the
real-pipeline test at the end skips until the bundled model exists.
"""
from __future__ import annotations

import http.server
import io
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
PIL_Image = pytest.importorskip("PIL.Image")

from ferkit.labels import EMOTIONS  # noqa: E402
from ferkit.server.fake import fake_emotion_for_width  # noqa: E402

FAKE = "ferkit.server.fake:BlobAnalyzer"
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m ferkit.cli serve ...` in a subprocess; waits until /api/v1/health answers."""

    def __init__(self, data_dir: Path, *extra: str, analyzer: str | None = FAKE, env: dict | None = None):
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "ferkit.cli", "serve", "--port", str(self.port), "--data-dir", str(data_dir),
               "--log-level", "warning", *extra]
        if analyzer:
            cmd += ["--analyzer", analyzer]
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        self.log = open(self.log_path, "wb")
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT,
                                     start_new_session=True)  # its own process group: kill() takes the workers too
        self.client = httpx.Client(base_url=self.base, timeout=30.0)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text(errors='replace')}")
            try:
                if self.client.get("/api/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start:\n{self.log_path.read_text(errors='replace')}")
            time.sleep(0.1)

    def pids(self) -> list[int]:
        """The supervisor and its worker processes."""
        out = [self.proc.pid]
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if os.getpgid(int(d.name)) == self.proc.pid:
                        out.append(int(d.name))
                except OSError:
                    pass
        return sorted(set(out))

    def rss_peak_kb(self) -> int:
        """Peak resident memory (VmHWM) summed over the server's processes."""
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # a crash of every server process at once, no cleanup
        self.proc.wait(10)
        self.client.close()
        self.log.close()


def scene(width=640, height=480, squares=((100, 100, 64), (380, 200, 48)), bg=(200, 210, 220)) -> np.ndarray:
    """A BGR image with magenta squares (x, y, side) that the fake analyzer reports as faces."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:] = bg
    for x, y, side in squares:
        img[y:y + side, x:x + side] = (255, 0, 255)
    return img


def encode(img: np.ndarray, ext: str = ".png", **params) -> bytes:
    flags = []
    if ext == ".jpg":
        flags = [cv2.IMWRITE_JPEG_QUALITY, params.get("quality", 95)]
    ok, buf = cv2.imencode(ext, img, flags)
    assert ok
    return buf.tobytes()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (8-bit gray); its data would inflate to width*height bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * min(width, 4096)
    idat = zlib.compress(row * 16, 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def upload(client, data: bytes, name="scene.png", ctype="image/png", **params):
    return client.post("/api/v1/analyze", files={"file": (name, data, ctype)}, params=params)


def assert_error(r, status: int, code: str | None = None):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["status"] == status and isinstance(body["message"], str) and len(body["message"]) > 10, body
    if code:
        assert body["error"] == code, body
    return body


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Shared server: fake analyzer, 1 MiB upload limit, 4 megapixel limit."""
    srv = Server(tmp_path_factory.mktemp("srv") / "data", "--max-upload-mb", "1", "--max-megapixels", "4")
    yield srv
    srv.stop()


class ImageHandler(http.server.BaseHTTPRequestHandler):
    """Local web server for URL-fetch tests: /face.png, /page.html, /big.png, /missing, /redirect, /slow."""

    files: dict[str, tuple[str, bytes]] = {}

    def do_GET(self):  # noqa: N802
        if self.path == "/slow":
            time.sleep(3)
        if self.path == "/trickle":  # a real image, 100 bytes every 0.3 s: each read is quick, the whole is not
            data = self.files["/face.png"][1]
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                for i in range(0, len(data), 100):
                    self.wfile.write(data[i:i + 100])
                    self.wfile.flush()
                    time.sleep(0.3)
            except OSError:  # the server under test hung up: what a deadline should do
                pass
            return
        if self.path.startswith("/redirect"):
            target = self.path.split("to=", 1)[1] if "to=" in self.path else "/face.png"
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()
            return
        if self.path == "/slow" or self.path not in self.files:
            self.send_response(404)
            self.end_headers()
            return
        ctype, data = self.files[self.path]
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_site():
    ImageHandler.files = {
        "/face.png": ("image/png", encode(scene())),
        "/page.html": ("text/html; charset=utf-8", b"<!doctype html><html><body>hi</body></html>"),
        "/big.png": ("image/png", encode(scene()) + b"\x00" * (2 * 1024 * 1024)),
        "/octet": ("application/octet-stream", encode(scene(), ".jpg")),
    }
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageHandler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# ------------------------------------------------------------------------------------------------ happy path
def test_upload_returns_faces_thumbnails_and_annotated_png(server):
    r = upload(server.client, encode(scene()))
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["id"]) == 32 and body["width"] == 640 and body["height"] == 480
    assert body["model"] == "fake-blob" and body["source"] == "upload" and body["source_name"] == "scene.png"
    assert body["stored"] is True and body["elapsed_ms"] > 0
    boxes = [f["box"] for f in body["faces"]]
    assert boxes == [[100, 100, 64, 64], [380, 200, 48, 48]]
    assert [f["emotion"] for f in body["faces"]] == [fake_emotion_for_width(64), fake_emotion_for_width(48)]
    for f in body["faces"]:
        assert set(f["probabilities"]) == set(EMOTIONS)
        assert abs(sum(f["probabilities"].values()) - 1) < 1e-6
        assert f["score"] == max(f["probabilities"].values())
        thumb = server.client.get(f["thumbnail_url"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
        t = cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_COLOR)
        assert t.shape == (128, 128, 3)
        # the thumbnail is centred on the face: its middle is magenta
        assert tuple(int(v) for v in t[64, 64]) == (255, 0, 255)
    ann = server.client.get(body["annotated_url"])
    assert ann.status_code == 200 and ann.headers["content-type"] == "image/png"
    img = cv2.imdecode(np.frombuffer(ann.content, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (480, 640, 3)
    assert not np.array_equal(img, scene())  # boxes were drawn
    again = server.client.get(f"/api/v1/results/{body['id']}").json()
    assert again["faces"] == body["faces"] and again["created_at"] == body["created_at"]


def test_raw_body_upload_and_jpeg(server):
    data = encode(scene(squares=((10, 10, 80),)), ".jpg")
    r = server.client.post("/api/v1/analyze", content=data, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert [f["box"] for f in r.json()["faces"]] == [[10, 10, 80, 80]]
    assert r.json()["source_name"] is None


def test_no_face_is_200_with_empty_list(server):
    r = upload(server.client, encode(scene(squares=())))
    assert r.status_code == 200
    assert r.json()["faces"] == []
    assert server.client.get(r.json()["annotated_url"]).status_code == 200


def test_persist_false_writes_nothing(server):
    before = server.client.get("/api/v1/results").json()["total"]
    r = upload(server.client, encode(scene()), persist="false")
    assert r.status_code == 200
    body = r.json()
    assert body["stored"] is False and body["annotated_url"] is None
    assert all(f["thumbnail_url"] is None for f in body["faces"]) and len(body["faces"]) == 2
    assert server.client.get(f"/api/v1/results/{body['id']}").status_code == 404
    assert server.client.get("/api/v1/results").json()["total"] == before
    assert not list(server.data_dir.glob(f"images/*/{body['id']}"))


def test_concurrent_requests_all_succeed(server):
    data = encode(scene())
    results: list = []

    def worker():
        with httpx.Client(base_url=server.base, timeout=60) as c:
            for _ in range(3):
                results.append(upload(c, data))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 24
    assert all(r.status_code == 200 for r in results), [r.text for r in results if r.status_code != 200]
    ids = {r.json()["id"] for r in results}
    assert len(ids) == 24
    assert all(len(r.json()["faces"]) == 2 for r in results)


# ------------------------------------------------------------------------------------------------ bad input
def test_upload_over_limit_is_413_with_content_length(server):
    data = encode(scene()) + os.urandom(1536 * 1024)  # 1.5 MiB > 1 MiB
    body = assert_error(upload(server.client, data), 413, "image_too_large")
    assert "1,048,576" in body["message"]


def test_upload_over_limit_is_refused_while_streaming(server):
    """A chunked body (no Content-Length) of 40 MiB: the server must stop buffering at the 1 MiB limit,
    so its peak memory grows by far less than the body."""
    peak_before = server.rss_peak_kb()
    chunk = b"\x89PNG\r\n\x1a\n" + b"\x00" * (256 * 1024 - 8)

    def body():
        for _ in range(160):  # 40 MiB
            yield chunk

    try:
        r = server.client.post("/api/v1/analyze", content=body(), headers={"Content-Type": "image/png"})
        assert_error(r, 413, "image_too_large")
    except httpx.TransportError:
        pass  # the server may close the connection once it stops draining; the memory check below decides
    grown_mb = (server.rss_peak_kb() - peak_before) / 1024
    assert grown_mb < 20, f"server peak memory grew by {grown_mb:.0f} MiB for a refused 40 MiB upload"
    assert server.client.get("/api/v1/health").status_code == 200


def test_multipart_over_limit_is_413(server):
    r = upload(server.client, b"\xff\xd8\xff" + os.urandom(3 * 1024 * 1024), name="huge.jpg", ctype="image/jpeg")
    assert_error(r, 413, "image_too_large")


def test_decompression_bomb_header_is_413_before_decoding(server):
    data = bomb_png(100_000, 100_000)  # 10 gigapixels claimed by a ~few-kB file
    assert len(data) < 10_000
    t0 = time.monotonic()
    body = assert_error(upload(server.client, data, name="bomb.png"), 413, "too_many_pixels")
    assert time.monotonic() - t0 < 5
    assert "10,000,000,000 pixels" in body["message"] and "4,000,000" in body["message"]


def test_real_image_over_pixel_limit_is_413(server):
    big = np.zeros((2100, 2100), np.uint8)  # 4.41 MP > 4 MP limit, but a small file
    data = encode(big)
    assert len(data) < 1024 * 1024
    assert_error(upload(server.client, data, name="big.png"), 413, "too_many_pixels")


@pytest.mark.parametrize("data,name", [
    (b"hello, this is plain text and not an image at all\n", "notes.txt"),
    (b"<!doctype html><html><body>not an image</body></html>", "page.html"),
    (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>', "drawing.svg"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "doc.pdf"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "phone.heic"),
])
def test_not_an_image_is_415(server, data, name):
    assert_error(upload(server.client, data, name=name, ctype="application/octet-stream"), 415, "unsupported_media_type")


def test_unsupported_request_content_type_is_415(server):
    r = server.client.post("/api/v1/analyze", content=b"x=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(r, 415, "unsupported_media_type")


def test_truncated_images_are_422(server):
    jpg = encode(scene(), ".jpg")
    png = encode(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    assert_error(upload(server.client, jpg[: len(jpg) // 2], name="cut.jpg", ctype="image/jpeg"), 422, "corrupt_image")
    assert_error(upload(server.client, png[: len(png) // 2], name="cut.png"), 422, "corrupt_image")


def test_corrupt_header_and_empty_file_are_422(server):
    assert_error(upload(server.client, b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, name="bad.png"), 422, "corrupt_image")
    assert_error(upload(server.client, b"", name="empty.png"), 422, "empty_image")


def test_missing_file_field_is_422(server):
    r = server.client.post("/api/v1/analyze", data={"something": "else"}, files={"notes": (None, "x")})
    assert_error(r, 422, "missing_file")


def test_server_keeps_serving_after_bad_input(server):
    for data in (b"", b"junk", bomb_png(50_000, 50_000)):
        assert upload(server.client, data).status_code in (413, 415, 422)
    assert upload(server.client, encode(scene())).status_code == 200
    assert server.proc.poll() is None


@pytest.mark.parametrize("url,status", [
    ("file:///etc/passwd", 422),
    ("ftp://example.org/a.png", 422),
    ("javascript:alert(1)", 422),
    ("http://user:pw@example.org/a.png", 422),
    ("not a url", 422),
    ("http://127.0.0.1/face.png", 403),
    ("http://localhost:9/face.png", 403),
    ("http://[::1]/face.png", 403),
    ("http://169.254.169.254/latest/meta-data/", 403),
    ("http://10.1.2.3/a.png", 403),
    ("http://192.168.0.1/a.png", 403),
    ("http://0.0.0.0/a.png", 403),
    ("http://[::ffff:127.0.0.1]/a.png", 403),
    ("http://2130706433/a.png", 403),  # 127.0.0.1 as one decimal number
])
def test_url_fetch_refusals(server, url, status):
    body = assert_error(server.client.post("/api/v1/analyze", json={"url": url}), status)
    if status == 403:
        assert body["error"] == "url_forbidden" and "--allow-private-urls" in body["message"]


def test_loopback_image_site_is_refused_by_default(server, image_site):
    assert_error(server.client.post("/api/v1/analyze", json={"url": image_site + "/face.png"}), 403, "url_forbidden")


def test_bad_json_bodies_are_422(server):
    r = server.client.post("/api/v1/analyze", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(r, 422, "invalid_request")
    assert_error(server.client.post("/api/v1/analyze", json={"link": "x"}), 422, "invalid_request")


def test_bad_cursors_and_host_names_are_422_not_500(server):
    for cursor in ("abc", "9" * 30, "\u00b2", "-1"):  # not digits, too big for SQLite, a Unicode digit, negative
        assert_error(server.client.get("/api/v1/results", params={"cursor": cursor}), 422, "invalid_cursor")
    assert_error(server.client.post("/api/v1/analyze", json={"url": "http://xn--/a.png"}), 422, "invalid_url")
    assert server.client.get("/api/v1/health").status_code == 200


def test_declared_oversize_upload_is_answered_without_waiting_for_the_body(server):
    """A client that declares 100 MiB, sends 1 KiB and stalls gets its 413 at once, not never."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=8) as sock:
        sock.sendall(b"POST /api/v1/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 104857600\r\n\r\n" + b"\x00" * 1024)
        t0 = time.monotonic()
        reply = b""
        while b"image_too_large" not in reply:
            part = sock.recv(4096)
            if not part:
                break
            reply += part
    assert reply.startswith(b"HTTP/1.1 413") and b"image_too_large" in reply, reply[:200]
    assert time.monotonic() - t0 < 5


def test_unknown_ids_and_paths_are_json_404(server):
    assert_error(server.client.get("/api/v1/results/" + "0" * 32), 404, "result_not_found")
    assert_error(server.client.get("/api/v1/results/../../etc/passwd"), 404)
    assert_error(server.client.get("/api/v1/results/abc/annotated"), 404)
    assert_error(server.client.delete("/api/v1/results/" + "f" * 32), 404)
    assert_error(server.client.get("/api/v1/nothing-here"), 404)


def test_health_openapi_docs_and_page(server):
    h = server.client.get("/api/v1/health").json()
    assert h["status"] == "ok" and h["analyzer_ready"] and h["model"] == "fake-blob"
    assert h["limits"]["max_upload_bytes"] == 1024 * 1024 and h["limits"]["max_pixels"] == 4_000_000
    spec = server.client.get("/openapi.json").json()
    for path in ("/api/v1/analyze", "/api/v1/results", "/api/v1/results/{result_id}",
                 "/api/v1/results/{result_id}/annotated", "/api/v1/results/{result_id}/faces/{index}/thumbnail",
                 "/api/v1/health"):
        assert path in spec["paths"], path
    analyze = spec["paths"]["/api/v1/analyze"]["post"]
    assert {"multipart/form-data", "application/json"} <= set(analyze["requestBody"]["content"])
    assert {"413", "415", "422"} <= set(analyze["responses"])
    for path, method in (("/api/v1/results", "get"), ("/api/v1/results/{result_id}/faces/{index}/thumbnail", "get")):
        schema = spec["paths"][path][method]["responses"]["422"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (path, schema)  # the body the server sends
    assert {"AnalysisOut", "FaceOut", "ResultsPage", "ErrorOut", "HealthOut"} <= set(spec["components"]["schemas"])
    docs = server.client.get("/docs").text
    assert "swagger-ui-bundle.js" in docs and "cdn." not in docs and "https://" not in docs.split("<body")[0]
    assert server.client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    page = server.client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    # everything the page loads is local: no absolute URLs in the HTML, script or style sheet
    for asset in ("/", "/static/app.js", "/static/app.css"):
        text = server.client.get(asset).text
        for bad in ('src="http', "src='http", 'href="http', "url(http", "@import", "fonts.googleapis", "cdn"):
            assert bad not in text, (asset, bad)


# ------------------------------------------------------------------------------------------------ URL fetching
@pytest.fixture(scope="module")
def private_server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("priv") / "data", "--allow-private-urls", "--max-upload-mb", "1",
                 "--url-timeout", "1.5")
    yield srv
    srv.stop()


def test_allow_private_urls_fetches_loopback(private_server, image_site):
    r = private_server.client.post("/api/v1/analyze", json={"url": image_site + "/face.png"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "url" and body["source_name"] == image_site + "/face.png"
    assert len(body["faces"]) == 2
    r = private_server.client.post("/api/v1/analyze", json={"url": image_site + "/redirect?to=/face.png"})
    assert r.status_code == 200 and len(r.json()["faces"]) == 2
    r = private_server.client.post("/api/v1/analyze", json={"url": image_site + "/octet"})
    assert r.status_code == 200 and len(r.json()["faces"]) == 2


def test_url_fetch_errors(private_server, image_site):
    c = private_server.client
    assert_error(c.post("/api/v1/analyze", json={"url": image_site + "/page.html"}), 415, "unsupported_media_type")
    assert_error(c.post("/api/v1/analyze", json={"url": image_site + "/big.png"}), 413, "image_too_large")
    assert_error(c.post("/api/v1/analyze", json={"url": image_site + "/missing"}), 502, "url_http_error")
    t0 = time.monotonic()
    assert_error(c.post("/api/v1/analyze", json={"url": image_site + "/slow"}), 504, "url_timeout")
    assert time.monotonic() - t0 < 3.0
    t0 = time.monotonic()  # a server that trickles the bytes is held to the same deadline (1.5 s)
    assert_error(c.post("/api/v1/analyze", json={"url": image_site + "/trickle"}), 504, "url_timeout")
    assert time.monotonic() - t0 < 3.0
    closed = free_port()
    assert_error(c.post("/api/v1/analyze", json={"url": f"http://127.0.0.1:{closed}/a.png"}), 502, "url_unreachable")
    assert_error(c.post("/api/v1/analyze", json={"url": "gopher://127.0.0.1/"}), 422, "invalid_url")


def test_url_downloads_in_flight_are_capped(private_server, image_site):
    """More slow URL downloads at once than MAX_URL_FETCHES: the extra ones are 503 at once (they would
    otherwise hold every thread of the worker), and the server keeps answering."""
    from concurrent.futures import ThreadPoolExecutor

    from ferkit.server.app import MAX_URL_FETCHES

    def post(_):
        with httpx.Client(base_url=private_server.base, timeout=30) as c:
            return c.post("/api/v1/analyze", json={"url": image_site + "/slow"}).status_code

    with ThreadPoolExecutor(MAX_URL_FETCHES + 4) as pool:
        codes = list(pool.map(post, range(MAX_URL_FETCHES + 4)))
    assert codes.count(504) >= 1 and codes.count(503) >= 1 and set(codes) <= {503, 504}, codes
    assert codes.count(504) <= MAX_URL_FETCHES
    assert private_server.client.get("/api/v1/health").status_code == 200


def test_fetcher_rechecks_every_redirect_and_pins_the_checked_address(image_site):
    """In-process: 'ok.test' and 'evil.test' exist only in a fake resolver; the policy allows 127.0.0.1 only.
    Success for ok.test proves the connection goes to the resolved address (the system cannot resolve it);
    a redirect to evil.test (127.0.0.2) is refused on the second hop."""
    from ferkit.server.fetch import FetchError, UrlFetcher

    port = int(image_site.rsplit(":", 1)[1])
    calls: list[str] = []
    answers = {"ok.test": ["127.0.0.1"], "evil.test": ["127.0.0.2"]}

    def resolver(host, _port):
        calls.append(host)
        return answers[host]

    fetcher = UrlFetcher(resolver=resolver, address_check=lambda a: None if a == "127.0.0.1" else "a test-refused address",
                         max_bytes=1024 * 1024, timeout_s=5)
    got = fetcher.fetch(f"http://ok.test:{port}/face.png")
    assert got.data == ImageHandler.files["/face.png"][1] and got.content_type == "image/png"
    with pytest.raises(FetchError) as e:
        fetcher.fetch(f"http://ok.test:{port}/redirect?to=http://evil.test:{port}/face.png")
    assert e.value.status == 403 and "127.0.0.2" in e.value.message
    assert calls == ["ok.test", "ok.test", "evil.test"]

    # DNS rebinding: the first answer is checked and used; later answers for the same hop are never asked for
    flips = iter([["127.0.0.1"], ["127.0.0.2"], ["127.0.0.2"]])
    rebinding = UrlFetcher(resolver=lambda h, p: next(flips),
                           address_check=lambda a: None if a == "127.0.0.1" else "refused", timeout_s=5)
    assert rebinding.fetch(f"http://rebind.test:{port}/face.png").data == ImageHandler.files["/face.png"][1]


def test_address_policy_table():
    from ferkit.server.fetch import address_problem

    refused = ["127.0.0.1", "127.8.9.1", "::1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
               "fe80::1", "fc00::1", "224.0.0.1", "ff02::1", "0.0.0.0", "::", "100.64.0.1", "::ffff:10.0.0.1",
               "::ffff:127.0.0.1", "240.0.0.1", "198.18.0.1"]
    public = ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
    for a in refused:
        assert address_problem(a), a
    for a in public:
        assert address_problem(a) is None, a


# ------------------------------------------------------------------------------------------------ store
def test_pagination_delete_and_restart_keep_results(tmp_path):
    data_dir = tmp_path / "data"
    srv = Server(data_dir)
    try:
        ids = []
        for i in range(5):
            r = upload(srv.client, encode(scene(squares=((20, 20, 16 * (i + 1)),))), name=f"img{i}.png")
            assert r.status_code == 200
            ids.append(r.json()["id"])
        seen, cursor, pages = [], None, 0
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = srv.client.get("/api/v1/results", params=params).json()
            assert page["total"] == 5 and page["limit"] == 2 and len(page["items"]) <= 2
            seen += [item["id"] for item in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert seen == ids[::-1] and pages == 3  # newest first, each once
        item = srv.client.get("/api/v1/results", params={"limit": 1}).json()["items"][0]
        assert item["id"] == ids[-1] and item["face_count"] == 1 and item["source_name"] == "img4.png"
        assert item["emotions"] == [fake_emotion_for_width(80)]
        assert srv.client.get(item["thumbnail_url"]).status_code == 200
        assert_error(srv.client.get("/api/v1/results", params={"cursor": "abc"}), 422, "invalid_cursor")
        assert_error(srv.client.get("/api/v1/results", params={"limit": 0}), 422)
        assert_error(srv.client.get("/api/v1/results", params={"limit": 101}), 422)

        # delete: row and files go, everything else stays
        victim = ids[2]
        folder = next(data_dir.glob(f"images/*/{victim}"))
        assert (folder / "annotated.png").is_file() and (folder / "face-0.png").is_file()
        assert srv.client.delete(f"/api/v1/results/{victim}").status_code == 204
        assert not folder.exists()
        assert_error(srv.client.get(f"/api/v1/results/{victim}"), 404, "result_not_found")
        assert_error(srv.client.get(f"/api/v1/results/{victim}/annotated"), 404)
        assert_error(srv.client.delete(f"/api/v1/results/{victim}"), 404)
        listed = [i["id"] for i in srv.client.get("/api/v1/results").json()["items"]]
        assert victim not in listed and len(listed) == 4
        before = {rid: srv.client.get(f"/api/v1/results/{rid}").json() for rid in listed}
    finally:
        srv.stop()

    srv = Server(data_dir)  # a restart on the same data dir
    try:
        page = srv.client.get("/api/v1/results").json()
        assert [i["id"] for i in page["items"]] == listed and page["total"] == 4
        for rid, old in before.items():
            assert srv.client.get(f"/api/v1/results/{rid}").json() == old
            assert srv.client.get(old["annotated_url"]).status_code == 200
        with sqlite3.connect(data_dir / "results.sqlite3") as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        srv.stop()


def test_crash_mid_request_loses_nothing_acknowledged(tmp_path):
    data_dir = tmp_path / "data"
    srv = Server(data_dir, env={"FERKIT_FAKE_DELAY_MS": "1500"})
    acked = upload(srv.client, encode(scene()), name="acked.png")
    assert acked.status_code == 200
    acked = acked.json()
    outcome: dict = {}

    def in_flight():
        try:
            with httpx.Client(base_url=srv.base, timeout=30) as c:
                outcome["response"] = upload(c, encode(scene()), name="in-flight.png")
        except httpx.TransportError as e:
            outcome["error"] = e

    t = threading.Thread(target=in_flight)
    t.start()
    time.sleep(0.6)  # the second request is inside the 1.5 s analysis
    srv.kill()
    t.join(30)
    assert "error" in outcome  # every server process died mid-analysis: never acknowledged

    srv = Server(data_dir)
    try:
        page = srv.client.get("/api/v1/results").json()
        assert [i["id"] for i in page["items"]] == [acked["id"]]
        got = srv.client.get(f"/api/v1/results/{acked['id']}").json()
        assert got["faces"] == acked["faces"]
        assert srv.client.get(acked["annotated_url"]).status_code == 200
        with sqlite3.connect(data_dir / "results.sqlite3") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        srv.stop()


def test_retention_expires_images_but_keeps_the_record(tmp_path):
    data_dir = tmp_path / "data"
    srv = Server(data_dir, "--retention-hours", str(2.0 / 3600), "--cleanup-interval", "0.5", "--keep-uploads")
    try:
        r = upload(srv.client, encode(scene()), name="short-lived.png").json()
        folder = next(data_dir.glob(f"images/*/{r['id']}"))
        assert {p.name for p in folder.iterdir()} == {"annotated.png", "face-0.png", "face-1.png", "original.png"}
        assert srv.client.get(r["original_url"]).content == encode(scene())
        assert srv.client.get(r["annotated_url"]).status_code == 200
        deadline = time.monotonic() + 10
        while folder.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not folder.exists(), "the periodic cleanup did not delete expired images"
        assert_error(srv.client.get(r["annotated_url"]), 410, "image_expired")
        assert_error(srv.client.get(r["faces"][0]["thumbnail_url"]), 410, "image_expired")
        kept = srv.client.get(f"/api/v1/results/{r['id']}").json()
        assert kept["images_expired"] is True and kept["annotated_url"] is None
        assert kept["faces"][0]["thumbnail_url"] is None and kept["faces"][0]["box"] == r["faces"][0]["box"]
    finally:
        srv.stop()


def test_originals_are_not_kept_by_default(server):
    r = upload(server.client, encode(scene()), name="private.png").json()
    folder = next(server.data_dir.glob(f"images/*/{r['id']}"))
    assert not list(folder.glob("original*")) and r["original_url"] is None
    assert_error(server.client.get(f"/api/v1/results/{r['id']}/original"), 404, "original_not_kept")


def test_overload_answers_503_and_recovers(tmp_path):
    """One analysis slot, one waiting place, 0.8 s per analysis: of 5 simultaneous requests at most 2 can be
    served, the rest get 503 with Retry-After at once; afterwards the server serves normally."""
    srv = Server(tmp_path / "data", "--max-concurrency", "1", "--max-queue", "1", env={"FERKIT_FAKE_DELAY_MS": "800"})
    try:
        data = encode(scene())
        out: list = []

        def one():
            with httpx.Client(base_url=srv.base, timeout=30) as c:
                out.append(upload(c, data))

        threads = [threading.Thread(target=one) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(r.status_code for r in out)
        busy = [r for r in out if r.status_code == 503]
        assert 1 <= codes.count(200) <= 2 and len(busy) == 5 - codes.count(200), codes
        assert busy[0].json()["error"] == "server_busy" and busy[0].headers["retry-after"] == "1"
        assert upload(srv.client, data).status_code == 200
    finally:
        srv.stop()


def test_workers_are_recycled_after_max_requests_without_errors(tmp_path):
    """--max-requests 4: the worker exits after ~4 requests and the supervisor starts a fresh one (this bounds
    memory that native code leaks); clients see only successful answers, from more than one worker pid."""
    srv = Server(tmp_path / "data", "--max-requests", "4")
    try:
        data = encode(scene())
        pids, codes = set(), []
        closing = []
        for _ in range(8):
            r = upload(srv.client, data)
            health = srv.client.get("/api/v1/health")
            codes.append(r.status_code)
            pids.add(health.json()["pid"])
            closing += [r.headers.get("connection"), health.headers.get("connection")]
        assert codes == [200] * 8
        # a worker's 4th response and those after it tell the client to close the connection (the start-up
        # check was the first worker's 1st request); the first three never do
        assert closing[:2] == [None, None] and "close" in closing[2:], closing
        assert len(pids) >= 2, pids
        assert srv.client.get("/api/v1/results").json()["total"] == 8
    finally:
        srv.stop()


def test_responses_close_the_connection_once_the_worker_is_due_for_recycling():
    """The limit-th response and those after it say `Connection: close` (replacing any connection header),
    so no client reuses a kept-alive connection that uvicorn is about to shut."""
    import asyncio

    from ferkit.server.app import CloseBeforeRecycling

    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"Connection", b"keep-alive")]})
        await send({"type": "http.response.body", "body": b"ok"})

    stops = []
    mw = CloseBeforeRecycling(inner, limit=3, on_limit=lambda: stops.append(mw.count), exit_delay=0.05)

    async def one(kind="http"):
        sent = []

        async def send(message):
            sent.append(message)

        await mw({"type": kind}, None, send)
        return sent

    async def run():
        out = [await one() for _ in range(4)]
        await one("lifespan")  # not a request: not counted
        return out

    results = asyncio.run(run())
    conn = [[v for k, v in r[0]["headers"] if k.lower() == b"connection"] for r in results]
    assert conn == [[b"keep-alive"], [b"keep-alive"], [b"close"], [b"close"]]
    assert all(r[1] == {"type": "http.response.body", "body": b"ok"} for r in results)
    assert mw.count == 4
    assert stops == [3]  # the worker's own shutdown starts once, at the limit-th request, before it answers


def test_killing_the_supervisor_takes_the_workers_down(tmp_path):
    srv = Server(tmp_path / "data")
    worker = srv.client.get("/api/v1/health").json()["pid"]
    assert worker != srv.proc.pid
    srv.proc.kill()  # SIGKILL to the supervisor only
    srv.proc.wait(10)
    deadline = time.monotonic() + 15
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        status = Path(f"/proc/{worker}/status").read_text() if Path(f"/proc/{worker}").exists() else ""
        if "State:\tZ" in status:
            break
        time.sleep(0.1)
    alive = Path(f"/proc/{worker}").exists() and "State:\tZ" not in Path(f"/proc/{worker}/status").read_text()
    srv.client.close()
    srv.log.close()
    assert not alive, "the worker outlived its supervisor"


@pytest.mark.slow
def test_two_workers_share_one_store(tmp_path):
    srv = Server(tmp_path / "data", "--workers", "2")
    try:
        data = encode(scene())
        out: list = []

        def worker():
            with httpx.Client(base_url=srv.base, timeout=60) as c:
                for _ in range(4):
                    r = upload(c, data)
                    out.append((r.status_code, r.json()["id"]))
                    out.append((c.get(f"/api/v1/results/{r.json()['id']}").status_code, None))

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(status == 200 for status, _ in out)
        assert srv.client.get("/api/v1/results").json()["total"] == 16
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------------ CLI and decoder
def test_cli_rejects_bad_settings(capsys, tmp_path):
    from ferkit.cli import main

    d = ["--data-dir", str(tmp_path / "data")]
    assert main(["serve", *d, "--retention-hours", "0", "--analyzer", FAKE]) == 2
    assert "retention" in capsys.readouterr().err
    assert main(["serve", *d, "--analyzer", "no_such_module_xyz:Thing"]) == 2
    assert "no_such_module_xyz" in capsys.readouterr().err
    assert main(["serve", *d, "--port", "0", "--analyzer", FAKE]) == 2
    capsys.readouterr()
    assert main(["serve", *d, "--max-requests", "-1", "--analyzer", FAKE]) == 2
    assert "--max-requests must be 0 (never restart) or positive" in capsys.readouterr().err
    for hours in ("1e8", "inf", "nan"):  # expiry dates past year 9999 used to fail every request with a 500
        assert main(["serve", *d, "--retention-hours", hours, "--analyzer", FAKE]) == 2
        assert "--retention-hours must be positive and at most" in capsys.readouterr().err
    not_a_model = tmp_path / "model.onnx"
    not_a_model.write_text("not a model")
    for extra in ([], ["--max-requests", "0"], ["--workers", "2"]):  # supervised or not: checked before serving
        assert main(["serve", *d, "--model", str(not_a_model), *extra]) == 2, extra
        assert "cannot load" in capsys.readouterr().err


def test_decoder_handles_modes_formats_and_exif():
    from ferkit.server.imaging import ImageError, decode_image

    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[:, :20] = (255, 0, 0)  # red left half (RGB)
    im = PIL_Image.fromarray(rgb)
    for fmt in ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"):
        buf = io.BytesIO()
        im.save(buf, format=fmt)
        d = decode_image(buf.getvalue(), max_pixels=10_000)
        assert d.bgr.shape == (30, 40, 3) and d.format == fmt, fmt
        b, g, r = (int(v) for v in d.bgr[15, 5])
        assert r > 200 and b < 60, (fmt, b, g, r)  # RGB -> BGR done right
    # 16-bit gray and RGBA
    g16 = PIL_Image.fromarray((np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50))
    buf = io.BytesIO()
    g16.save(buf, format="PNG")
    assert decode_image(buf.getvalue(), max_pixels=10_000).bgr.dtype == np.uint8
    rgba = PIL_Image.fromarray(np.zeros((30, 40, 4), np.uint8))  # fully transparent -> white
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    assert decode_image(buf.getvalue(), max_pixels=10_000).bgr.min() == 255
    # EXIF orientation 6 (rotate 90° clockwise to display): 40x30 stored -> 30x40 shown
    exif = PIL_Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes())
    d = decode_image(buf.getvalue(), max_pixels=10_000)
    assert d.bgr.shape == (40, 30, 3)
    assert d.bgr[5, 15, 2] > 200 and d.bgr[35, 15, 2] < 60  # red (was left) is now on top
    with pytest.raises(ImageError) as e:
        decode_image(buf.getvalue(), max_pixels=1000)
    assert e.value.status == 413


# ------------------------------------------------------------------------------------------------ real pipeline
def real_model_args() -> list[str] | None:
    """`ferkit serve` arguments for the real pipeline: `--model $FERKIT_TEST_MODEL` when that variable names an
    .onnx, else the bundled model; None when neither (or ferkit.pipeline) is there yet."""
    try:
        from ferkit import pipeline  # noqa: F401
        from ferkit.runtime import resolve_model_path

        env = os.environ.get("FERKIT_TEST_MODEL")
        if env and Path(env).is_file():
            return ["--model", env]
        resolve_model_path(None)
        return []
    except Exception:  # noqa: BLE001 - not built yet, or no bundled model
        return None


STUB_PLUGIN = '''
import numpy as np
from ferkit import pipeline
from ferkit.labels import EMOTIONS


class StubClassifier:
    """Constant probabilities (happy 0.4): the real detector, crops and drawing, without a trained model."""
    labels = EMOTIONS
    path = "stub-classifier.onnx"

    def predict_proba(self, crops):
        p = np.full((len(crops), len(EMOTIONS)), 0.1)
        p[:, EMOTIONS.index("happy")] = 0.4
        return p


def make():
    return pipeline.Analyzer(model=StubClassifier())
'''


def test_real_detector_and_drawing_through_the_server(tmp_path, faces_dev):
    """ferkit.pipeline.Analyzer (real face detector, crops, draw_results) behind the server, with a stub
    classifier so it runs before the bundled model exists."""
    pytest.importorskip("ferkit.pipeline")
    (tmp_path / "stub_plugin.py").write_text(STUB_PLUGIN)
    env = {"PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    srv = Server(tmp_path / "data", analyzer="stub_plugin:make", env=env)
    try:
        assert srv.client.get("/api/v1/health").json()["model"] == "stub-classifier"
        photo = sorted((faces_dev / "images").glob("*.jpg"))[0]
        r = upload(srv.client, photo.read_bytes(), name=photo.name, ctype="image/jpeg")
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["faces"]) >= 1 and body["faces"][0]["emotion"] == "happy"
        assert 0 < body["faces"][0]["detection_score"] <= 1
        x, y, w, h = body["faces"][0]["box"]
        assert w >= 40 and h >= 40 and x + w <= body["width"] and y + h <= body["height"]
        ann = srv.client.get(body["annotated_url"])
        img = cv2.imdecode(np.frombuffer(ann.content, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape[:2] == (body["height"], body["width"])
        assert upload(srv.client, encode(np.full((240, 320, 3), 128, np.uint8))).json()["faces"] == []
    finally:
        srv.stop()


@pytest.mark.slow
def test_real_pipeline_on_a_photo(tmp_path, request):
    model_args = real_model_args()
    if model_args is None:
        pytest.skip("ferkit.pipeline or the bundled model (src/ferkit/assets/default.onnx) is not there yet")
    from conftest import FACES_DEV

    srv = Server(tmp_path / "data", *model_args, analyzer=None)
    try:
        h = srv.client.get("/api/v1/health").json()
        assert h["analyzer_ready"] and h["model"]
        blank = upload(srv.client, encode(np.full((240, 320, 3), 128, np.uint8)), name="blank.png")
        assert blank.status_code == 200 and blank.json()["faces"] == []
        photos = sorted((FACES_DEV / "images").glob("*.jpg"))[:3] if (FACES_DEV / "images").is_dir() else []
        if not photos:
            pytest.skip("faces-dev photos not found; only the no-face case was checked")
        found = 0
        for photo in photos:
            r = upload(srv.client, photo.read_bytes(), name=photo.name, ctype="image/jpeg")
            assert r.status_code == 200, r.text
            for f in r.json()["faces"]:
                found += 1
                assert f["emotion"] in f["probabilities"] and abs(sum(f["probabilities"].values()) - 1) < 1e-3
                x, y, w, h = f["box"]
                assert w > 20 and h > 20 and 0 <= x < r.json()["width"] and 0 <= y < r.json()["height"]
                assert srv.client.get(f["thumbnail_url"]).status_code == 200
        assert found >= 1
    finally:
        srv.stop()


def test_server_never_imports_torch(tmp_path):
    code = (
        "import sys; from ferkit.server import create_app, ServerSettings; "
        "from ferkit.server.fake import BlobAnalyzer; import ferkit.commands.serve; "
        f"create_app(ServerSettings(data_dir={str(tmp_path)!r}), analyzer=BlobAnalyzer()); "
        "import ferkit.server.analysis, ferkit.server.fetch, ferkit.server.imaging; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_face_thumbnail_slides_inside_the_image_and_pads_only_when_needed():
    from ferkit.server.imaging import face_thumbnail

    img = np.zeros((200, 300, 3), np.uint8)
    img[:, :, 1] = 255  # all green
    img[0:40, 0:40] = (255, 0, 255)  # a "face" in the top-left corner
    t = face_thumbnail(img, (0, 0, 40, 40), 64)
    assert t.shape == (64, 64, 3)
    assert not np.any(np.all(t == 128, axis=2))  # no padding: the window slid inside the image
    assert tuple(int(v) for v in t[5, 5]) == (255, 0, 255)  # the face is in it, at the corner
    huge = face_thumbnail(img, (0, 0, 300, 200), 64)  # the square is larger than the image: padded
    assert np.any(np.all(huge == 128, axis=2))
