"""``ferkit serve``: the web page and REST API (FastAPI + uvicorn). Imports nothing heavy at import time."""
from __future__ import annotations

import os
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="web page and REST API for photo, URL and live camera analysis",
        description=(
            "Serve the ferkit web page and REST API (docs at /docs). Results are stored in SQLite under "
            "--data-dir; derived images are deleted after --retention-hours. Needs the serve extra: "
            "pip install 'ferkit[serve]'."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes it to your network)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="worker processes; each loads the model once (default 1)")
    p.add_argument("--data-dir", default=None,
                   help="where results live (default: $FERKIT_SERVER_DATA or ~/.local/share/ferkit/server)")
    p.add_argument("--keep-uploads", action="store_true", help="also keep the original images (deleted with the rest)")
    p.add_argument("--retention-hours", type=float, default=24.0,
                   help="delete annotated images and thumbnails this many hours after the analysis (default 24)")
    p.add_argument("--allow-private-urls", action="store_true",
                   help="let {\"url\": ...} fetch from loopback/private/link-local addresses (off: SSRF protection)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload or fetched image, MiB (default 20)")
    p.add_argument("--max-megapixels", type=float, default=50.0,
                   help="largest image (width x height, millions of pixels), checked before decoding (default 50)")
    p.add_argument("--url-timeout", type=float, default=10.0, help="seconds allowed to fetch one image URL (default 10)")
    p.add_argument("--model", default=None, help="an .onnx from `ferkit export` or a bundled model name (default: bundled)")
    p.add_argument("--detector", default=None, help="face detector name (default: the pipeline's choice)")
    p.add_argument("--max-concurrency", type=int, default=2, help="analyses running at once in each worker (default 2)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests allowed to wait for an analysis in each worker; beyond it the answer is 503 (default 64)")
    p.add_argument("--max-requests", type=int, default=10000,
                   help="restart each worker after about this many requests (10%% jitter), which bounds memory "
                        "that native libraries leak (the YuNet detector leaks ~36 KB per image); 0 = never, and "
                        "run as one plain process (default 10000)")
    p.add_argument("--cleanup-interval", type=float, default=600.0, help="seconds between sweeps of expired images (default 600)")
    p.add_argument("--analyzer", default=None, metavar="MODULE:NAME",
                   help="advanced: use a custom analyzer (an object with analyze(image_bgr), or a zero-argument "
                        "factory), e.g. ferkit.server.fake:BlobAnalyzer for a model-free demo")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level (default info)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import FerkitError

    try:
        import fastapi  # noqa: F401
        import httpx  # noqa: F401
        import PIL  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise FerkitError(f"`ferkit serve` needs the serve extra ({e.name} is missing): pip install 'ferkit[serve]'") from None
    from ..server.settings import MB, SETTINGS_ENV, ServerSettings, default_data_dir

    if not 0 < args.port < 65536:
        raise FerkitError(f"--port must be 1-65535, got {args.port}")
    if args.workers < 1:
        raise FerkitError(f"--workers must be at least 1, got {args.workers}")
    if not args.max_upload_mb > 0 or not args.max_megapixels > 0:
        raise FerkitError("--max-upload-mb and --max-megapixels must be positive")
    settings = ServerSettings(
        data_dir=args.data_dir or default_data_dir(), keep_uploads=args.keep_uploads,
        retention_hours=args.retention_hours, allow_private_urls=args.allow_private_urls,
        max_upload_bytes=int(args.max_upload_mb * MB), max_pixels=int(args.max_megapixels * 1_000_000),
        url_timeout_s=args.url_timeout, model=args.model, detector=args.detector, analyzer=args.analyzer,
        max_concurrency=args.max_concurrency, max_queue=args.max_queue, cleanup_interval_s=args.cleanup_interval,
        max_requests=args.max_requests,
    )
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FerkitError(f"cannot create the data directory {settings.data_dir}: {e}") from None

    from ..server.analysis import check_analyzer_settings, load_analyzer

    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    common = dict(host=args.host, port=args.port, log_level=args.log_level, server_header=False,
                  timeout_graceful_shutdown=10)
    supervised = args.workers > 1 or args.max_requests > 0
    if supervised:
        check_analyzer_settings(settings)  # a bad --model/--analyzer fails here, not in N workers
        model_name = settings.analyzer or settings.model or "default"
    else:
        from ..server.app import create_app

        analyzer = load_analyzer(settings)  # a bad --model fails here with a one-line error
        app = create_app(settings, analyzer=analyzer)
        model_name = analyzer.model_name
    recycle = f", each restarted after ~{args.max_requests} requests" if args.max_requests else ""
    print(f"ferkit serve: http://{shown_host}:{args.port}/  (model {model_name}, {args.workers} worker(s){recycle}; "
          f"data in {settings.data_dir}; API docs at /docs)", file=sys.stderr, flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print("ferkit serve: warning: listening beyond this machine; anyone who can reach it can analyse images "
              "and see stored results", file=sys.stderr, flush=True)
    if not supervised:
        uvicorn.run(app, **common)
        return 0
    # N worker processes under uvicorn's supervisor, which restarts a worker that exits; with --max-requests a
    # worker stops itself after about that many requests (server.app.CloseBeforeRecycling, 10% jitter)
    from uvicorn.supervisors import Multiprocess

    os.environ[SETTINGS_ENV] = settings.to_json()
    config = uvicorn.Config(
        "ferkit.server.app:app_from_env", factory=True, workers=args.workers, **common,
    )
    try:
        sock = config.bind_socket()
    except SystemExit:
        raise FerkitError(f"cannot listen on {args.host}:{args.port} (in use, or not an address of this machine)") from None
    try:
        Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:
        pass
    return 0
