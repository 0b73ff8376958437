"""The FastAPI application: REST API v1, the web page, and the result store.

    from ferkit.server import create_app, ServerSettings
    app = create_app(ServerSettings(data_dir="data"))           # ferkit's pipeline, loaded at startup
    app = create_app(settings, analyzer=my_analyzer)             # any object with analyze(image_bgr)

Run it with ``ferkit serve`` (uvicorn). Every error answer is JSON ``{"error", "message", "status"}``.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import FerkitError
from .analysis import ServerAnalyzer, load_analyzer
from .errors import ApiError
from .fetch import UrlFetcher
from .imaging import decode_image, encode_png, extension_for, face_thumbnail, fit_within
from .schemas import (AnalysisOut, AnalyzeUrlRequest, ErrorOut, FaceOut, HealthOut, ResultsPage,
                      ResultSummary)
from .settings import ServerSettings
from .store import ResultStore, StoredResult, valid_id

log = logging.getLogger("ferkit.server")

STATIC_DIR = Path(__file__).resolve().parent / "static"
API_PREFIX = "/api/v1"
JSON_BODY_LIMIT = 64 * 1024  # bytes: a {"url": ...} body is tiny
MULTIPART_OVERHEAD = 64 * 1024  # bytes allowed on top of the image for multipart framing and small fields
DRAIN_LIMIT = 64 * 1024 * 1024  # bytes of an over-limit body read and discarded so the client sees the 413
DRAIN_SECONDS = 10.0  # and the longest time spent doing so
MAX_URL_FETCHES = 8  # URL downloads in progress at once per worker; more are answered 503 (threads stay free)

PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
    "connect-src 'self'; script-src 'self'; style-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


_STATUS_CODES = {
    400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 410: "gone",
    413: "payload_too_large", 415: "unsupported_media_type", 422: "unprocessable", 429: "too_many_requests",
    500: "internal_error", 502: "bad_gateway", 503: "unavailable", 504: "gateway_timeout",
}


def _error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, "status": status}, status_code=status, headers=headers)


def _iso(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorOut, "description": d} for s, d in {
        403: "the URL points at a refused (non-public) address",
        413: "upload or download over the byte limit, or image over the pixel limit",
        415: "not an image, or an unsupported image type or request content type",
        422: "empty, truncated or corrupt image, or an invalid request",
        502: "the URL could not be fetched",
        503: "the model is not loaded yet, or too many requests are waiting",
        504: "the URL took too long",
    }.items()
}


class _SecurityHeaders:
    """Pure ASGI middleware: nosniff/referrer headers everywhere, a strict CSP on the web page."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        page = path == "/" or path.startswith("/static/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"referrer-policy", b"no-referrer"))
                if page:
                    headers.append((b"content-security-policy", PAGE_CSP.encode()))
                    headers.append((b"x-frame-options", b"DENY"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


# -- request bodies ------------------------------------------------------------------------------------------
async def _drain(stream, already: int, declared: int | None = None) -> None:
    """Read and discard the rest of an over-limit body (up to DRAIN_LIMIT bytes, for at most DRAIN_SECONDS) so
    that a client which writes its whole body before reading can read our 413. A body declared larger than
    DRAIN_LIMIT is not read at all: the 413 goes out at once and the connection is closed."""
    if declared is not None and declared > DRAIN_LIMIT:
        return

    async def drain() -> None:
        seen = already
        async for chunk in stream:
            seen += len(chunk)
            if seen > DRAIN_LIMIT:
                break

    with contextlib.suppress(Exception):  # the time limit holds even for a client that sends nothing more
        await asyncio.wait_for(drain(), DRAIN_SECONDS)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "image_too_large",
        f"the upload is over this server's limit of {limit:,} bytes ({limit / 1048576:.1f} MiB); "
        "send a smaller or more compressed image",
    )


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, "bad_request", f"invalid Content-Length header {value!r}") from None


