#!/usr/bin/env bash
# Throwaway backing services for the integration tier and for running the job service by hand against real
# servers: redis-server (AOF on, noeviction), a PostgreSQL 15 cluster and moto's S3 server, all on 127.0.0.1,
# all state under DIR. Installs redis-server / postgresql with apt-get when missing (root only).
#
#   bash scripts/services.sh start  [--dir DIR]   # idempotent; prints the URLs to export
#   bash scripts/services.sh status [--dir DIR]
#   bash scripts/services.sh stop   [--dir DIR]   # stops only the processes whose pid files are in DIR
#
# Ports: DWF_TEST_REDIS_PORT (6390), DWF_TEST_PG_PORT (5440), DWF_TEST_S3_PORT (5005).
# DIR defaults to $DWF_TEST_SERVICES_DIR or /tmp/dwf-services (it must be reachable by the postgres user).
# The pytest fixtures in tests/integration/conftest.py reuse these servers when DWF_TEST_REDIS_URL,
# DWF_TEST_POSTGRES_URL and DWF_TEST_S3_ENDPOINT are exported (`eval "$(bash scripts/services.sh start --env)"`).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

usage() { echo "usage: $0 start|stop|status [--dir DIR] [--env]" >&2; exit 2; }
[ $# -ge 1 ] || usage
CMD=$1; shift
DIR=${DWF_TEST_SERVICES_DIR:-/tmp/dwf-services}
ENV_ONLY=0
while [ $# -gt 0 ]; do
  case $1 in
    --dir) [ $# -ge 2 ] || usage; DIR=$2; shift 2 ;;
    --dir=*) DIR=${1#--dir=}; shift ;;
    --env) ENV_ONLY=1; shift ;;
    *) usage ;;
  esac
done
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

REDIS_PORT=${DWF_TEST_REDIS_PORT:-6390}
PG_PORT=${DWF_TEST_PG_PORT:-5440}
S3_PORT=${DWF_TEST_S3_PORT:-5005}
PG_BIN=${DWF_TEST_PG_BIN:-/usr/lib/postgresql/15/bin}
REDIS_URL="redis://127.0.0.1:${REDIS_PORT}/0"
PG_URL="postgresql+psycopg://postgres@127.0.0.1:${PG_PORT}/dwf"
S3_URL="http://127.0.0.1:${S3_PORT}"

log() { echo "services: $*" >&2; }
is_root() { [ "$(id -u)" = 0 ]; }

source "$ROOT/scripts/apt_missing.sh"

ensure_binaries() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  [ -x "$PG_BIN/initdb" ] || missing+=(postgresql-15)
  apt_install_missing services exit ${missing[@]+"${missing[@]}"}
  if [ -x "$ROOT/.venv/bin/python" ] && "$ROOT/.venv/bin/python" -c "import moto.server, flask" 2>/dev/null; then
    MOTO=("$ROOT/.venv/bin/python" -m moto.server)
  elif command -v moto_server >/dev/null 2>&1; then
    MOTO=(moto_server)
  elif [ -x "$ROOT/.venv/bin/pip" ]; then
    log "installing moto[server] into .venv"
    "$ROOT/.venv/bin/pip" install --quiet 'moto[server]'
    MOTO=("$ROOT/.venv/bin/python" -m moto.server)
  else
    log "moto_server missing: pip install 'moto[server]' (or run scripts/setup.sh)"; exit 1
  fi
}

