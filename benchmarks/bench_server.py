"""Load test of `ferkit serve`: N concurrent clients for T seconds, against in-process baselines in the same run.

    python benchmarks/bench_server.py                       # 8 clients, 30 s, real model if bundled
    python benchmarks/bench_server.py --clients 8 --duration 30 --workers 1 --image photo.jpg
    python benchmarks/bench_server.py --analyzer ferkit.server.fake:BlobAnalyzer   # no model needed

Rows:
  http          `ferkit serve` in a subprocess on loopback; each client a keep-alive connection posting the
                image as multipart (the result is stored: SQLite commit, annotated PNG, thumbnails).
  in-process    the same work without HTTP: decode + analyse + draw + encode + store (ServerState.process),
                from as many threads as the server runs analyses at once (--max-concurrency x --workers).
  analyze-only  decode + analyse only, same threads (the floor: what the model and detector cost).
HTTP latency includes queueing (N clients share the server's analysis slots); in-process latency does not,
so compare throughput (req/s) first.
Memory: the server's resident set (VmRSS, summed over its processes) after warm-up and at the end, and
its peak (VmHWM). Linux only for the memory columns.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
FACES_DEV = Path(os.environ.get("FERKIT_DATA_DIR", ROOT.parent / "shared" / "data")) / "faces-dev"
FAKE = "ferkit.server.fake:BlobAnalyzer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pids(pid: int) -> list[int]:
    """pid and its descendants (uvicorn workers), from /proc."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_mb(pid: int, key: str) -> float:
    return sum(proc_kb(p, key) for p in tree_pids(pid)) / 1024.0


def default_image(fake: bool) -> tuple[bytes, str]:
    """The first faces-dev photo (real model), or a generated image with one magenta "face" (stand-in)."""
    if not fake and (FACES_DEV / "images").is_dir():
        photos = sorted((FACES_DEV / "images").glob("*.jpg"))
        if photos:
            return photos[0].read_bytes(), f"faces-dev/{photos[0].name}"
    import cv2

    img = np.full((480, 640, 3), (200, 210, 220), np.uint8)
    img[100:228, 200:328] = (255, 0, 255)  # a "face" for the fake analyzer
    ok, buf = cv2.imencode(".jpg", img)
    return buf.tobytes(), "generated 640x480 JPEG"


def real_model_available(model: str | None = None) -> bool:
    try:
        from ferkit import pipeline  # noqa: F401
        from ferkit.runtime import resolve_model_path

        resolve_model_path(model)
        return True
    except Exception:  # noqa: BLE001
        return False


