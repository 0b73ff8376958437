#!/usr/bin/env bash
# One ferkit training run on a lent GPU machine, in one call, leaving under $OUT what has to come back.
#
#   PACK=/tmp/ferpack/fer.npz RUN=name scripts/device_train.sh [ferkit train options...]
#
# Runs from the repository root with the machine's own python3 (PyTorch there; ferkit from src/, nothing is
# installed), trains `ferkit train --data $PACK ... --out runs/$RUN`, scores best.pt on PublicTest, and
# writes to $OUT (default: out/):
#   $RUN.tgz               the run folder without checkpoints (config, metrics, curves, train.log, PublicTest json)
#   $RUN.best.pt.partNN    best.pt cut into 15 MiB pieces (cat them back in order); last.pt too with KEEP_LAST=1,
#                          for a later --resume
# Files that come back from such a machine are capped (8 files of 16 MiB): the script stops with an error
# before a run whose pieces would not fit is counted as brought back. PrivateTest is never scored here.
# Make the pack here first: ferkit data pack --data $D --ferplus $FP --splits Training PublicTest --max-mb 30
# --out packs/fer.npz (see docs/gpu.md for moving its two parts in two calls).
set -euo pipefail
PACK=${PACK:-packs/fer.npz}
RUN=${RUN:-run}
OUT=${OUT:-out}
PY=${PYTHON:-python3}
KEEP_LAST=${KEEP_LAST:-0}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT" runs
[ -e "runs/$RUN" ] && { echo "runs/$RUN exists; choose another RUN" >&2; exit 2; }
"$PY" -c "import torch, ferkit; print('torch', torch.__version__, '| cuda:', torch.cuda.is_available(), '| ferkit from', ferkit.__file__)"
start=$(date +%s)
set +e
"$PY" -m ferkit.cli train --data "$PACK" "$@" --no-progress --out "runs/$RUN" 2>&1 | tee "runs/$RUN.train.log"
rc=${PIPESTATUS[0]}
set -e
echo "train exit $rc after $(( $(date +%s) - start )) s"
[ -d "runs/$RUN" ] || exit "$rc"
mv "runs/$RUN.train.log" "runs/$RUN/train.log"
if [ -f "runs/$RUN/best.pt" ]; then
  "$PY" -m ferkit.cli evaluate "runs/$RUN" --data "$PACK" --split PublicTest --json > "runs/$RUN/publictest.json" \
    || echo "PublicTest scoring failed; the checkpoint still comes back" >&2
fi
tar czf "$OUT/$RUN.tgz" -C runs --exclude='*.pt' "$RUN"
pieces=1
for ck in best last; do
  [ "$ck" = last ] && [ "$KEEP_LAST" != 1 ] && continue
  [ -f "runs/$RUN/$ck.pt" ] || continue
  split -b 15M -d "runs/$RUN/$ck.pt" "$OUT/$RUN.$ck.pt.part"
  pieces=$(( pieces + $(ls "$OUT/$RUN.$ck.pt.part"* | wc -l) ))
done
ls -l "$OUT"
if [ "$pieces" -gt 8 ]; then
  echo "$pieces files under $OUT: more than the 8 that come back; return best.pt alone (KEEP_LAST=0)" >&2
  exit 3
fi
exit "$rc"
