#!/bin/sh
# API container start: bring the database schema to head (Alembic, via dwf_service.migrate), then serve.
# Several API replicas may start together; Alembic's upgrade runs in one transaction on PostgreSQL, and a
# replica that loses the race retries below instead of crashing the deployment.
set -eu

tries=0
until python -m dwf_service.migrate; do
  tries=$((tries + 1))
  if [ "$tries" -ge "${DWF_MIGRATE_TRIES:-10}" ]; then
    echo "entrypoint-api: migrations failed $tries times, giving up" >&2
    exit 1
  fi
  echo "entrypoint-api: migrations failed (attempt $tries), retrying in 3 s" >&2
  sleep 3
done

if [ "$#" -gt 0 ]; then
  exec "$@"
fi
# --proxy-headers: the API sits behind a reverse proxy in most deployments (TLS terminates there).
# --http: with --workers uvicorn leaves TCP_NODELAY off, stalling keep-alive clients ~40 ms a request (api/http_protocol.py).
exec uvicorn "${DWF_API_APP:-api.main:app}" \
  --host 0.0.0.0 --port "${DWF_API_PORT:-8000}" \
  --workers "${DWF_API_WORKERS:-2}" \
  --http api.http_protocol:NoDelayH11Protocol \
  --proxy-headers --forwarded-allow-ips "${DWF_FORWARDED_ALLOW_IPS:-*}"
