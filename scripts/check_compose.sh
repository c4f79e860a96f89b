#!/usr/bin/env bash
# Validate docker-compose.yml without a Docker engine: Debian's docker-compose 1.29 `config` parses the file,
# checks it against the compose schema and interpolates it, using .env.example's placeholder values.
# Installs docker-compose with apt-get when it is missing. Usage: bash scripts/check_compose.sh [--quiet]
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/apt_missing.sh
command -v docker-compose >/dev/null 2>&1 || apt_install_missing check_compose exit docker-compose

# .env.example (placeholders only) as the env file: the check must not depend on a developer's .env.
env_file=.env.example

if [ "${1:-}" = "--quiet" ]; then
  docker-compose --env-file "$env_file" -f docker-compose.yml config --quiet
else
  docker-compose --env-file "$env_file" -f docker-compose.yml config
fi
echo "check_compose: docker-compose.yml is valid ($(docker-compose version --short 2>/dev/null || echo '?'))" >&2
