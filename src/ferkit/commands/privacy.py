"""``ferkit privacy-report --data fer2013.csv.gz --out report/``: what a network still reads from, and
recovers of, obfuscated faces (see :mod:`ferkit.privacy.report`)."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ..privacy.report import DEFAULT_METHODS

    p = subparsers.add_parser(
        "privacy-report",
        help="emotion accuracy on obfuscated / recovered faces and how well a U-Net undoes the obfuscation",
        description="For each obfuscation: accuracy of the default model on obfuscated PrivateTest faces, of a "
                    "classifier trained on obfuscated Training faces, a U-Net that recovers the originals (MAE in %% "
                    "of 255, PSNR, SSIM) and the default model's accuracy on the recovered faces. Trains on "
                    "Training, selects on PublicTest, reports on PrivateTest. Writes privacy_report.md/.json and "
                    "privacy_grid.png; a re-run with the same settings resumes.",
    )
    p.add_argument("--data", required=True, help="FER2013 CSV (plain or .gz)")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma-separated obfuscations, e.g. pixelate-4,blur-2,fill (default: %(default)s)")
    p.add_argument("--model", default="default", help="classifier scored on obfuscated and recovered faces "
                   "(bundled name, .onnx, run directory or checkpoint; default: the bundled default model)")
    p.add_argument("--init", default=None, help="checkpoint / run dir the classifiers on obfuscated faces are "
                   "fine-tuned from (default: trained from scratch with --arch)")
    p.add_argument("--arch", default="fastres_s", help="architecture of those classifiers without --init")
    p.add_argument("--classifier-epochs", type=int, default=3, help="0 skips the trained-on-obfuscated column")
    p.add_argument("--classifier-lr", type=float, default=None)
    p.add_argument("--recovery-epochs", type=int, default=3, help="0 skips the recovery columns")
    p.add_argument("--recovery-base", type=int, default=16, help="U-Net width (channels of the first level)")
    p.add_argument("--limit", type=int, default=None, help="only the first N rows of each split (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid-faces", type=int, default=4, help="faces per method in privacy_grid.png")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all usable)")
    p.add_argument("--drop-runs", action="store_true", help="delete the classifier run directories at the end")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import FerkitError
    from ..privacy.report import REPORT_MD, ReportSettings, privacy_report

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.grid_faces < 1:
        raise FerkitError(f"--grid-faces must be at least 1, got {args.grid_faces}")
    if args.recovery_base < 1:
        raise FerkitError(f"--recovery-base must be at least 1, got {args.recovery_base}")
    settings = ReportSettings(
        data=args.data, methods=methods, model=args.model, init=args.init, arch=args.arch,
        classifier_epochs=args.classifier_epochs, classifier_lr=args.classifier_lr,
        recovery_epochs=args.recovery_epochs, recovery_base=args.recovery_base, limit=args.limit,
        seed=args.seed, grid_faces=args.grid_faces, threads=args.threads,
    )
    privacy_report(settings, args.out, keep_runs=not args.drop_runs)
    print(f"report written: {args.out}/{REPORT_MD}")
    return 0
