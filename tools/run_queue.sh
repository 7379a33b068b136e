#!/usr/bin/env bash
# Train configs one after another, each resumable: tools/run_queue.sh CONFIG [CONFIG ...]
# Each run writes runs/study/<config name>/ (train.log, metrics.jsonl, last.pt, final/).
set -u
for config in "$@"; do
  name=$(basename "$config" .yaml)
  python -m ifa.train --config "$config" --resume train.out_dir="runs/study/$name" || echo "FAILED: $config"
done
