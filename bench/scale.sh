#!/usr/bin/env bash
# TPC-H throughput of a deployed autopipe cluster (1 coordinator + N worker processes,
# 2 task slots each) with 1, 2, 4 and 8 workers on one machine with 16+ cores, and the
# scaling efficiency:  efficiency(N) = throughput(N) / (N × throughput(1)).
#
#   bench/scale.sh                 # SF10, all 22 queries, 1 2 4 8 workers
#   SF=1 WORKERS="1 2" bench/scale.sh
#
# Each worker process runs at most 2 tasks on 3 runtime threads (TOKIO_WORKER_THREADS),
# so N workers use about 2N cores. Data is generated once (tpchgen) and cached under
# $BENCH_DIR. Binaries come from $AUTOPIPE_BIN_DIR (default target/release), built with
# cargo when missing. Nothing else in the project depends on this script or its machine.
set -euo pipefail
cd "$(dirname "$0")/.."
SF=${SF:-10}
WORKERS=${WORKERS:-"1 2 4 8"}
QUERIES=${QUERIES:-all}
BIN=${AUTOPIPE_BIN_DIR:-target/release}
DIR=${BENCH_DIR:-target/bench-data}
if [ ! -x "$BIN/bench" ] || [ ! -x "$BIN/autopipe" ]; then
  cargo build --release --workspace
  BIN=target/release
fi
export TOKIO_WORKER_THREADS=3
mkdir -p "$DIR"
began=$(date +%s)
declare -A total
nq=0
for n in $WORKERS; do
  log="$DIR/scale-sf$SF-w$n.log"
  "$BIN/bench" tpch --sf "$SF" --queries "$QUERIES" --engines autopipe-cluster \
    --workers "$n" --slots 2 --reps 1 --no-warmup --dir "$DIR" >"$log" 2>&1 || {
    cat "$log"; exit 1; }
  line=$(grep '^| total' "$log")
  nq=$(echo "$line" | sed -E 's/^\| total \(([0-9]+) queries\).*/\1/')
  total[$n]=$(echo "$line" | awk -F'|' '{gsub(/ /, "", $3); print $3}')
  echo "workers $n: $nq queries in ${total[$n]} s ($(( $(date +%s) - began )) s so far)" >&2
done
first=${WORKERS%% *}
echo
echo "TPC-H SF$SF · $nq queries · $(nproc) cores · each worker 2 slots · $(date -u +%F)"
echo
echo "| workers | total s | queries/min | speedup vs $first | scaling efficiency |"
echo "|---|---|---|---|---|"
for n in $WORKERS; do
  awk -v n="$n" -v t="${total[$n]}" -v t1="${total[$first]}" -v f="$first" -v q="$nq" 'BEGIN {
    s = t1 / t; e = (t1 * f) / (n * t);
    printf "| %d | %.2f | %.1f | %.2f× | %.2f |\n", n, t, q * 60 / t, s, e }'
done
echo
echo "elapsed $(( $(date +%s) - began )) s"
