# Citus for tests and benchmarks: built from its release source beside the
# clone, and clusters of nodes on loopback.
#
#   . test/lib/cluster.sh; . test/lib/citus.sh
#   citus_source                # the tarball, or nothing (status 1)
#   citus_build                 # PG_BINDIR := a copy of PG_BINDIR's PostgreSQL
#                               # with Citus built into it (cached)
#   citus_node_start DIR [postgresql.conf line ...]
#                               # a node listening on 127.0.0.1, on a free
#                               # port of its own: sets NODE_PORT
#   citus_psql PORT [psql arguments ...]
#                               # psql on that node (TCP on loopback)
#
# Citus is not packaged by Debian.  Its release sources are in
# ../shared/vendor beside the clone (SB_CITUS_VENDOR to look elsewhere);
# Citus 14 builds against PostgreSQL 16 to 18.  citus_build copies the
# PostgreSQL of PG_BINDIR (one of test/pg-build.sh's) to
# $SB_PG_CACHE/citus-<version>-<that build's name> and builds Citus into the
# copy, once (199 s on 2 shared cores, the copy included; without
# libcurl, which Citus uses only for its anonymous statistics, and zstd); a
# later call finds it and only sets PG_BINDIR.  The caller installs
# stripe_billing into the copy.
# Nodes are cluster.sh clusters, run by SB_TEST_USER.

SB_CITUS_VERSION=${SB_CITUS_VERSION:-14.0.1}
SB_CITUS_VENDOR=${SB_CITUS_VENDOR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)/shared/vendor}

citus_source() {
    local tarball=$SB_CITUS_VENDOR/citus-$SB_CITUS_VERSION.tar.gz
    [ -f "$tarball" ] || return 1
    echo "$tarball"
}

citus_build() {
    local tarball prefix cache dest stamp build started
    tarball=$(citus_source) || { echo "citus: no citus-$SB_CITUS_VERSION.tar.gz in $SB_CITUS_VENDOR" >&2; return 1; }
    prefix=$(cd "$PG_BINDIR/.." && pwd)
    cache=${SB_PG_CACHE:-/var/cache/stripe_billing}
    dest=$cache/citus-$SB_CITUS_VERSION-$(basename "$prefix")
    # rebuilt when PostgreSQL was (a new release, another build)
    stamp="citus $SB_CITUS_VERSION on $("$PG_BINDIR/postgres" --version) $(stat -c %Y "$PG_BINDIR/postgres")"
    mkdir -p "$cache"
    (
        # one build at a time (two suites on one machine)
        flock 9
        [ -f "$dest/.built" ] && [ "$(cat "$dest/.built")" = "$stamp" ] && exit 0
        echo "citus: building Citus $SB_CITUS_VERSION into a copy of $prefix ($dest)" >&2
        started=$(date +%s)
        rm -rf "$dest" "$dest.build"
        cp -a "$prefix" "$dest"
        mkdir -p "$dest.build"
        tar -xzf "$tarball" -C "$dest.build" --strip-components=1
        (cd "$dest.build" &&
            ./configure PG_CONFIG="$dest/bin/pg_config" --without-libcurl --without-zstd >configure.log 2>&1 &&
            make -j2 -s >make.log 2>&1 && make -s install >>make.log 2>&1) ||
            { tail -30 "$dest.build"/configure.log "$dest.build"/make.log >&2; exit 1; }
        rm -rf "$dest.build"
        echo "$stamp" >"$dest/.built"
        echo "citus: built in $(($(date +%s) - started)) s" >&2
    ) 9>"$cache/citus.lock" || return 1
    PG_BINDIR=$dest/bin
}

# A port nothing listens on (ss), and none of this run's nodes took.
_citus_free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 40000))
        case " ${_citus_ports:-} " in *" $port "*) continue ;; esac
        ss -Htln "sport = :$port" 2>/dev/null | grep -q . && continue
        echo "$port"
        return 0
    done
    return 1
}

# Starts a node in DIR on a free port (another if the chosen one was taken
# meanwhile); sets NODE_PORT.  (cluster_start's PGHOST and PGPORT stay in
# its subshell.)
citus_node_start() {
    local dir=$1 port
    shift
    for _ in 1 2 3 4 5; do
        port=$(_citus_free_port) || return 1
        _citus_ports="${_citus_ports:-} $port"
        rm -rf "$dir"
        if (cluster_start "$dir" "listen_addresses = '127.0.0.1'" "port = $port" \
            "max_prepared_transactions = 100" "$@" >/dev/null 2>&1); then
            NODE_PORT=$port
            return 0
        fi
        grep -q 'could not bind\|Address already in use' "$dir/server.log" 2>/dev/null || break
    done
    cat "$dir/initdb.log" "$dir/server.log" 2>/dev/null | tail -20
    return 1
}

# psql on the node listening on PORT (TCP on loopback).
citus_psql() {
    local port=$1
    shift
    "$PG_BINDIR/psql" -X -h 127.0.0.1 -p "$port" "$@"
}