async def read_limited_body(request: Request, limit: int, too_large: ApiError) -> bytes:
    """The request body, refused with ``too_large`` as soon as more than ``limit`` bytes have arrived."""
    stream = request.stream()
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        await _drain(stream, 0, declared)
        raise too_large
    buf = bytearray()
    async for chunk in stream:
        buf += chunk
        if len(buf) > limit:
            await _drain(stream, len(buf))
            raise too_large
    return bytes(buf)


async def read_multipart_image(request: Request, boundary: bytes, limit: int) -> tuple[bytes, str | None]:
    """Stream-parse a multipart/form-data body; returns (image bytes, file name). The image part is the first
    part with a file name, or the part named ``file`` / ``image``. Refused (413) as soon as it exceeds ``limit``."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    too_large = _too_large(limit)
    state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "is_image": False, "image": None,
                             "filename": None}
    image = bytearray()

    def on_part_begin():
        state["headers"] = {}
        state["is_image"] = False

    def on_header_field(data, start, end):
        state["field"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        state["headers"][state["field"].decode("latin-1").lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished():
        disposition = state["headers"].get("content-disposition", b"")
        _kind, params = parse_options_header(disposition)
        name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        if state["image"] is None and (filename is not None or name in ("file", "image")):
            state["is_image"] = True
            state["image"] = True
            state["filename"] = filename.decode("utf-8", "replace") if filename else None

    def on_part_data(data, start, end):
        if state["is_image"]:
            image.extend(data[start:end])
            if len(image) > limit:
                raise too_large

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
    })
    stream = request.stream()
    declared = _declared_length(request)
    if declared is not None and declared > limit + MULTIPART_OVERHEAD:
        await _drain(stream, 0)
        raise too_large
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > limit + MULTIPART_OVERHEAD:
                raise too_large
            parser.write(chunk)
        parser.finalize()
    except ApiError:
        await _drain(stream, received)
        raise
    except Exception as e:  # python-multipart's parse errors
        raise ApiError(422, "invalid_multipart", f"the multipart/form-data body is malformed ({e})") from None
    if state["image"] is None:
        raise ApiError(422, "missing_file", "the form has no file; send the image in a form field named `file`")
    name = state["filename"]
    if name:
        name = os.path.basename(name.replace("\\", "/"))[:200] or None
    return bytes(image), name


# -- the app -------------------------------------------------------------------------------------------------
class ServerState:
    """Per-worker state shared by the request handlers."""

    def __init__(self, settings: ServerSettings, analyzer: ServerAnalyzer | None):
        self.settings = settings
        self.store = ResultStore(settings.data_dir)
        self.fetcher = UrlFetcher(
            allow_private=settings.allow_private_urls, max_bytes=settings.max_upload_bytes,
            timeout_s=settings.url_timeout_s, max_redirects=settings.url_max_redirects,
        )
        self.analyzer = analyzer
        self.analyzer_error: str | None = None
        self.started = time.monotonic()
        self.slots = asyncio.Semaphore(settings.max_concurrency)
        self.waiting = 0  # requests waiting for a slot (event-loop only, so no lock needed)
        self.fetching = 0  # URL downloads in progress (event-loop only)

    # runs in a worker thread
    def process(self, data: bytes, *, source: str, source_name: str | None, persist: bool) -> dict[str, Any]:
        """Decode, analyse, and (when ``persist``) store one image; returns the stored row as a dict."""
        if self.analyzer is None:
            raise ApiError(503, "model_not_ready", self.analyzer_error or "the model is still loading; retry shortly")
        t0 = time.perf_counter()
        decoded = decode_image(data, max_pixels=self.settings.max_pixels)  # ImageError is an ApiError
        try:
            faces = self.analyzer.analyze(decoded.bgr)
        except FerkitError as e:
            raise ApiError(422, "analysis_failed", str(e)) from None
        elapsed_ms = (time.perf_counter() - t0) * 1000.0
        created = time.time()
        row = {
            "id": uuid.uuid4().hex, "created_at": created, "expires_at": created + self.settings.retention_s,
            "width": decoded.width, "height": decoded.height, "model": self.analyzer.model_name,
            "elapsed_ms": round(elapsed_ms, 2), "source": source, "source_name": source_name,
            "faces": [f.to_dict() for f in faces], "has_original": False, "original_ext": None,
            "images_deleted": False,
        }
        if persist:
            files: dict[str, bytes] = {}
            annotated, _ = fit_within(self.analyzer.annotate(decoded.bgr, faces), self.settings.annotated_max_side)
            files["annotated.png"] = encode_png(annotated)
            for i, face in enumerate(faces):
                thumb = face_thumbnail(decoded.bgr, face.box, self.settings.thumbnail_size)
                files[f"face-{i}.png"] = encode_png(thumb)
            if self.settings.keep_uploads:
                row["has_original"], row["original_ext"] = True, extension_for(decoded.format)
                files[f"original{row['original_ext']}"] = data
            self.store.write_files(row["id"], files)  # files first, then the commit: nothing acknowledged is lost
            self.store.insert(row)
        return row


def _result_out(row: StoredResult | dict[str, Any], stored: bool, root: str) -> AnalysisOut:
    r = row if isinstance(row, dict) else row.__dict__
    rid = r["id"]
    available = stored and not r["images_deleted"] and time.time() < r["expires_at"]
    base = f"{root}{API_PREFIX}/results/{rid}"
    faces = [
        FaceOut(index=i, box=tuple(f["box"]), emotion=f["emotion"], score=f["score"],
                probabilities=f["probabilities"], detection_score=f.get("detection_score"),
                thumbnail_url=f"{base}/faces/{i}/thumbnail" if available else None)
        for i, f in enumerate(r["faces"])
    ]
    return AnalysisOut(
        id=rid, width=r["width"], height=r["height"], faces=faces, model=r["model"], elapsed_ms=r["elapsed_ms"],
        created_at=_iso(r["created_at"]), source=r["source"], source_name=r["source_name"], stored=stored,
        annotated_url=f"{base}/annotated" if available else None,
        original_url=f"{base}/original" if available and r["has_original"] else None,
        expires_at=_iso(r["expires_at"]) if stored else None,
        images_expired=stored and not available,
    )


def _summary(row: StoredResult, root: str) -> ResultSummary:
    available = row.images_available()
    base = f"{root}{API_PREFIX}/results/{row.id}"
    return ResultSummary(
        id=row.id, created_at=_iso(row.created_at), width=row.width, height=row.height, face_count=len(row.faces),
        emotions=[f["emotion"] for f in row.faces], source=row.source, source_name=row.source_name,
        model=row.model, url=base, annotated_url=f"{base}/annotated" if available else None,
        thumbnail_url=f"{base}/faces/0/thumbnail" if available and row.faces else None,
    )


def _mount_docs(app: FastAPI) -> None:
    """/docs and /redoc from locally installed assets (fastapi-offline), never from a CDN."""
    try:
        import fastapi_offline
    except ImportError:  # pragma: no cover - the serve extra installs it
        log.warning("fastapi-offline is not installed: /docs is disabled (its assets would come from a CDN)")
        return
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    assets = Path(fastapi_offline.__file__).resolve().parent / "static"
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request):
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json", title="ferkit API",
            swagger_js_url=f"{root}/docs-assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs-assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/static/favicon.svg",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request):
        root = request.scope.get("root_path", "")
        return get_redoc_html(openapi_url=f"{root}/openapi.json", title="ferkit API",
                              redoc_js_url=f"{root}/docs-assets/redoc.standalone.js", with_google_fonts=False,
                              redoc_favicon_url=f"{root}/static/favicon.svg")


def create_app(settings: ServerSettings | None = None, analyzer: Any = None) -> FastAPI:
    """The ferkit web app. ``analyzer``: an object with ``analyze(image_bgr)``, a callable, a
    :class:`ServerAnalyzer`, or None to load ferkit's pipeline (``settings.model``) when the app starts."""
    settings = settings or ServerSettings()
    wrapped = None
    if analyzer is not None:
        wrapped = analyzer if isinstance(analyzer, ServerAnalyzer) else ServerAnalyzer(analyzer)
    state = ServerState(settings, wrapped)

    async def cleanup_loop():
        while True:
            try:
                counts = await run_in_threadpool(state.store.cleanup)
                if counts["expired"] or counts["orphans"]:
                    log.info("cleanup: deleted images of %d expired results, %d orphan folders",
                             counts["expired"], counts["orphans"])
            except Exception:  # noqa: BLE001 - keep sweeping on the next round
                log.exception("cleanup failed")
            await asyncio.sleep(settings.cleanup_interval_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if state.analyzer is None:
            try:
                state.analyzer = await run_in_threadpool(load_analyzer, settings)  # once per worker process
            except FerkitError as e:
                state.analyzer_error = f"the model could not be loaded: {e}"
                log.error(state.analyzer_error)
                raise
        task = asyncio.create_task(cleanup_loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            state.store.close()

    app = FastAPI(
        title="ferkit API",
        version=__version__,
        description=(
            "Finds faces in an image and tells which emotion each one shows. Upload an image (multipart field "
            "`file`, or the raw bytes with an `image/*` content type) or send JSON `{\"url\": ...}` to "
            "`POST /api/v1/analyze`. Boxes are (x, y, w, h) in image pixels. Errors are JSON "
            "`{error, message, status}`."
        ),
        lifespan=lifespan, docs_url=None, redoc_url=None,
    )
    app.state.ferkit = state
    app.add_middleware(_SecurityHeaders)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return _error_response(exc.status, exc.code, exc.message, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"nothing at {request.url.path}; the API lives under {API_PREFIX}/ (see /docs)"
        return _error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return _error_response(422, "invalid_request", "invalid request: " + "; ".join(parts))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error_response(500, "internal_error", "the server failed on this request (see its log); "
                                                      "it keeps serving other requests")

    # every /api/v1 route answers a bad parameter with ferkit's error body, not FastAPI's {"detail": [...]}
    api = APIRouter(prefix=API_PREFIX, responses={422: ERROR_RESPONSES[422]})

    analyze_body = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": {
                    "type": "object", "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary",
                                            "description": "JPEG, PNG, WebP, BMP, TIFF or GIF image"}},
                }},
                "application/json": {"schema": AnalyzeUrlRequest.model_json_schema()},
                "image/*": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }

    @api.post(
        "/analyze", response_model=AnalysisOut, responses=ERROR_RESPONSES, openapi_extra=analyze_body, tags=["analysis"],
        summary="Analyse an image: find faces and their emotions",
    )
    async def analyze(
        request: Request,
        persist: bool = Query(True, description="store the result and its images; false for live camera frames "
                                                "(nothing is written, no image URLs)"),
    ) -> AnalysisOut:
        """Send the image as multipart field `file`, as a raw body with an `image/*` (or
        `application/octet-stream`) content type, or JSON `{"url": "https://..."}` for an image on the web."""
        limit = settings.max_upload_bytes
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";", 1)[0].strip().lower()
        if media == "multipart/form-data":
            from python_multipart.multipart import parse_options_header

            _t, params = parse_options_header(content_type)
            boundary = params.get(b"boundary")
            if not boundary:
                raise ApiError(422, "invalid_multipart", "multipart/form-data without a boundary parameter")
            data, name = await read_multipart_image(request, boundary, limit)
            source = "upload"
        elif media == "application/json":
            body = await read_limited_body(request, JSON_BODY_LIMIT, ApiError(
                413, "request_too_large", f"a JSON body must be under {JSON_BODY_LIMIT} bytes"))
            try:
                req = AnalyzeUrlRequest.model_validate_json(body)
            except ValidationError as e:
                msg = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors())
                raise ApiError(422, "invalid_request", f'expected JSON {{"url": "https://..."}}: {msg}') from None
            if state.fetching >= MAX_URL_FETCHES:
                raise ApiError(503, "server_busy", f"the server is already downloading {state.fetching} URLs; "
                                                  "retry in a moment")
            state.fetching += 1
            try:
                fetched = await run_in_threadpool(state.fetcher.fetch, req.url.strip())  # FetchError is an ApiError
            finally:
                state.fetching -= 1
            data, name, source = fetched.data, req.url.strip()[:2000], "url"
        elif media.startswith("image/") or media == "application/octet-stream":
            data = await read_limited_body(request, limit, _too_large(limit))
            name, source = None, "upload"
        else:
            raise ApiError(
                415, "unsupported_media_type",
                f"unsupported request content type {media or '(none)'!r}; send multipart/form-data with a `file` "
                'field, the raw image with an image/* content type, or JSON {"url": "https://..."}',
            )
        if state.slots.locked() and state.waiting >= settings.max_queue:
            raise ApiError(503, "server_busy", f"the server is busy ({state.waiting} requests waiting); retry in a moment")
        state.waiting += 1
        try:
            await state.slots.acquire()  # at most max_concurrency analyses at once in this worker, FIFO
        finally:
            state.waiting -= 1
        try:
            row = await run_in_threadpool(state.process, data, source=source, source_name=name, persist=persist)
        finally:
            state.slots.release()
        return _result_out(row, stored=persist, root=request.scope.get("root_path", ""))

    def _get_row(result_id: str) -> StoredResult:
        row = state.store.get(result_id) if valid_id(result_id) else None
        if row is None:
            raise ApiError(404, "result_not_found", f"no result with id {result_id!r} (deleted, or never existed)")
        return row

    def _image_file(row: StoredResult, path: Path) -> FileResponse:
        if not row.images_available():
            if not row.images_deleted:
                state.store.expire_images(row.id)
            raise ApiError(410, "image_expired", "this result's images were deleted after the retention period; "
                                                 "the numbers are still at the result URL")
        if not path.is_file():
            raise ApiError(404, "image_not_found", "this image does not exist for this result")
        return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})

    @api.get("/results", response_model=ResultsPage, tags=["results"], summary="Recent results, newest first")
    def list_results(
        request: Request,
        limit: int = Query(20, ge=1, le=100, description="results per page"),
        cursor: str | None = Query(None, description="`next_cursor` of the previous page"),
    ) -> ResultsPage:
        before = None
        if cursor:
            if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):  # an int SQLite can hold
                raise ApiError(422, "invalid_cursor", "cursor must be a `next_cursor` value from a previous page")
            before = int(cursor)
        rows, total = state.store.recent(limit + 1, before)  # one extra row tells whether a next page exists
        more, rows = len(rows) > limit, rows[:limit]
        root = request.scope.get("root_path", "")
        return ResultsPage(items=[_summary(r, root) for r in rows], total=total, limit=limit,
                           next_cursor=str(rows[-1].seq) if more else None)

    @api.get("/results/{result_id}", response_model=AnalysisOut, tags=["results"], responses={404: {"model": ErrorOut}},
             summary="One stored result")
    def get_result(result_id: str, request: Request) -> AnalysisOut:
        return _result_out(_get_row(result_id), stored=True, root=request.scope.get("root_path", ""))

    png = {"content": {"image/png": {}}, "description": "PNG image"}

    @api.get("/results/{result_id}/annotated", response_class=FileResponse, tags=["results"],
             responses={200: png, 404: {"model": ErrorOut}, 410: {"model": ErrorOut}},
             summary="The image with face boxes and emotion labels (PNG)")
    def get_annotated(result_id: str):
        row = _get_row(result_id)
        return _image_file(row, state.store.annotated_path(row.id))

    @api.get("/results/{result_id}/faces/{index}/thumbnail", response_class=FileResponse, tags=["results"],
             responses={200: png, 404: {"model": ErrorOut}, 410: {"model": ErrorOut}},
             summary="Square crop of one face (PNG)")
    def get_thumbnail(result_id: str, index: int):
        row = _get_row(result_id)
        if not 0 <= index < len(row.faces):
            raise ApiError(404, "face_not_found", f"result {row.id} has {len(row.faces)} faces; no face {index}")
        return _image_file(row, state.store.thumbnail_path(row.id, index))

    @api.get("/results/{result_id}/original", response_class=FileResponse, tags=["results"],
             responses={404: {"model": ErrorOut}, 410: {"model": ErrorOut}},
             summary="The original image (only kept with --keep-uploads)")
    def get_original(result_id: str):
        row = _get_row(result_id)
        if not row.has_original:
            raise ApiError(404, "original_not_kept", "the original is not kept (start the server with --keep-uploads)")
        return _image_file(row, state.store.original_path(row.id, row.original_ext or ".bin"))

    @api.delete("/results/{result_id}", status_code=204, response_class=Response, tags=["results"],
                responses={404: {"model": ErrorOut}}, summary="Delete a result and its images")
    def delete_result(result_id: str):
        if not state.store.delete(result_id):
            raise ApiError(404, "result_not_found", f"no result with id {result_id!r}")
        return Response(status_code=204)

    @api.get("/health", response_model=HealthOut, tags=["service"], summary="Liveness and model status")
    def health() -> HealthOut:
        ready = state.analyzer is not None
        return HealthOut(
            status="ok" if ready else ("error" if state.analyzer_error else "loading"),
            version=__version__, model=state.analyzer.model_name if ready else None, analyzer_ready=ready,
            results=state.store.count(), uptime_s=round(time.monotonic() - state.started, 3), pid=os.getpid(),
            limits={"max_upload_bytes": settings.max_upload_bytes, "max_pixels": settings.max_pixels,
                    "retention_hours": settings.retention_hours, "url_timeout_s": settings.url_timeout_s},
        )

    app.include_router(api)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _mount_docs(app)
    return app