def summarize(latencies_s: list[float], errors: int, wall_s: float) -> dict:
    lat = sorted(latencies_s)
    n = len(lat)
    return {
        "n": n, "errors": errors, "rps": n / wall_s if wall_s > 0 else 0.0,
        "p50": 1000 * lat[n // 2] if n else float("nan"),
        "p99": 1000 * lat[min(n - 1, int(0.99 * n))] if n else float("nan"),
        "mean": 1000 * statistics.fmean(lat) if n else float("nan"),
    }


def run_threads(clients: int, duration: float, call) -> dict:
    """``clients`` threads call ``call(worker_index)`` in a loop for ``duration`` s; returns the summary."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def loop(i: int) -> None:
        mine: list[float] = []
        bad = 0
        start_gate.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                ok = call(i)
            except Exception:  # noqa: BLE001 - counted
                ok = False
            if ok:
                mine.append(time.perf_counter() - t0)
            else:
                bad += 1
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    t_start = time.perf_counter()
    stop_at[0] = t_start + duration
    start_gate.wait()
    for t in threads:
        t.join()
    return summarize(latencies, errors[0], time.perf_counter() - t_start)


def bench_http(args, image: bytes, data_dir: Path) -> dict:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "ferkit.cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
           "--workers", str(args.workers), "--log-level", "warning", "--max-concurrency", str(args.max_concurrency)]
    if args.analyzer:
        cmd += ["--analyzer", args.analyzer]
    if args.max_requests is not None:
        cmd += ["--max-requests", str(args.max_requests)]
    if args.model:
        cmd += ["--model", args.model]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server failed to start:\n{proc.stderr.read().decode(errors='replace')}")
            try:
                if httpx.get(base + "/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server did not start within 120 s")
            time.sleep(0.2)
        clients = [httpx.Client(base_url=base, timeout=60) for _ in range(args.clients)]
        files = lambda: {"file": ("bench.jpg", image, "image/jpeg")}  # noqa: E731
        for c in clients:  # warm-up: every connection and the model's first calls
            for _ in range(2):
                c.post("/api/v1/analyze", files=files()).raise_for_status()
        rss_start = tree_mb(proc.pid, "VmRSS")
        faces = len(clients[0].post("/api/v1/analyze", files=files()).json()["faces"])

        def call(i: int) -> bool:
            r = clients[i].post("/api/v1/analyze", files=files())
            return r.status_code == 200

        samples: list[float] = []
        sampling = threading.Event()

        def sample() -> None:  # the server's RSS once a second, to tell a plateau from a leak
            while not sampling.wait(1.0):
                samples.append(tree_mb(proc.pid, "VmRSS"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result = run_threads(args.clients, args.duration, call)
        sampling.set()
        sampler.join()
        result["rss_samples"] = samples
        result["rss_start"] = rss_start
        result["rss_end"] = tree_mb(proc.pid, "VmRSS")
        result["rss_peak"] = tree_mb(proc.pid, "VmHWM")
        result["faces"] = faces
        result["stored"] = clients[0].get("/api/v1/results", params={"limit": 1}).json()["total"]
        for c in clients:
            c.close()
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def bench_in_process(args, image: bytes, data_dir: Path) -> tuple[dict, dict]:
    from ferkit.server.analysis import load_analyzer
    from ferkit.server.app import ServerState
    from ferkit.server.imaging import decode_image
    from ferkit.server.settings import ServerSettings

    settings = ServerSettings(data_dir=data_dir, analyzer=args.analyzer, model=args.model)
    analyzer = load_analyzer(settings)
    state = ServerState(settings, analyzer)
    for _ in range(3):
        state.process(image, source="upload", source_name="bench.jpg", persist=True)

    def full(_i: int) -> bool:
        state.process(image, source="upload", source_name="bench.jpg", persist=True)
        return True

    def analyze_only(_i: int) -> bool:
        analyzer.analyze(decode_image(image, max_pixels=settings.max_pixels).bgr)
        return True

    # as many threads as the server runs analyses at once (its --max-concurrency per worker, times workers):
    # the same concurrency the analyses get behind HTTP, without the queueing of the extra clients
    threads = args.max_concurrency * args.workers
    full_res = run_threads(threads, args.duration, full)
    only_res = run_threads(threads, args.duration, analyze_only)
    state.store.close()
    return full_res, only_res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=30.0, help="seconds per row")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--max-concurrency", type=int, default=2, help="analyses at once per worker (server default 2)")
    p.add_argument("--max-requests", type=int, default=None,
                   help="the server's --max-requests (worker recycling; default: the server's default)")
    p.add_argument("--image", type=Path, default=None, help="image to post (default: first faces-dev photo)")
    p.add_argument("--model", default=None, help="an .onnx for the server and the baseline (default: bundled)")
    p.add_argument("--analyzer", default=None, help=f"MODULE:NAME analyzer (default: ferkit's; {FAKE} if no model)")
    p.add_argument("--skip-baseline", action="store_true")
    args = p.parse_args()

    if args.analyzer is None and not real_model_available(args.model):
        print("note: ferkit.pipeline / the bundled model is not available; using the stand-in analyzer", FAKE)
        args.analyzer = FAKE
    image, image_name = (args.image.read_bytes(), str(args.image)) if args.image else default_image(args.analyzer == FAKE)
    tmp = Path(tempfile.mkdtemp(prefix="ferkit-bench-"))
    try:
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
              f"image: {image_name} ({len(image):,} bytes); analyzer: {args.analyzer or 'ferkit pipeline, model ' + (args.model or 'bundled default')}")
        recycle = "server default" if args.max_requests is None else args.max_requests
        print(f"{args.clients} clients x {args.duration:g} s per row; server: {args.workers} worker(s), "
              f"max {args.max_concurrency} analyses at once per worker, --max-requests {recycle}\n")
        http = bench_http(args, image, tmp / "http")
        rows = [("http (ferkit serve)", http)]
        if not args.skip_baseline:
            full, only = bench_in_process(args, image, tmp / "inproc")
            t = args.max_concurrency * args.workers
            rows += [(f"in-process ({t} thr): decode+analyse+store", full), (f"in-process ({t} thr): analyse only", only)]
        ref = rows[-1][1]["rps"]
        print(f"{'mode':38} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'errors':>6} {'vs analyse-only':>16}")
        for name, r in rows:
            ratio = f"{r['rps'] / ref:.2f}x" if ref else "-"
            print(f"{name:38} {r['rps']:8.1f} {r['p50']:8.1f} {r['p99']:8.1f} {r['mean']:8.1f} {r['errors']:6d} {ratio:>16}")
        print(f"\nfaces per image: {http['faces']}; results stored by the server during the run: {http['stored']:,}")
        growth = http["rss_end"] - http["rss_start"]
        print(f"server memory: RSS after warm-up {http['rss_start']:.0f} MB, at the end {http['rss_end']:.0f} MB "
              f"({growth:+.0f} MB, {100 * growth / max(http['rss_start'], 1):+.1f}%), peak {http['rss_peak']:.0f} MB")
        samples = http["rss_samples"]
        if len(samples) >= 4:
            q = [samples[int(f * (len(samples) - 1))] for f in (0.25, 0.5, 0.75, 1.0)]
            half = samples[len(samples) // 2:]
            print(f"server RSS at 25/50/75/100% of the run: {' / '.join(f'{v:.0f}' for v in q)} MB; "
                  f"second half of the run: {min(half):.0f}-{max(half):.0f} MB")
        return 0 if http["errors"] == 0 else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
