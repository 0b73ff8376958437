#!/usr/bin/env bash
# One ferkit training run on a lent GPU machine, in one call, leaving under $OUT what has to come back.
#
#   PACK=/tmp/ferpack/fer.npz RUN=name scripts/device_train.sh [ferkit train options...]
#   RUN=name scripts/device_train.sh --fetch      (a later call, machine still warm: the pieces left behind)
#
# Runs from the repository root with the machine's own python3 (PyTorch there; ferkit from src/, nothing is
# installed), trains `ferkit train --data $PACK ... --out runs/$RUN`, scores best.pt, and writes to $OUT
# (default: out/):
#   $RUN.tgz               the run folder without checkpoints (config, metrics, curves, train.log, scores/)
#   $RUN.best.pt.partNNN   best.pt cut into pieces (cat them back in order); last.pt too with KEEP_LAST=1,
#                          for a later --resume
# Settings (environment):
#   WEIGHTS=fp32|half|none how best.pt comes back: as saved; with its weights in float16 (half the size, a
#                          checkpoint that ferkit evaluate/export load as it is); or not at all (scores only).
#                          last.pt (KEEP_LAST=1) always comes back as saved: it is for resuming.
#   SAVE_EVERY=60          seconds between writings of the run's files (ferkit train --save-every; always after
#                          the last epoch): on an H200, gudi's run spent 363 s for 234 s of epochs (2.2-2.7 s
#                          each), the rest in start-up and in writing its files after every epoch (0.7 GB of
#                          checkpoints each time). 0: every epoch.
#   SCORE_TEST=1           also score PrivateTest (the pack must hold it) and both splits with flip and ten-crop
#                          TTA. best.pt is chosen on PublicTest during training; the test split only reports it.
#   OUT_MAX_FILES=8 OUT_MAX_BYTES=67108864 PIECE_BYTES=15728640
#                          what one call may bring back (8 files, 64 MiB) and the size of a piece (15 MiB).
#                          Pieces that do not fit stay on the machine in runs/$RUN.pieces/; the script then
#                          exits 3 and `--fetch` in the next call (within the machine's warm time) brings the
#                          next ones.
# Make the pack here first: ferkit data pack --data $D --ferplus $FP --splits Training PublicTest [PrivateTest]
# --max-mb 38 --out packs/fer.npz (see docs/gpu.md for moving its parts in separate calls).
set -euo pipefail
PACK=${PACK:-packs/fer.npz}
RUN=${RUN:-run}
OUT=${OUT:-out}
PY=${PYTHON:-python3}
KEEP_LAST=${KEEP_LAST:-0}
WEIGHTS=${WEIGHTS:-fp32}
SCORE_TEST=${SCORE_TEST:-0}
SAVE_EVERY=${SAVE_EVERY:-60}
OUT_MAX_FILES=${OUT_MAX_FILES:-8}
OUT_MAX_BYTES=${OUT_MAX_BYTES:-67108864}
PIECE_BYTES=${PIECE_BYTES:-15728640}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PIECES="runs/$RUN.pieces"

case "$WEIGHTS" in fp32|half|none) ;; *) echo "WEIGHTS must be fp32, half or none, not '$WEIGHTS'" >&2; exit 2;; esac
if [ "$PIECE_BYTES" -gt "$OUT_MAX_BYTES" ] || [ "$PIECE_BYTES" -lt 1 ] || [ "$OUT_MAX_FILES" -lt 2 ]; then
  echo "PIECE_BYTES ($PIECE_BYTES) must lie in [1, OUT_MAX_BYTES ($OUT_MAX_BYTES)], OUT_MAX_FILES at least 2" >&2
  exit 2
fi

