#!/usr/bin/env bash
# Installs what building and testing stripe_billing needs on Debian 12, then
# builds and installs the extension.  Run as root (or with sudo available).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi
# (apt-get waits for another apt or dpkg to finish: test/lib/apt.sh)
APT_SUDO=$sudo
. test/lib/apt.sh

packages=(
    make gcc
    postgresql-15 postgresql-client-15 postgresql-server-dev-15
    libcurl4-openssl-dev libssl-dev
    curl jq pgbouncer python3-psycopg python3-psycopg-pool python3-fastapi python3-uvicorn
    debhelper postgresql-server-dev-all
    nodejs npm
)
# nodejs/npm may come from elsewhere already (a newer Node): keep it then.
command -v node >/dev/null && command -v npm >/dev/null &&
    packages=("${packages[@]/nodejs}") && packages=("${packages[@]/npm}")

echo "== installing Debian packages"
apt_update
apt_get install -y -qq --no-install-recommends ${packages[@]} >/dev/null

echo "== installing the official stripe SDK (npm) for the cross-checks"
npm ci --prefix test/integration/node --no-audit --no-fund --loglevel=error >/dev/null
echo "== installing the Express example's packages (npm)"
npm ci --prefix examples/node --no-audit --no-fund --loglevel=error >/dev/null

echo "== building and installing stripe_billing"
make -s PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
$sudo make -s PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config install >/dev/null