def _die_with_parent() -> None:
    """Linux: ask the kernel to send this worker SIGTERM when its supervisor dies (even by SIGKILL), so a
    crashed ``ferkit serve`` never leaves orphan workers holding the port."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):  # pragma: no cover - no prctl
        return
    if os.getppid() == 1:  # the supervisor died before the request above
        os.kill(os.getpid(), signal.SIGTERM)


def _stop_this_worker() -> None:
    """uvicorn's graceful shutdown of this worker process: its listening socket is closed first, requests in
    flight are answered, then the process exits and the supervisor starts a fresh one."""
    os.kill(os.getpid(), signal.SIGTERM)


class CloseBeforeRecycling:
    """ASGI middleware for a worker that is restarted after ``limit`` requests (``--max-requests``): it is what
    stops the worker (uvicorn's own request limit is not used).

    Two races would otherwise show clients a dropped connection. A stopping worker closes its connections: a
    client that has just sent its next request on a kept-alive connection would see it reset, so from the
    ``limit``-th request on every response says ``Connection: close``. And a client that then opens a new
    connection may be accepted by this very worker before it stops listening, and dropped unanswered by its
    shutdown (measured, when uvicorn's request limit stopped the worker: 1 run in 12 of
    tests/test_server_api.py's recycling test). So at the ``limit``-th request the worker starts its own
    shutdown (``on_limit``, default: SIGTERM to itself, which makes uvicorn stop listening first) and holds
    that response ``exit_delay`` seconds, past uvicorn's next tick: by the time the client reconnects, only a
    live worker (or the listening backlog, until the fresh one is up) can take the connection."""

    def __init__(self, app, limit: int, *, on_limit=_stop_this_worker, exit_delay: float = 0.3):
        self.app, self.limit, self.count = app, int(limit), 0
        self.on_limit, self.exit_delay = on_limit, float(exit_delay)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.count += 1
        if self.count < self.limit:
            return await self.app(scope, receive, send)
        if self.count == self.limit:
            self.on_limit()
            await asyncio.sleep(self.exit_delay)

        async def send_closing(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        return await self.app(scope, receive, send_closing)


def app_from_env() -> FastAPI:
    """uvicorn factory for supervised workers: settings from ``$FERKIT_SERVE_SETTINGS``; each worker process
    loads the model once at start-up. With ``max_requests`` set (``ferkit serve --max-requests``) responses
    close their connection once the worker is due to be recycled."""
    _die_with_parent()
    settings = ServerSettings.from_env()
    app = create_app(settings)
    if settings.max_requests > 0:  # up to 10% more, drawn per worker, so workers do not all restart at once
        jitter = random.randint(0, settings.max_requests // 10)
        app.add_middleware(CloseBeforeRecycling, limit=settings.max_requests + jitter)
    return app