# Copy the waiting pieces, in order, into $OUT while they fit beside what is there already (count and bytes);
# a copied piece moves to $PIECES/sent. Exit 3 if some are left for the next call.
deliver() {
  mkdir -p "$OUT" "$PIECES/sent"
  local files bytes size p left
  files=$(find "$OUT" -maxdepth 1 -type f | wc -l)
  bytes=$(find "$OUT" -maxdepth 1 -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
  for p in $(find "$PIECES" -maxdepth 1 -type f -name "$RUN.*.part*" -printf '%f\n' | sort); do
    size=$(stat -c %s "$PIECES/$p")
    if [ $(( files + 1 )) -gt "$OUT_MAX_FILES" ] || [ $(( bytes + size )) -gt "$OUT_MAX_BYTES" ]; then
      break
    fi
    cp "$PIECES/$p" "$OUT/$p"
    mv "$PIECES/$p" "$PIECES/sent/$p"
    files=$(( files + 1 )); bytes=$(( bytes + size ))
  done
  ls -l "$OUT"
  left=$(find "$PIECES" -maxdepth 1 -type f -name "$RUN.*.part*" | wc -l)
  if [ "$left" -gt 0 ]; then
    echo "$left piece(s) of $RUN did not fit in this call and wait in $PIECES on this machine: next call" \
         "(while the machine is warm): RUN=$RUN scripts/device_train.sh --fetch" >&2
    exit 3
  fi
  echo "all pieces of $RUN are out"
}

if [ "${1:-}" = "--fetch" ]; then
  [ -d "$PIECES" ] || { echo "no pieces of $RUN on this machine ($PIECES): it was given back, or RUN is wrong" >&2; exit 2; }
  deliver
  exit 0
fi

mkdir -p "$OUT" runs
[ -e "runs/$RUN" ] && { echo "runs/$RUN exists; choose another RUN" >&2; exit 2; }
"$PY" -c "import torch, ferkit; print('torch', torch.__version__, '| cuda:', torch.cuda.is_available(), '| ferkit from', ferkit.__file__)"
start=$(date +%s)
set +e
"$PY" -m ferkit.cli train --data "$PACK" --save-every "$SAVE_EVERY" "$@" --no-progress --out "runs/$RUN" 2>&1 | tee "runs/$RUN.train.log"
rc=${PIPESTATUS[0]}
set -e
echo "train exit $rc after $(( $(date +%s) - start )) s"
[ -d "runs/$RUN" ] || exit "$rc"
mv "runs/$RUN.train.log" "runs/$RUN/train.log"
if [ -f "runs/$RUN/best.pt" ]; then
  mkdir -p "runs/$RUN/scores"
  splits=PublicTest; ttas=none
  [ "$SCORE_TEST" = 1 ] && { splits="PublicTest PrivateTest"; ttas="none flip tencrop"; }
  for split in $splits; do
    for tta in $ttas; do
      "$PY" -m ferkit.cli evaluate "runs/$RUN" --data "$PACK" --split "$split" --tta "$tta" --json \
        > "runs/$RUN/scores/$split.$tta.json" \
        || { echo "scoring $split ($tta) failed; the rest still comes back" >&2; rm -f "runs/$RUN/scores/$split.$tta.json"; }
    done
  done
fi
tar czf "$OUT/$RUN.tgz" -C runs --exclude='*.pt' "$RUN"
mkdir -p "$PIECES"
if [ -f "runs/$RUN/best.pt" ] && [ "$WEIGHTS" != none ]; then
  src="runs/$RUN/best.pt"
  if [ "$WEIGHTS" = half ]; then
    src="runs/$RUN.best.half.pt"
    "$PY" - "runs/$RUN/best.pt" "$src" <<'EOF'
import sys

import torch

ck = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
ck["model"] = {k: v.half() if torch.is_floating_point(v) else v for k, v in ck["model"].items()}
torch.save(ck, sys.argv[2])
EOF
  fi
  split -b "$PIECE_BYTES" -d -a 3 "$src" "$PIECES/$RUN.best.pt.part"
fi
if [ "$KEEP_LAST" = 1 ] && [ -f "runs/$RUN/last.pt" ]; then
  split -b "$PIECE_BYTES" -d -a 3 "runs/$RUN/last.pt" "$PIECES/$RUN.last.pt.part"
fi
set +e
(deliver)
drc=$?
set -e
[ "$rc" -ne 0 ] && exit "$rc"
exit "$drc"
