#!/usr/bin/env bash
# make packages-test: prove the packages from `make packages` for real. Needs root.
#
#   1. static: lintian, rpmlint, shellcheck, the SSM documents against packaging/schema/,
#      cfn-lint, systemd-analyze security (exposure <= 2.0)
#   2. a debootstrapped Debian 12 root (cached in $S3PULL_BUILD_CACHE between local runs,
#      fresh when CI=true), copied once per package format
#   3. .deb in its copy, offline: install, upgrade with an edited conffile, remove, purge
#   4. .rpm in its copy with `rpm --root`: install, upgrade, erase
#   5. each copy boots under systemd-nspawn: s3pull.service reaches active (READY), runs
#      as s3pull, syncs from a moto server on the host's loopback, reloads on SIGHUP,
#      passes systemd-analyze verify, takes a configuration from the SSM Command
#      document, and stops cleanly
#
# KEEP=1 keeps the work directory (container roots, logs) for a look afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=packaging/lib.sh
. packaging/lib.sh

VERSION=$(project_version)
DEB=dist/s3pull_${VERSION}-1_all.deb
RPM=dist/s3pull-${VERSION}-1.noarch.rpm
for package in "$DEB" "$RPM"; do
    [ -e "$package" ] || die "no $package: run make packages first"
done
[ "$(id -u)" -eq 0 ] || die "packages-test needs root (debootstrap, systemd-nspawn)"
CACHE=${S3PULL_BUILD_CACHE:-/var/cache/s3pull-build}
VENV_PY=$PWD/.venv/bin/python
START=$SECONDS

