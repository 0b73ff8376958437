#!/usr/bin/env bash
# Score the vgg reproduction run's best.pt (chosen on PublicTest during training) on both test splits with
# each test-time augmentation; run from the project root. The JSON files in eval/ are this script's output
# for the run stopped after epoch 136 (third session of 2026-12-02; best.pt = epoch 127).
D=../shared/data/fer2013/fer2013.csv.gz
O=${1:-runs/vgg_eval}; mkdir -p "$O"
for s in PublicTest PrivateTest; do for t in none flip tencrop; do
  ferkit evaluate runs/repro_vgg300 --data $D --split $s --tta $t --json > "$O/$s-$t.json"
  echo "$s $t $(python3 -c "import json; r=json.load(open('$O/$s-$t.json')); print(r['accuracy'], r['macro_f1'], r['n'])")"
done; done
