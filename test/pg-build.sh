#!/usr/bin/env bash
# Builds a PostgreSQL the machine does not package, from Debian's source
# package, assertion-enabled, and caches it outside the clone:
#     bash test/pg-build.sh 18              # --enable-cassert --enable-debug
#     bash test/pg-build.sh 18 valgrind     # the same, with -DUSE_VALGRIND
#     bash test/pg-build.sh 18 release      # no assertions (bench/versions.sh, bench/citus.sh)
# Prints the bin directory of the build (its last line); a later run on the
# same machine finds the cached build and only prints it.  The cache is
# $SB_PG_CACHE (default /var/cache/stripe_billing).  Run as root (it
# installs the build dependencies).
#
# Debian 12 packages only PostgreSQL 15.  The source package comes from
# suite sid through a throw-away apt source list of its own (one deb-src
# line with the machine's own mirror and keyring, read from
# /etc/apt/sources.list.d/debian.sources) and lists directory of its own,
# so the machine's apt configuration is left alone.
set -euo pipefail
version=${1:?usage: test/pg-build.sh VERSION [cassert|valgrind|release]}
flavor=${2:-cassert}
cassert=--enable-cassert
case "$flavor" in
    cassert) cppflags= ;;
    valgrind) cppflags=-DUSE_VALGRIND ;;
    release) cppflags= cassert= ;;
    *) echo "pg-build: flavor must be cassert, valgrind or release, not '$flavor'" >&2; exit 2 ;;
esac
cache=${SB_PG_CACHE:-/var/cache/stripe_billing}
prefix=$cache/pg-$version-$flavor
log() { echo "pg-build: $*" >&2; }
# (apt-get waits for another apt or dpkg to finish)
. "$(dirname "$0")/lib/apt.sh"

if [ -f "$prefix/.built" ]; then
    log "PostgreSQL $(cat "$prefix/.built") ($flavor) is cached in $prefix"
    echo "$prefix/bin"
    exit 0
fi

log "installing the build dependencies"
apt_update
apt_get install -y -qq --no-install-recommends \
    gcc make perl bison flex pkg-config liblz4-dev libssl-dev zlib1g-dev xz-utils bzip2 \
    ca-certificates >/dev/null

src=$cache/src-$version
if [ ! -f "$src/.fetched" ]; then
    # the machine's mirror and keyring (the first stanza that is not security's)
    sources=/etc/apt/sources.list.d/debian.sources
    uri=$(awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }' "$sources")
    keyring=$(awk '/^Signed-By:/ { print $2; exit }' "$sources")
    [ -n "$uri" ] && [ -n "$keyring" ] || { log "no URIs/Signed-By in $sources"; exit 1; }
    rm -rf "$src"
    mkdir -p "$src/apt/lists/partial" "$src/download"
    # (apt downloads as _apt where it can write)
    id _apt >/dev/null 2>&1 && chown _apt "$src/download"
    echo "deb-src [signed-by=$keyring] $uri sid main" >"$src/apt/sources.list"
    apt_own=(-o "Dir::Etc::sourcelist=$src/apt/sources.list" -o Dir::Etc::sourceparts=-
             -o "Dir::State::Lists=$src/apt/lists")
    log "fetching the source package postgresql-$version from $uri (sid)"
    apt_update "${apt_own[@]}"
    (cd "$src/download" && apt_get "${apt_own[@]}" source --download-only -qq "postgresql-$version")
    tarball=$(ls "$src"/download/postgresql-"$version"_*.orig.tar.* | head -1)
    tar -xf "$tarball" -C "$src"
    mv "$src"/postgresql-"$version".* "$src/tree" 2>/dev/null || mv "$src"/postgresql-"$version"*/ "$src/tree"
    basename "$tarball" | sed -E 's/^postgresql-[0-9]+_([^.]+\.[^.]+)\.orig.*/\1/' >"$src/.fetched"
fi
release=$(cat "$src/.fetched")

build=$cache/build-$version-$flavor
rm -rf "$build" "$prefix"
mkdir -p "$build"
log "configuring PostgreSQL $release ($flavor) in $build"
started=$(date +%s)
(cd "$build" && "$src/tree/configure" --prefix="$prefix" $cassert --enable-debug \
    --with-lz4 --with-openssl --without-icu --without-readline \
    ${cppflags:+CPPFLAGS="$cppflags"} >configure.log 2>&1) ||
    { tail -30 "$build/configure.log" >&2; exit 1; }
log "building (make -j2; about 5 minutes on 2 cores)"
make -C "$build" -j2 -s >"$build/make.log" 2>&1 || { tail -40 "$build/make.log" >&2; exit 1; }
make -C "$build" -s install >>"$build/make.log" 2>&1
for dir in contrib/pgcrypto contrib/pg_stat_statements src/test/isolation; do
    make -C "$build/$dir" -j2 -s >>"$build/make.log" 2>&1 &&
        make -C "$build/$dir" -s install >>"$build/make.log" 2>&1 ||
        { tail -40 "$build/make.log" >&2; exit 1; }
done
# (Valgrind's suppressions, for test/valgrind.sh)
cp "$src/tree/src/tools/valgrind.supp" "$prefix/valgrind.supp"
echo "$release" >"$prefix/.built"
rm -rf "$build"
log "built PostgreSQL $release ($flavor) in $(($(date +%s) - started)) s, installed in $prefix"
echo "$prefix/bin"
