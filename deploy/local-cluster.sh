#!/usr/bin/env bash
# Starts a coordinator and N workers on 127.0.0.1 as separate processes (a real
# deployment on one machine). Stop them with: deploy/local-cluster.sh stop
#   deploy/local-cluster.sh start [WORKERS]   (default 2)
# The coordinator takes 127.0.0.1:7700 (HTTP 7780) and worker i 127.0.0.1:7800+i
# (HTTP 7880+i, where deploy/prometheus.yml scrapes them) when those ports are free,
# else free ports. Each process must report its addresses within 30 s, or start
# stops what it started, shows the log and fails. The coordinator's
# address goes to $AUTOPIPE_HOME/coordinator.addr.
# State and logs go to ${AUTOPIPE_HOME:-/tmp/autopipe-cluster}.
set -euo pipefail
BIN="${AUTOPIPE_BIN:-autopipe}"
HOME_DIR="${AUTOPIPE_HOME:-/tmp/autopipe-cluster}"
cmd="${1:-start}"

# true when something accepts connections on 127.0.0.1:$1
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# waits for the "listening on ADDR (http ADDR)" line of process $1 in log $2; prints
# ADDR; fails when the process exits or 30 s pass
wait_listening() {
  local pid="$1" log="$2" line
  for _ in $(seq 1 300); do
    line="$(grep -m1 'listening on ' "$log" 2>/dev/null || true)"
    if [ -n "$line" ]; then
      echo "$line" | sed -E 's/.*listening on ([^ ]+).*/\1/'
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "autopipe did not come up; the end of $log:" >&2
  tail -n 20 "$log" >&2 || true
  return 1
}

# true when pid file $1 names a running autopipe process
is_ours() {
  local pid
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] &&
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "$(basename "$BIN")"
}

stop_all() {
  # workers first: SIGTERM drains one (it leaves once the coordinator released it);
  # after 30 s a second SIGTERM stops it at once; then the coordinator
  for f in "$HOME_DIR"/worker-*.pid; do
    [ -e "$f" ] && is_ours "$f" && kill "$(cat "$f")" 2>/dev/null || true
  done
  for _ in $(seq 1 60); do
    alive=0
    for f in "$HOME_DIR"/worker-*.pid; do
      [ -e "$f" ] && is_ours "$f" && alive=1
    done
    [ "$alive" = 0 ] && break
    sleep 0.5
  done
  for f in "$HOME_DIR"/*.pid; do
    [ -e "$f" ] || continue
    if is_ours "$f"; then
      kill "$(cat "$f")" 2>/dev/null || true
    elif kill -0 "$(cat "$f")" 2>/dev/null; then
      echo "not stopping pid $(cat "$f") of $f: it is not an autopipe process" >&2
    fi
    rm -f "$f"
  done
}

case "$cmd" in
  start)
    n="${2:-2}"
    mkdir -p "$HOME_DIR"
    listen=127.0.0.1:0
    http=127.0.0.1:0
    in_use 7700 || listen=127.0.0.1:7700
    in_use 7780 || http=127.0.0.1:7780
    "$BIN" coordinator --listen "$listen" --http "$http" \
      --data-dir "$HOME_DIR/coordinator" > "$HOME_DIR/coordinator.log" 2>&1 &
    echo $! > "$HOME_DIR/coordinator.pid"
    if ! coord="$(wait_listening "$!" "$HOME_DIR/coordinator.log")"; then
      stop_all
      exit 1
    fi
    echo "$coord" > "$HOME_DIR/coordinator.addr"
    for i in $(seq 1 "$n"); do
      wlisten=127.0.0.1:0
      whttp=127.0.0.1:0
      in_use $((7800 + i)) || wlisten=127.0.0.1:$((7800 + i))
      in_use $((7880 + i)) || whttp=127.0.0.1:$((7880 + i))
      "$BIN" worker --coordinator "http://$coord" --listen "$wlisten" \
        --http "$whttp" --slots 2 --work-dir "$HOME_DIR/worker-$i" \
        > "$HOME_DIR/worker-$i.log" 2>&1 &
      echo $! > "$HOME_DIR/worker-$i.pid"
      if ! wait_listening "$!" "$HOME_DIR/worker-$i.log" > /dev/null; then
        stop_all
        exit 1
      fi
    done
    dash="$(grep -m1 'listening on ' "$HOME_DIR/coordinator.log" | sed -E 's/.*\(http ([^)]+)\).*/\1/')"
    echo "coordinator http://$coord (dashboard http://$dash), $n workers; logs in $HOME_DIR"
    ;;
  stop)
    stop_all
    ;;
  *)
    echo "usage: $0 start [WORKERS] | stop" >&2
    exit 2
    ;;
esac
