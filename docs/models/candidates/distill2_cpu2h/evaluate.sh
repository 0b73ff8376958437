#!/bin/bash
# Candidate L (docs/models/candidates/distill2_cpu2h/rule.txt): export as the default was, then the rule's measures.
set -euo pipefail
cd "$(dirname "$0")/../../../.."  # the project root
D=../shared/data/fer2013/fer2013.csv.gz; FP=../shared/data/fer2013/fer2013new.csv
C=docs/models/candidates/distill2_cpu2h; F=.venv/bin/ferkit; PY=.venv/bin/python
$F export runs/distill2_cpu2h --out runs/L_fp32.onnx 2>&1 | tail -3
$F export runs/L_fp32.onnx --quantize int8 --data $D --out runs/L_int8.onnx 2>&1 | tail -3
$F export runs/L_int8.onnx --calibrate --data $D --out runs/L.onnx 2>&1 | tail -3
$F evaluate runs/L.onnx --data $D --split PublicTest > $C/publictest_L.txt
$F evaluate default --data $D --split PublicTest > $C/publictest_default.txt
$PY benchmarks/eval_faces_dev.py --detectors yunet --model runs/L.onnx > $C/faces_dev_L.txt
$PY benchmarks/eval_faces_dev.py --detectors yunet --model default > $C/faces_dev_default.txt
$PY benchmarks/bench_bundled.py --extra runs/L.onnx > $C/bench.txt
head -4 $C/publictest_L.txt $C/publictest_default.txt
grep -i -m3 "yunet" $C/faces_dev_L.txt $C/faces_dev_default.txt
cat $C/bench.txt | tail -8
