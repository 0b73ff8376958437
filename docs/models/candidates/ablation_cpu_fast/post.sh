#!/usr/bin/env bash
# post.sh R: export run R, evaluate on PublicTest/PrivateTest (none, flip), vs FER+ majority, faces-dev
R=$1
D=../shared/data/fer2013/fer2013.csv.gz
FP=../shared/data/fer2013/fer2013new.csv
F=.venv/bin/ferkit
O=runs/post_$(basename $R).txt
{
  $F export runs/$R --out runs/$R.onnx
  for s in PublicTest PrivateTest; do for t in none flip; do
    echo "== $s tta=$t"; $F evaluate runs/$R.onnx --data $D --split $s --tta $t | grep -iE "accuracy|macro"
  done; done
  echo "== PrivateTest vs FER+ majority"; $F evaluate runs/$R.onnx --data $D --split PrivateTest --no-tta --ferplus $FP | grep -iE "accuracy|macro"
  echo "== faces-dev"; .venv/bin/python benchmarks/eval_faces_dev.py --detectors yunet --model runs/$R.onnx > runs/faces_dev_$(basename $R).txt 2>&1; grep -E "yunet \+" runs/faces_dev_$(basename $R).txt
} > $O 2>&1
