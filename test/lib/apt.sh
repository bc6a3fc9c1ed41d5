# apt-get for the scripts that install packages (scripts/install-deps.sh,
# test/pg-build.sh, test/valgrind.sh, test/integration/debian_package.sh): another apt
# or dpkg at work (unattended-upgrades, a second clone's run) is waited for,
# up to SB_APT_LOCK_TIMEOUT s (600), instead of failing the run.
#
#   . test/lib/apt.sh
#   apt_get ARG...            # apt-get -o DPkg::Lock::Timeout=... ARG...
#   apt_update [ARG...]       # apt-get ARG... update -qq, waiting for the lists lock
#
# APT_SUDO, when set (sudo), comes before apt-get.
SB_APT_LOCK_TIMEOUT=${SB_APT_LOCK_TIMEOUT:-600}
APT_SUDO=${APT_SUDO:-}

# (DPkg::Lock::Timeout waits for the dpkg lock: install, remove, and
# installing a .deb, which goes through apt-get rather than dpkg -i)
apt_get() {
    $APT_SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout="$SB_APT_LOCK_TIMEOUT" "$@"
}

# apt-get update takes the lists lock, which DPkg::Lock::Timeout does not
# cover (apt 2.6 fails at once): tried again every 5 s while another holds it.
apt_update() {
    local deadline=$((SECONDS + SB_APT_LOCK_TIMEOUT)) out rc
    while :; do
        # (as a condition: callers may run under set -e)
        if out=$(apt_get "$@" update -qq 2>&1); then rc=0; else rc=$?; fi
        if [ $rc -ne 0 ] && grep -q 'Could not get lock' <<<"$out" && [ $SECONDS -lt "$deadline" ]; then
            echo "apt-get update: $(grep -m1 'Could not get lock' <<<"$out"); waiting" >&2
            sleep 5
            continue
        fi
        [ -n "$out" ] && echo "$out" >&2
        return $rc
    done
}
