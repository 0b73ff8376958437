"""Inference speed and memory, one run, side by side with baselines measured in the same run.

    python benchmarks/bench_inference.py [--model x.onnx] [--repeat 40] [--skip-memory]

Prints:
1. import time of the torch-free inference path (``ferkit.pipeline`` + runtime + detectors) against
   ``import torch`` (the baseline it avoids), each in a fresh interpreter;
2. classifier throughput (faces/s) at batch 1 and batch 64 (target >= 2,000 faces/s at batch 64); the
   baseline is batch 1;
3. end-to-end milliseconds per 640x480 frame (read nothing from disk: detect, crop, classify) with 1 and
   with 5 real faces (faces-dev photos pasted into a gray canvas; skipped when faces-dev is absent), for
   each detector and for YuNet on frames downscaled to 480, 400 and 320 pixels (``--detect-size``); the
   baseline is the Haar cascade path (target >= 30 frames/s with one face); then what the smaller
   detection sizes cost: the share of faces of 40, 60 and 90 pixels that YuNet still finds;
4. peak resident memory (RSS) of a ``ferkit predict`` process on 20 photos and on a 640x480 video of
   60 and 600 frames (flat memory: the long video should cost no more than the short one), against a
   bare ``python -c "import torch"`` as the baseline (target < 300 MB).

Timings are medians over ``--repeat`` runs after warm-up, on this machine (it reports its CPU count;
other processes on a shared machine make numbers noisier, never better).
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402

import cv2  # noqa: E402

from ferkit.errors import FerkitError  # noqa: E402

DATA = Path(os.environ.get("FERKIT_DATA_DIR", ROOT.parent / "shared" / "data"))
FACES_DEV = DATA / "faces-dev"


def table(title, headers, rows):
    print_table(title, headers, rows, fmt=_fmt)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


def median_time(fn, repeat, warmup=3):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def child_peak_rss_mb(cmd: list[str], env=None) -> tuple[float, int, str]:
    """Run ``cmd`` in a wrapper process; returns (peak RSS in MB of cmd, its exit code, stderr tail)."""
    wrapper = (
        "import resource, subprocess, sys, json\n"
        "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
        "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode, r.stderr[-300:]]))\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, env=env)
    import json

    kb, rc, err = json.loads(out.stdout.strip().splitlines()[-1])
    return kb / 1024.0, rc, err


def import_seconds(stmt: str, repeat: int = 3) -> float:
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", stmt], check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def faces_dev_photos(n: int) -> list[Path]:
    if not (FACES_DEV / "labels.csv").is_file():
        return []
    rows = list(csv.DictReader(open(FACES_DEV / "labels.csv")))
    rows = [r for r in rows if int(r["width"]) >= 200]  # the larger photos paste better
    step = max(1, len(rows) // n)
    return [FACES_DEV / r["file"] for r in rows[::step][:n]]


def make_frame(photos: list[Path], n_faces: int, rng) -> np.ndarray:
    """A 640x480 BGR frame with ``n_faces`` real face photos pasted on a gray background."""
    from ferkit.io import read_image

    frame = np.full((480, 640, 3), 110, np.uint8)
    frame[:] += rng.integers(0, 20, (480, 640, 1), dtype=np.uint8)
    if n_faces == 1:
        slots = [(200, 110, 240)]
    else:
        slots = [(20, 40, 170), (235, 40, 170), (450, 40, 170), (120, 270, 170), (340, 270, 170)][:n_faces]
    for (x, y, s), p in zip(slots, photos):
        face = cv2.resize(read_image(p), (s, s), interpolation=cv2.INTER_AREA)
        frame[y:y + s, x:x + s] = face
    return frame


DETECT_SIZES = (480, 400, 320)  # --detect-size values timed beside the full-size detection
SMALL_FACE_PX = (40, 60, 90)


def small_faces_table(n_photos: int) -> None:
    """What a smaller --detect-size costs: YuNet's hit rate on faces of 40, 60 and 90 pixels in 640x480 frames.

    Each of ``n_photos`` faces-dev photos (a face fills about 250 of its 350 pixels) is pasted alone into a
    gray 640x480 frame, scaled so the face is about that size, at a position that varies with the photo."""
    from ferkit.faces import detect_faces, get_detector
    from ferkit.io import read_image

    if not (FACES_DEV / "labels.csv").is_file():
        print("\nfaces-dev not found: the small-face table is skipped")
        return
    rows = list(csv.DictReader(open(FACES_DEV / "labels.csv")))
    photos = [read_image(FACES_DEV / r["file"]) for r in rows[::max(1, len(rows) // n_photos)][:n_photos]]
    det = get_detector("yunet")
    sizes = (640,) + DETECT_SIZES
    out = []
    for face_px in SMALL_FACE_PX:
        found = dict.fromkeys(sizes, 0)
        for i, photo in enumerate(photos):
            frame = np.full((480, 640, 3), 110, np.uint8)
            s = int(round(face_px * 350 / 250))
            x, y = 100 + (i * 37) % 300, 80 + (i * 53) % 200
            frame[y:y + s, x:x + s] = cv2.resize(photo, (s, s), interpolation=cv2.INTER_AREA)
            for side in sizes:
                found[side] += bool(detect_faces(frame, det, max_side=side))
        out.append((f"~{face_px} px", len(photos), *(f"{found[k] / len(photos):.1%}" for k in sizes)))
    table("YuNet: frames whose one face is found, by face size and detection size (640 = full size, the baseline)",
          ["face", "frames", *(f"detect-size {k}" + (" (baseline)" if k == 640 else "") for k in sizes)], out)


def write_video(path: Path, frames: int, base: np.ndarray) -> None:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (640, 480))
    for i in range(frames):
        shift = int(10 * np.sin(i / 15))
        vw.write(np.roll(base, shift, axis=1))
    vw.release()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="an .onnx (default: the bundled model)")
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-import", action="store_true")
    ap.add_argument("--skip-small-faces", action="store_true", help="skip the detection-size table")
    ap.add_argument("--small-faces-photos", type=int, default=150, help="frames per face size in that table")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; python {sys.version.split()[0]}; "
          f"OpenCV {cv2.__version__}")

    from ferkit.runtime import EmotionClassifier

    try:
        clf = EmotionClassifier(args.model)
    except FerkitError as e:
        print(f"no model ({e}); nothing to benchmark")
        return 1
    print(f"model: {clf.path} (arch {clf.metadata.get('arch')}, tta {clf.tta}, {clf.threads} threads)")
    model_arg = str(clf.path)

    # 1. import time
    if not args.skip_import:
        t_ferkit = import_seconds("import ferkit.pipeline, ferkit.runtime, ferkit.video, ferkit.faces.yunet, "
                                  "ferkit.faces.haar, onnxruntime")
        try:
            t_torch = import_seconds("import torch")
            torch_cell = t_torch
        except subprocess.CalledProcessError:
            t_torch, torch_cell = None, "n/a (torch not installed)"
        table("Import time (fresh interpreter, median of 3)", ["what", "seconds", "vs import torch"],
              [("inference path (ferkit.pipeline + onnxruntime + detectors)", t_ferkit,
                f"{t_ferkit / t_torch:.2f}x" if t_torch else "-"),
               ("baseline: import torch", torch_cell, "1.00x" if t_torch else "-")])

    # 2. classifier throughput
    faces = None
    fer = DATA / "fer2013" / "fer2013.csv.gz"
    if fer.is_file():
        from ferkit.data.fer2013 import load_fer2013

        d = load_fer2013(fer)
        faces = d.images[d.split("PublicTest")[:1024]]
    else:
        faces = rng.integers(0, 256, (1024, clf.input_size, clf.input_size), dtype=np.uint8)
    rows = []
    t1 = median_time(lambda: clf.predict_proba(faces[:1]), args.repeat * 5)
    rows.append(("batch 1 (baseline)", 1 / t1, t1 * 1e3, "1.00x", "-"))
    for bs in (8, 64):
        tb = median_time(lambda: clf.predict_proba(faces[:bs]), max(5, args.repeat))
        ok = "yes" if bs == 64 and bs / tb >= 2000 else ("no" if bs == 64 else "-")
        rows.append((f"batch {bs}", bs / tb, tb * 1e3, f"{(bs / tb) / (1 / t1):.2f}x", ok))
    table(f"Classifier throughput ({clf.threads} onnxruntime threads, tta={clf.tta}; 48x48 FER2013 faces)",
          ["input", "faces/s", "ms per call", "vs batch 1", ">= 2,000 faces/s"], rows)

    # 3. end to end per 640x480 frame
    from ferkit.faces import available_detectors
    from ferkit.pipeline import Analyzer

    photos = faces_dev_photos(5)
    frames = {}
    if len(photos) >= 5:
        frames = {1: make_frame(photos, 1, rng), 5: make_frame(photos, 5, rng)}
    else:
        print("\nfaces-dev not found: end-to-end frames with real faces skipped")
    results = {}
    configs = [("haar", "haar", None, None), ("haar, no padding", "haar", 0.0, None), ("yunet", "yunet", None, None)]
    configs += [(f"yunet, detect-size {n}", "yunet", None, n) for n in DETECT_SIZES]
    for label, det, pad, size in [c for c in configs if c[1] in available_detectors()]:
        a = Analyzer(clf, detector=det, pad=pad, **({"max_side": size} if size else {}))
        for n, frame in frames.items():
            found = len(a.analyze(frame))
            t_total = median_time(lambda: a.analyze(frame), args.repeat)
            dets = a.detect(frame)
            t_det = median_time(lambda: a.detect(frame), args.repeat)
            t_cls = median_time(lambda: a.classify(frame, dets), args.repeat) if dets else 0.0
            results[(label, n)] = (t_total, t_det, t_cls, found)
    rows = []
    for (det, n), (t_total, t_det, t_cls, found) in results.items():
        base = results.get(("haar", n))
        ratio = f"{base[0] / t_total:.2f}x" if base else "-"
        target = ("yes" if 1 / t_total >= 30 else "no") if n == 1 else "-"
        name = f"{det}{' (baseline)' if det == 'haar' else ''}"
        rows.append((name, n, found, t_total * 1e3, 1 / t_total, t_det * 1e3, t_cls * 1e3, ratio, target))
    if rows:
        table("End to end per 640x480 frame (detect + crop + classify; faces-dev photos pasted in)",
              ["detector", "faces", "found", "ms/frame", "frames/s", "detect ms", "crop+classify ms",
               "speed vs haar", ">= 30 fps (1 face)"], rows)
    if "yunet" in available_detectors() and not args.skip_small_faces:
        small_faces_table(args.small_faces_photos)

    # 4. peak memory
    if not args.skip_memory:
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            imgs = faces_dev_photos(20)
            if not imgs:
                for i in range(20):
                    cv2.imwrite(str(tmp / f"img{i}.png"), rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
                imgs = sorted(tmp.glob("img*.png"))
            ferkit_cmd = [sys.executable, "-m", "ferkit.cli", "predict", "--json", "--model", model_arg, "--quiet"]
            env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
            mb, rc, err = child_peak_rss_mb(ferkit_cmd + [str(p) for p in imgs], env=env)
            rows.append((f"ferkit predict, {len(imgs)} photos", mb, rc, "yes" if mb < 300 else "no"))
            base = frames.get(1)
            if base is None:
                base = np.full((480, 640, 3), 100, np.uint8)
            for n in (60, 600):
                vid = tmp / f"v{n}.mp4"
                write_video(vid, n, base)
                mb, rc, err = child_peak_rss_mb(ferkit_cmd + [str(vid)], env=env)
                rows.append((f"ferkit predict, 640x480 video, {n} frames", mb, rc, "yes" if mb < 300 else "no"))
            mb, rc, _ = child_peak_rss_mb([sys.executable, "-c", "import torch"], env=env)
            rows.append(("baseline: python -c 'import torch'", mb if rc == 0 else "n/a", rc, "-"))
        table("Peak memory (max RSS of the process)", ["process", "peak RSS MB", "exit code", "< 300 MB"], rows)
        if any(r[2] not in (0,) for r in rows[:-1]):
            print(f"note: a ferkit predict run failed: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
