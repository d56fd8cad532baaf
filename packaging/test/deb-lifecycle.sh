#!/bin/sh
# Runs inside the Debian 12 container (systemd-nspawn, no network): the .deb's install,
# upgrade with an edited conffile, remove and purge, each checked; then installs the
# upgrade again for the boot test.   deb-lifecycle.sh FIRST.deb SECOND.deb
set -eu
first=$1
second=$2
export DEBIAN_FRONTEND=noninteractive
conf=/etc/s3pull/s3pull.toml

fail() { echo "deb-lifecycle: FAILED: $*" >&2; exit 1; }
check() { echo "deb-lifecycle: ok: $*"; }
status() { dpkg-query -W -f='${db:Status-Abbrev}${Version}' s3pull 2>/dev/null || true; }

# Offline: every dependency (python3, systemd) is already in the root.
apt-get install -y -q "$first" >/dev/null
[ "$(status | cut -c1-3)" = "ii " ] || fail "not installed: $(status)"
getent passwd s3pull >/dev/null || fail "no user s3pull"
/usr/bin/s3pull --version || fail "s3pull --version"
[ -L /etc/systemd/system/multi-user.target.wants/s3pull.service ] || fail "not enabled"
check "install $(status)"

echo "# edited by packages-test" >>"$conf"
mkdir -p /var/lib/s3pull && touch /var/lib/s3pull/state-marker
# --force-confold as the Distributor scripts do: the new package's s3pull.toml differs.
apt-get install -y -q -o Dpkg::Options::=--force-confold "$second" >/dev/null
grep -q '^# edited by packages-test' "$conf" || fail "the edited conffile was replaced"
[ -e "$conf.dpkg-dist" ] || fail "the new conffile was not set aside as .dpkg-dist"
/usr/bin/s3pull --version >/dev/null || fail "s3pull after upgrade"
[ -L /etc/systemd/system/multi-user.target.wants/s3pull.service ] || fail "not enabled after upgrade"
check "upgrade to $(status), edited conffile kept"

apt-get remove -y -q s3pull >/dev/null
[ "$(status | cut -c1-2)" = "rc" ] || fail "after remove: $(status)"
[ ! -e /usr/lib/s3pull/venv ] || fail "venv left after remove"
[ ! -e /usr/bin/s3pull ] || fail "/usr/bin/s3pull left after remove"
[ -e "$conf" ] || fail "remove lost $conf"
[ -e /var/lib/s3pull/state-marker ] || fail "remove lost /var/lib/s3pull"
check "remove keeps $conf and /var/lib/s3pull"

apt-get purge -y -q s3pull >/dev/null
[ -z "$(status)" ] || [ "$(status | cut -c1-2)" = "un" ] || fail "after purge: $(status)"
for gone in /etc/s3pull /var/lib/s3pull /usr/lib/s3pull /usr/libexec/s3pull \
    /etc/systemd/system/multi-user.target.wants/s3pull.service; do
    [ ! -e "$gone" ] || fail "$gone left after purge"
done
check "purge leaves nothing behind (but the user s3pull, on purpose)"

apt-get install -y -q "$second" >/dev/null
check "installed $(status) again for the boot test"