WORK=$(mktemp -d /var/tmp/s3pull-packages-test.XXXXXX)
NSPAWN_PID=""
LEADER=""
MOTO_PID=""
cleanup() {
    local status=$?
    # Only what this script started, by PID: the container (SIGTERM makes nspawn power
    # it off; if that hangs, its init and nspawn get SIGKILL), then moto.
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        kill -TERM "$NSPAWN_PID" 2>/dev/null || true
        if ! timeout 30 tail --pid="$NSPAWN_PID" -f /dev/null; then
            if [ -n "$LEADER" ]; then kill -KILL "$LEADER" 2>/dev/null || true; fi
            kill -KILL "$NSPAWN_PID" 2>/dev/null || true
            sleep 1
        fi
    fi
    if [ -n "$MOTO_PID" ]; then
        kill -TERM "$MOTO_PID" 2>/dev/null || true
        wait "$MOTO_PID" 2>/dev/null || true
    fi
    if [ "${KEEP:-}" = 1 ]; then
        say "kept $WORK"
    elif [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        # Its mounts live in a namespace of their own: never delete under a live one.
        echo "s3pull packaging: container $NSPAWN_PID still running; left $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    if [ "$status" -eq 0 ]; then
        say "packages-test passed in $((SECONDS - START)) s"
    else
        say "packages-test FAILED after $((SECONDS - START)) s"
    fi
}
trap cleanup EXIT

step() { say "$* [$((SECONDS - START)) s]"; }
ok() { echo "$label: ok: $* [$((SECONDS - START)) s]"; }

ensure_debs lintian rpmlint rpm shellcheck debootstrap systemd-container procps
ensure_tools

# -- 1. static checks --------------------------------------------------------------------
step "lintian"
status=0
output=$(lintian --pedantic --display-experimental --fail-on error,warning,pedantic "$DEB" 2>&1) || status=$?
grep -v 'running with root privileges' <<<"$output" || true
[ "$status" -eq 0 ] || die "lintian found problems in $DEB"
echo "lintian: clean (pedantic and experimental tags included)"

step "rpmlint"
status=0
output=$(rpmlint -c packaging/rpm/rpmlint.toml "$RPM" 2>&1) || status=$?
grep -v 'running with root privileges' <<<"$output" | tail -n 1
[ "$status" -eq 0 ] || { echo "$output"; die "rpmlint found problems in $RPM"; }
# The man page rpmlint 2.4 cannot see (see rpmlint.toml):
rpm -qlp "$RPM" | grep -qx /usr/share/man/man1/s3pull.1.gz || die "$RPM has no man page"

step "SSM documents against packaging/schema/"
"$TOOLS/bin/python" packaging/test/validate_ssm.py packaging/ssm/s3pull-configure.json \
    dist/ssm/manifest.json "$WORK/ssm-scripts"

step "shellcheck"
shellcheck -x packaging/build.sh packaging/lib.sh packaging/test/*.sh
shellcheck -s sh packaging/files/s3pull packaging/files/s3pull-setup packaging/deb/postinst \
    packaging/deb/prerm packaging/deb/postrm packaging/rpm/post packaging/rpm/preun \
    packaging/rpm/postun packaging/ssm/distributor/*/*.sh "$WORK"/ssm-scripts/*.sh
echo "shellcheck: clean"

if [ -e infra/ssm-association.yaml ]; then
    step "cfn-lint infra/ssm-association.yaml"
    "$TOOLS/bin/cfn-lint" infra/ssm-association.yaml
    echo "cfn-lint: clean"
fi

step "systemd-analyze security --offline=yes (gate: exposure <= 2.0)"
# --threshold counts tenths: 20 is 2.0.
systemd-analyze security --offline=yes --threshold=20 packaging/systemd/s3pull.service | tail -n 1

# -- 2. a Debian 12 root ---------------------------------------------------------------
# procps: /bin/kill for ExecReload (Priority: important, so on every real Debian system).
INCLUDE=python3,systemd,systemd-sysv,procps
base_key=$(echo "bookworm minbase $INCLUDE" | sha256sum | cut -c1-12)
if [ "${CI:-}" = true ]; then
    BASE=$WORK/base
else
    BASE=$CACHE/bookworm-$base_key
fi
if [ ! -e "$BASE/.complete" ]; then
    step "debootstrap Debian 12 into $BASE"
    rm -rf "$BASE" "$BASE.partial"
    mkdir -p "$(dirname "$BASE")"
    debootstrap --variant=minbase --include="$INCLUDE" bookworm "$BASE.partial" \
        http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 ||
        { tail -n 20 "$WORK/debootstrap.log"; die "debootstrap failed"; }
    # A container boots faster and quieter without these; neither matters here.
    echo s3pull-test >"$BASE.partial/etc/hostname"
    mv "$BASE.partial" "$BASE"
    touch "$BASE/.complete"
else
    step "cached Debian 12 root $BASE"
fi

# The base root is never booted or mounted into: each format gets a copy.
new_root() {
    local root=$WORK/$1
    cp -a "$BASE" "$root"
    rm -f "$root/.complete"
    echo "$root"
}

# systemd-nspawn the way this machine allows (see FACTS: a private mount namespace and a
# tmpfs on /run/systemd, since the host does not run systemd). An array, not a function,
# so that `"${NSPAWN[@]}" ... &` leaves $! = the PID of nspawn itself (unshare and sh
# exec into it).
NSPAWN=(unshare -m sh -c 'mount --make-rprivate / && mkdir -p /run/systemd &&
    mount -t tmpfs tmpfs /run/systemd &&
    exec systemd-nspawn --register=no --keep-unit -q --console=pipe "$@"' nspawn)
nspawn() { "${NSPAWN[@]}" "$@"; }

# -- 3. the .deb: install, upgrade, remove, purge -------------------------------------
step "deb: install, upgrade (edited conffile), remove, purge, offline"
DEB_ROOT=$(new_root deb-root)
# A second build whose s3pull.toml differs, as a real upgrade's might.
DIST="$WORK/dist2" PKG_RELEASE=2 PKG_CONFIG_NOTE="release 2" PKG_REUSE_PEX=1 packaging/build.sh >/dev/null 2>&1 ||
    die "building the release 2 packages failed"
DEB2=$WORK/dist2/s3pull_${VERSION}-2_all.deb
RPM2=$WORK/dist2/s3pull-${VERSION}-2.noarch.rpm
# Not /tmp: nspawn mounts a fresh tmpfs there.
mkdir -p "$DEB_ROOT/root/pkgtest"
cp "$DEB" "$DEB2" packaging/test/deb-lifecycle.sh "$DEB_ROOT/root/pkgtest/"
nspawn -D "$DEB_ROOT" --private-network --setenv=LANG=C.UTF-8 /bin/sh /root/pkgtest/deb-lifecycle.sh \
    "/root/pkgtest/$(basename "$DEB")" "/root/pkgtest/$(basename "$DEB2")"

# -- 4. the .rpm: install, upgrade, erase with rpm --root ------------------------------
step "rpm: install, upgrade (edited config), erase with rpm --root"
RPM_ROOT=$(new_root rpm-root)
rpm_root() { rpm --root "$RPM_ROOT" --dbpath /var/lib/rpm "$@"; }
rpm_fail() { die "rpm: $*"; }
# --nodeps: the root is Debian, whose Python and systemd rpm cannot see.
rpm_root --nodeps -i "$RPM"
[ -x "$RPM_ROOT/usr/lib/s3pull/venv/bin/s3pull" ] || rpm_fail "no venv after install"
grep -q '^s3pull:' "$RPM_ROOT/etc/passwd" || rpm_fail "no user s3pull"
[ -L "$RPM_ROOT/etc/systemd/system/multi-user.target.wants/s3pull.service" ] || rpm_fail "not enabled"
echo "rpm: ok: install $(rpm_root -q s3pull)"
echo "# edited by packages-test" >>"$RPM_ROOT/etc/s3pull/s3pull.toml"
rpm_root --nodeps -U "$RPM2"
grep -q '^# edited by packages-test' "$RPM_ROOT/etc/s3pull/s3pull.toml" || rpm_fail "edited config replaced"
[ -e "$RPM_ROOT/etc/s3pull/s3pull.toml.rpmnew" ] || rpm_fail "no .rpmnew beside the edited config"
[ -x "$RPM_ROOT/usr/lib/s3pull/venv/bin/s3pull" ] || rpm_fail "no venv after upgrade"
echo "rpm: ok: upgrade to $(rpm_root -q s3pull), edited config kept"
rpm_root --nodeps -e s3pull
[ ! -e "$RPM_ROOT/usr/lib/s3pull" ] || rpm_fail "/usr/lib/s3pull left after erase"
[ ! -e "$RPM_ROOT/etc/systemd/system/multi-user.target.wants/s3pull.service" ] || rpm_fail "still enabled"
[ -e "$RPM_ROOT/etc/s3pull/s3pull.toml.rpmsave" ] || rpm_fail "edited config not saved as .rpmsave"
echo "rpm: ok: erase (edited config kept as .rpmsave)"
rpm_root --nodeps -i "$RPM2"
echo "rpm: ok: installed $(rpm_root -q s3pull) again for the boot test"

# -- 5. boot each root -----------------------------------------------------------------
step "moto server on the host's loopback"
"$VENV_PY" packaging/test/moto_fixture.py serve "$WORK/moto-endpoint" &
MOTO_PID=$!
timeout 60 sh -c "until [ -s '$WORK/moto-endpoint' ]; do sleep 0.2; done" || die "moto did not start"
ENDPOINT=$(cat "$WORK/moto-endpoint")
moto() { "$VENV_PY" packaging/test/moto_fixture.py "$@"; }

in_container() {
    nsenter -a -t "$LEADER" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin SYSTEMD_PAGER=cat "$@"
}
wait_for() { # SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local limit=$1 what=$2 deadline=$((SECONDS + $1))
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || { echo "timed out after ${limit} s waiting for $what" >&2; return 1; }
        sleep 0.5
    done
}
container_init() {
    local pid
    for pid in $(ps -o pid= --ppid "$NSPAWN_PID"); do
        if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = systemd ]; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}
booted() { in_container systemctl is-system-running | grep -qx 'running\|degraded'; }
service_is() { [ "$(in_container systemctl is-active s3pull.service)" = "$1" ]; }
main_pid() { in_container systemctl show -p MainPID --value s3pull.service; }
show_logs() {
    echo "--- end of the container's console ---" >&2
    tail -n 15 "$WORK/$label-console.log" >&2 || true
    echo "--- journal of s3pull.service ---" >&2
    in_container journalctl -u s3pull.service --no-pager -n 60 -o cat >&2 || true
}

write_config() { # ROOT FILE QUEUE_URL BUCKET DIRECTORY...
    local root=$1 file=$2 queue=$3 bucket=$4 name
    shift 4
    {
        printf '[aws]\nregion = "us-east-1"\nendpoint_url = "%s"\n\n' "$ENDPOINT"
        printf '[queue]\nurl = "%s"\nwait_time_seconds = 2\n\n' "$queue"
        printf '[agent]\nconcurrency = 4\n'
        for directory in "$@"; do
            name=$(basename "$directory")
            printf '\n[[mirror]]\nname = "%s"\nbucket = "%s"\nprefix = ""\ndirectory = "%s"\n' \
                "$name" "$bucket" "$directory"
        done
    } >"$root$file"
}

boot_test() { # ROOT LABEL
    local root=$1 label=$2 pipeline queue bucket pid pid2 output exposure boot_start
    step "$label: boot under systemd-nspawn"
    pipeline=$(moto pipeline "$ENDPOINT" "pkgtest-$label")
    queue=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["queue_url"])' <<<"$pipeline")
    bucket=pkgtest-$label
    moto put "$ENDPOINT" "$bucket" before.txt "uploaded before boot"

    # What an operator does after installing: a configuration, then site-paths.
    write_config "$root" /etc/s3pull/s3pull.toml "$queue" "$bucket" /srv/pkgtest
    nspawn -D "$root" --private-network /usr/libexec/s3pull/s3pull-setup site-paths
    # Test-only: moto's dummy credentials, and never a request to instance metadata.
    mkdir -p "$root/etc/systemd/system/s3pull.service.d"
    printf '[Service]\nEnvironment=AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true\n' \
        >"$root/etc/systemd/system/s3pull.service.d/90-packages-test.conf"

    boot_start=$SECONDS
    "${NSPAWN[@]}" -D "$root" -b >"$WORK/$label-console.log" 2>&1 &
    NSPAWN_PID=$!
    # nspawn's first child is a helper that exits; the container's init is the child
    # that runs systemd.
    wait_for 30 "the container's init" container_init ||
        { tail -n 30 "$WORK/$label-console.log"; die "$label: the container did not start"; }
    LEADER=$(container_init)
    wait_for 120 "the end of boot" booted || true
    ok "booted ($(in_container systemctl is-system-running)) in $((SECONDS - boot_start)) s"
    in_container systemctl --failed --no-legend || true

    # Type=notify: "active" only once the agent sent READY=1 (after its first reconcile).
    if ! wait_for 90 "s3pull.service active" service_is active; then
        show_logs
        die "$label: s3pull.service is $(in_container systemctl is-active s3pull.service)"
    fi
    pid=$(main_pid)
    [ "$(in_container stat -c %U "/proc/$pid")" = s3pull ] || die "$label: the agent does not run as s3pull"
    ok "active (READY) at boot, main PID $pid runs as s3pull"

    [ "$(cat "$root/srv/pkgtest/before.txt")" = "uploaded before boot" ] || die "$label: before.txt not synced"
    [ "$(in_container stat -c %U /srv/pkgtest/before.txt)" = s3pull ] || die "$label: before.txt not owned by s3pull"
    moto put "$ENDPOINT" "$bucket" sub/after.txt "uploaded while running"
    wait_for 30 "sub/after.txt" test -s "$root/srv/pkgtest/sub/after.txt" || { show_logs; die "$label: no event applied"; }
    ok "synced before.txt at start and sub/after.txt from its S3 event"

    # Structured fields from the packaged agent (its own native-protocol sender: no
    # compiled binding in the package): the applied change's entry, as journald stored it.
    output=$(in_container journalctl -u s3pull.service --no-pager -o json S3PULL_KEY=sub/after.txt)
    python3 -c '
import json, sys
entries = [json.loads(line) for line in sys.stdin if line.strip()]
applied = [e for e in entries if e.get("S3PULL_OUTCOME") == "downloaded"]
assert applied, "no entry with S3PULL_OUTCOME=downloaded for sub/after.txt: %r" % entries
entry = applied[0]
want = {"S3PULL_MIRROR": "pkgtest", "S3PULL_KEY": "sub/after.txt", "SYSLOG_IDENTIFIER": "s3pull",
        "PRIORITY": "6", "LOGGER": "s3pull.mirror"}
wrong = {k: entry.get(k) for k, v in want.items() if entry.get(k) != v}
assert not wrong, "fields differ: %r in %r" % (wrong, entry)
assert "downloaded sub/after.txt" in entry["MESSAGE"], entry["MESSAGE"]
print("  " + " ".join("%s=%s" % (k, entry[k]) for k in sorted(entry) if k.startswith("S3PULL_")))
' <<<"$output" || { show_logs; die "$label: no structured journald fields for the applied change"; }
    ok "journalctl -o json: S3PULL_MIRROR, S3PULL_KEY, S3PULL_OUTCOME on the applied change"

    # Reload with a changed configuration (more concurrency): the agent takes it in
    # place, whether its file watcher or the SIGHUP gets there first, and the unit stays
    # active with the same main process throughout.
    sed -i 's/^concurrency = 4$/concurrency = 6/' "$root/etc/s3pull/s3pull.toml"
    if ! in_container systemctl reload s3pull.service; then
        show_logs
        die "$label: systemctl reload failed; s3pull.service is $(in_container systemctl is-active s3pull.service)"
    fi
    sleep 3
    if ! service_is active || [ "$(main_pid)" != "$pid" ]; then
        show_logs
        die "$label: after a reload s3pull.service is $(in_container systemctl is-active s3pull.service), main PID $(main_pid) (was $pid)"
    fi
    output=$(in_container journalctl -u s3pull.service --no-pager -o cat)
    grep -q SIGHUP <<<"$output" || { show_logs; die "$label: the agent did not see SIGHUP"; }
    ok "reload (SIGHUP) with a changed configuration: still active, same PID"

    output=$(in_container systemd-analyze verify --man=no s3pull.service 2>&1)
    [ -z "$output" ] || die "$label: systemd-analyze verify: $output"
    exposure=$(in_container systemd-analyze security s3pull.service | sed -n 's/.*exposure level for s3pull.service: \([0-9.]*\).*/\1/p')
    ok "systemd-analyze verify silent; exposure with the site drop-ins: $exposure"

    # The SSM Command document's shell step, as the SSM Agent would run it (as root, the
    # parameters in SSM_* variables): a new configuration adding a second directory.
    write_config "$WORK" "/$label-ssm.toml" "$queue" "$bucket" /srv/pkgtest /srv/pkgtest-second
    moto put-parameter "$ENDPOINT" "/s3pull/$label" "$WORK/$label-ssm.toml"
    cp "$WORK/ssm-scripts/s3pull-configure.applyConfig.sh" "$root/root/apply-config.sh"
    ssm_step() {
        in_container env SSM_ConfigParameter="/s3pull/$label" SSM_Action=reload \
            AWS_ENDPOINT_URL="$ENDPOINT" AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=testing \
            AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true sh /root/apply-config.sh
    }
    local restart_start=$SECONDS
    ssm_step || { show_logs; die "$label: the SSM document's step failed"; }
    # A restart of an idle agent takes a second or two; a stop that hangs until
    # TimeoutStopSec (and SIGKILL) is a bug, not a slow machine.
    [ $((SECONDS - restart_start)) -lt 30 ] ||
        { show_logs; die "$label: the SSM step took $((SECONDS - restart_start)) s: the stop hung"; }
    grep -q pkgtest-second "$root/etc/systemd/system/s3pull.service.d/50-site-paths.conf" ||
        die "$label: the site-paths drop-in misses the new directory"
    pid2=$(main_pid)
    if [ "$pid2" = "$pid" ] || ! service_is active; then
        die "$label: not restarted for the new directory"
    fi
    wait_for 30 "the second mirror" test -s "$root/srv/pkgtest-second/before.txt" || { show_logs; die "$label: second mirror not synced"; }
    ssm_step | grep -q "nothing to do" || die "$label: a second run of the SSM step was not a no-op"
    [ "$(main_pid)" = "$pid2" ] || die "$label: the no-op SSM run restarted the agent"
    ok "SSM document installed the configuration, opened the new directory, restarted; a rerun changed nothing"

    in_container systemctl stop s3pull.service
    output=$(in_container systemctl show -p Result -p ExecMainStatus s3pull.service | sort | tr '\n' ' ')
    [ "$output" = "ExecMainStatus=0 Result=success " ] || { show_logs; die "$label: unclean stop: $output"; }
    ok "stopped cleanly (exit 0)"

    # SIGRTMIN+4 asks systemd (the container's PID 1) to power off.
    kill -s RTMIN+4 "$LEADER"
    timeout 60 tail --pid="$NSPAWN_PID" -f /dev/null || die "$label: the container did not power off"
    NSPAWN_PID=""
    LEADER=""
}

boot_test "$DEB_ROOT" deb
boot_test "$RPM_ROOT" rpm
