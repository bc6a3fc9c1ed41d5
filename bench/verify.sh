#!/usr/bin/env bash
# bench/verify: run after the setup command (the extension installed).
#     bash bench/verify.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. test/lib/cluster.sh
work=$(mktemp -d /tmp/stripe_billing_bench.XXXXXX)
trap 'cluster_stop "$work/pg"' EXIT
cluster_start "$work/pg"
psql -X -q -f bench/verify.sql 2>&1 | sed 's/^psql:[^ ]* NOTICE:  //; s/^NOTICE:  //'
