#!/usr/bin/env bash
# Starts a coordinator and N workers on 127.0.0.1 as separate processes (a real
# deployment on one machine). Stop them with: deploy/local-cluster.sh stop
#   deploy/local-cluster.sh start [WORKERS]   (default 2)
# State and logs go to ${AUTOPIPE_HOME:-/tmp/autopipe-cluster}.
set -euo pipefail
BIN="${AUTOPIPE_BIN:-autopipe}"
HOME_DIR="${AUTOPIPE_HOME:-/tmp/autopipe-cluster}"
cmd="${1:-start}"
case "$cmd" in
  start)
    n="${2:-2}"
    mkdir -p "$HOME_DIR"
    "$BIN" coordinator --listen 127.0.0.1:7700 --http 127.0.0.1:7780 \
      --data-dir "$HOME_DIR/coordinator" > "$HOME_DIR/coordinator.log" 2>&1 &
    echo $! > "$HOME_DIR/coordinator.pid"
    for i in $(seq 1 "$n"); do
      "$BIN" worker --coordinator http://127.0.0.1:7700 --listen "127.0.0.1:$((7800 + i))" \
        --http "127.0.0.1:$((7880 + i))" --slots 2 --work-dir "$HOME_DIR/worker-$i" \
        > "$HOME_DIR/worker-$i.log" 2>&1 &
      echo $! > "$HOME_DIR/worker-$i.pid"
    done
    echo "coordinator http://127.0.0.1:7700 (dashboard http://127.0.0.1:7780), $n workers; logs in $HOME_DIR"
    ;;
  stop)
    # workers first: SIGTERM drains one (it leaves once the coordinator released it);
    # after 30 s a second SIGTERM stops it at once; then the coordinator
    for f in "$HOME_DIR"/worker-*.pid; do
      [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
    for _ in $(seq 1 60); do
      alive=0
      for f in "$HOME_DIR"/worker-*.pid; do
        [ -e "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && alive=1
      done
      [ "$alive" = 0 ] && break
      sleep 0.5
    done
    for f in "$HOME_DIR"/*.pid; do
      [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
      rm -f "$f"
    done
    ;;
  *)
    echo "usage: $0 start [WORKERS] | stop" >&2
    exit 2
    ;;
esac
