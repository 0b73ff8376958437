#!/bin/bash
# Stops a `ferkit train` run after the last epoch that can finish by a deadline (rule.txt).
# usage: stop_watcher.sh RUN_DIR PID DEADLINE_UTC   e.g. runs/repro_mehra100 1234 16:35
run=$1; pid=$2; deadline=$(date -u -d "$3" +%s); seen=0
while kill -0 "$pid" 2>/dev/null; do
  n=$(($(wc -l 2>/dev/null < "$run/metrics.csv" || echo 1) - 1))
  if [ "$n" -gt "$seen" ]; then
    seen=$n
    last=$(tail -1 "$run/metrics.csv" | cut -d, -f7)
    now=$(date -u +%s)
    if [ "$(echo "$now + $last > $deadline" | bc)" = 1 ]; then
      sleep 5  # let the epoch's checkpoint and curves be written
      echo "$(date -u +%T) stopping after epoch $n: the next epoch (~${last} s) would end after $3" 
      kill "$pid"; exit 0
    fi
  fi
  sleep 10
done
echo "$(date -u +%T) run ended by itself"
