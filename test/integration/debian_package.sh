#!/usr/bin/env bash
# The Debian package: debian/ built with pg_buildext (dh --with pgxs_loop)
# by dpkg-buildpackage in a copy of the tree, the .deb installed (apt-get,
# which waits for another apt or dpkg to finish), then the regression and
# isolation tests run (make installcheck) against a cluster using the
# packaged files; the package removed afterwards and the suite's own build
# installed again.  For Debian's PostgreSQL 15 (the version of
# debian/pgversions).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
root=$(pwd)
. test/lib/cluster.sh
. test/lib/build.sh
. test/lib/apt.sh
PG_BINDIR=/usr/lib/postgresql/15/bin
work_begin deb
package=postgresql-15-stripe-billing
# (at exit, after the cluster stops: at_exit runs the last registered first)
restore() {
    if dpkg -s "$package" >/dev/null 2>&1; then
        apt_get remove -y -qq "$package" >"$work/remove.log" 2>&1 || { echo "removing $package failed:"; tail -5 "$work/remove.log"; return 1; }
    fi
    make -s PG_CONFIG="$PG_BINDIR/pg_config" install >/dev/null   # (the suite's build, as it was)
}
at_exit restore
fail=0
version=$(sed -n "s/^default_version = '\(.*\)'/\1/p" stripe_billing.control)

mkdir -p "$work/src/stripe-billing"
tar --exclude=.git --exclude=node_modules --exclude='*.o' --exclude='*.so' --exclude='*.bc' \
    --exclude=results --exclude=output_iso -cf - . | tar -C "$work/src/stripe-billing" -xf -
if (cd "$work/src/stripe-billing" && dpkg-buildpackage -b -us -uc >"$work/build.log" 2>&1); then
    echo "PASS  dpkg-buildpackage built $(cd "$work/src" && ls -- *.deb | grep -v dbgsym | paste -sd ' ')"
else
    echo "FAIL  dpkg-buildpackage:"; tail -15 "$work/build.log" | sed 's/^/      /'; exit 1
fi
deb=$work/src/${package}_${version}_$(dpkg --print-architecture).deb
if apt_get install -y -qq --no-install-recommends "$deb" >"$work/dpkg.log" 2>&1 &&
   [ "$(dpkg-query -W -f '${Version} ${Status}' "$package")" = "$version install ok installed" ]; then
    echo "PASS  the .deb installed $package $version"
else
    echo "FAIL  installing the .deb:"; tail -5 "$work/dpkg.log" | sed 's/^/      /'; exit 1
fi
files=$(dpkg -L "$package")
for f in "$PG_BINDIR/../lib/stripe_billing.so" /usr/share/postgresql/15/extension/stripe_billing.control \
         /usr/share/postgresql/15/extension/stripe_billing--0.1.0--0.2.0.sql \
         /usr/share/postgresql/15/extension/stripe_billing--0.2.0--0.3.0.sql \
         "/usr/share/postgresql/15/extension/stripe_billing--$version.sql"; do
    f=$(realpath -m "$f")
    grep -qx "$f" <<<"$files" || { echo "FAIL  the package lacks $f"; fail=1; }
done
[ $fail = 0 ] && echo "PASS  the package holds the library, the control file and the install and upgrade scripts"

# the packaged files answer the regression and isolation tests
cluster_start "$work/pg" "shared_preload_libraries = 'stripe_billing'" || exit 1
installcheck "$PG_BINDIR" "$work/installcheck.log" >/dev/null
if [ "$CHECK_BAD" -eq 0 ] && [ "$CHECK_OK" -gt 10 ]; then
    echo "PASS  make installcheck against the installed package: $CHECK_OK tests passed"
else
    echo "FAIL  make installcheck against the installed package: $CHECK_OK passed, $CHECK_BAD failed"
    grep -E 'FAILED|not ok' "$work/installcheck.log" | head -5 | sed 's/^/      /'; fail=1
fi
exit $fail