# pid_alive PIDFILE NAME: the pid in PIDFILE runs and its command line mentions NAME (guards against pid reuse).
pid_alive() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(head -n1 "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

# wait_port PORT SECONDS: until something accepts TCP connections on 127.0.0.1:PORT.
wait_port() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

as_pg() {  # run a command as the postgres user when root (PostgreSQL refuses to run as root)
  if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_redis() {
  if pid_alive "$DIR/redis.pid" redis-server; then log "redis already running (pid $(cat "$DIR/redis.pid"))"; return; fi
  mkdir -p "$DIR/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DIR/redis" \
    --appendonly yes --maxmemory-policy noeviction --save "" \
    --daemonize yes --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log"
  wait_port "$REDIS_PORT" 10 || { log "redis did not start, see $DIR/redis.log"; exit 1; }
  log "redis started on $REDIS_PORT (pid $(cat "$DIR/redis.pid"))"
}

pg_pidfile() { echo "$DIR/pg/data/postmaster.pid"; }

start_postgres() {
  local pgdir=$DIR/pg
  if pid_alive "$(pg_pidfile)" postgres; then log "postgres already running (pid $(head -n1 "$(pg_pidfile)"))"; return; fi
  mkdir -p "$pgdir"
  if is_root; then chown postgres: "$pgdir"; chmod 0700 "$pgdir"; fi
  if [ ! -f "$pgdir/data/PG_VERSION" ]; then
    as_pg "$PG_BIN/initdb" -D "$pgdir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$pgdir/initdb.log" 2>&1 \
      || { log "initdb failed, see $pgdir/initdb.log"; exit 1; }
  fi
  as_pg "$PG_BIN/pg_ctl" -D "$pgdir/data" -l "$pgdir/pg.log" \
    -o "-p $PG_PORT -k $pgdir -c listen_addresses=127.0.0.1 -c fsync=off" -w start >/dev/null \
    || { log "postgres did not start, see $pgdir/pg.log"; exit 1; }
  if [ "$(as_pg "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atc \
          "select 1 from pg_database where datname = 'dwf'")" != 1 ]; then
    as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres dwf
  fi
  log "postgres started on $PG_PORT (pid $(head -n1 "$(pg_pidfile)"))"
}

start_s3() {
  if pid_alive "$DIR/moto.pid" moto; then log "moto S3 already running (pid $(cat "$DIR/moto.pid"))"; return; fi
  nohup "${MOTO[@]}" -p "$S3_PORT" -H 127.0.0.1 >"$DIR/moto.log" 2>&1 </dev/null &
  echo $! >"$DIR/moto.pid"
  wait_port "$S3_PORT" 30 || { log "moto did not start, see $DIR/moto.log"; exit 1; }
  log "moto S3 started on $S3_PORT (pid $(cat "$DIR/moto.pid"))"
}

stop_pidfile() {  # stop_pidfile PIDFILE NAME
  local pid i
  if pid_alive "$1" "$2"; then
    pid=$(head -n1 "$1")
    kill -TERM "$pid"
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
    log "$2 stopped (pid $pid)"
  else
    log "$2 not running"
  fi
  rm -f "$1"
}

stop_postgres() {
  if pid_alive "$(pg_pidfile)" postgres; then
    as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg/data" -m fast -w stop >/dev/null
    log "postgres stopped"
  else
    log "postgres not running"
  fi
}

print_env() {
  echo "export DWF_TEST_REDIS_URL=$REDIS_URL"
  echo "export DWF_TEST_POSTGRES_URL=$PG_URL"
  echo "export DWF_TEST_S3_ENDPOINT=$S3_URL"
}

print_urls() {
  [ "$ENV_ONLY" = 1 ] && { print_env; return; }
  echo "redis:    $REDIS_URL"
  echo "postgres: $PG_URL"
  echo "s3:       $S3_URL   (moto: any access key / secret, region us-east-1)"
  echo "reuse them in pytest:"
  print_env | sed 's/^/  /'
}

status_one() {  # status_one LABEL PIDFILE NAME
  if pid_alive "$2" "$3"; then echo "$1: running (pid $(head -n1 "$2"))"; else echo "$1: stopped"; fi
}

case $CMD in
  start)
    ensure_binaries
    start_redis
    start_postgres
    start_s3
    print_urls
    ;;
  stop)
    stop_pidfile "$DIR/moto.pid" moto
    stop_postgres
    stop_pidfile "$DIR/redis.pid" redis-server
    ;;
  status)
    status_one "redis    $REDIS_URL" "$DIR/redis.pid" redis-server
    status_one "postgres $PG_URL" "$(pg_pidfile)" postgres
    status_one "s3       $S3_URL" "$DIR/moto.pid" moto
    ;;
  *) usage ;;
esac
