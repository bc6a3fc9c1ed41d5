# Throwaway PostgreSQL clusters for tests, demos and benchmarks.
#
# PostgreSQL refuses to run as root, so when we are root the server runs as
# an unprivileged user (postgres by default).  Each cluster lives in its own
# temporary directory and listens on a Unix socket there only.
#
#   . test/lib/cluster.sh
#   cluster_start DIR [postgresql.conf line ...]   # sets PGHOST/PGPORT/PGUSER
#   cluster_stop DIR                               # and reports a crash
#
# PG_BINDIR chooses the PostgreSQL (default: Debian's 15);
# SB_POSTGRES_WRAPPER, a program pg_ctl starts instead of postgres (which
# execs it: test/valgrind.sh), and SB_START_TIMEOUT how long to wait (s).  When
# SB_CRASH_REPORT names a file, cluster_stop appends to it any assertion
# failure or crash its server logged (test/run.sh fails the run on one):
# a backend killed on purpose (signal 9) is not one.
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
SB_TEST_USER=${SB_TEST_USER:-postgres}

# Runs a command as the cluster's owner.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u "$SB_TEST_USER" -- "$@"
    else
        "$@"
    fi
}

# Creates and starts a cluster in DIR; extra arguments go to postgresql.conf.
cluster_start() {
    local dir=$1; shift
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        chown "$SB_TEST_USER" "$dir"
        # the owner must reach it through a mktemp -d (mode 700) parent
        chmod o+x "$(dirname "$dir")"
    fi
    chmod 755 "$dir"
    as_owner "$PG_BINDIR/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 \
        --locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log"; return 1; }
    {
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$dir'"
        echo "port = 5432"
        echo "fsync = off"
        echo "log_line_prefix = '%m [%p] %q%u@%d '"
        for line in "$@"; do echo "$line"; done
    } | as_owner tee -a "$dir/data/postgresql.conf" >/dev/null
    as_owner "$PG_BINDIR/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t "${SB_START_TIMEOUT:-60}" \
        ${SB_POSTGRES_WRAPPER:+-p "$SB_POSTGRES_WRAPPER"} start >/dev/null ||
        { cat "$dir/server.log"; return 1; }
    export PGHOST=$dir PGPORT=5432 PGUSER=postgres PGDATABASE=postgres
}

# Stops the cluster in DIR (fast) and leaves its files for inspection.
cluster_stop() {
    as_owner "$PG_BINDIR/pg_ctl" -D "$1/data" -m fast -w stop >/dev/null 2>&1 || true
    cluster_check_log "$1/server.log"
}

# Appends to $SB_CRASH_REPORT the assertion failures and crashes in a
# server log (TRAP: ..., terminated by signal 6, 7, 8, 11).
cluster_check_log() {
    [ -n "${SB_CRASH_REPORT:-}" ] && [ -f "$1" ] || return 0
    grep -E 'TRAP: |terminated by signal (4|6|7|8|11)[^0-9]' "$1" | sed "s|^|$1: |" >>"$SB_CRASH_REPORT" || true
}
