#!/usr/bin/env bash
# make packages: one staged tree -> dist/s3pull_<version>-<release>_all.deb,
# dist/s3pull-<version>-<release>.noarch.rpm and the SSM Distributor package in dist/ssm/.
#
# The agent and its dependencies are one multi-platform pex (CPython 3.11-3.13, x86_64
# and aarch64 wheels); the package's postinst turns it into a venv for the target's own
# Python, so the target needs neither a compiler nor the network. Hence one noarch
# package per format, and one zip per format for both architectures in SSM.
#
# Environment: PKG_RELEASE (default 1), DIST (default dist); for the upgrade test,
# PKG_CONFIG_NOTE (a line appended to the shipped s3pull.toml, so the conffile changes)
# and PKG_REUSE_PEX=1 (ship the pex of the previous build again).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=packaging/lib.sh
. packaging/lib.sh

RELEASE=${PKG_RELEASE:-1}
DIST=$(realpath -m "${DIST:-dist}")
BUILD=build/packaging
VERSION=$(project_version)
# Dates in the changelogs come from the last commit, so a rebuild of one commit matches.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH

ensure_debs rpm
ensure_tools

# -- the pex -----------------------------------------------------------------------------
# Rebuilt only when the agent, its pins or the pex recipe change (a resolve takes ~40 s).
PLATFORMS=()
for arch in x86_64 aarch64; do
    for py in 311 312 313; do
        PLATFORMS+=(--platform "manylinux2014_${arch}-cp-${py}-cp${py}")
    done
done
pex_key=$(
    {
        find agent pyproject.toml packaging/constraints.txt packaging/tools-requirements.txt \
            -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum
        echo "${PLATFORMS[*]}"
    } | sha256sum | cut -c1-16
)
PEX=$BUILD/pex/s3pull-$pex_key.pex
if [ "${PKG_REUSE_PEX:-}" = 1 ] && [ -e "$BUILD/pex/current" ]; then
    # The upgrade test's second build ships the very same agent as the first.
    PEX=$(realpath "$BUILD/pex/current")
elif [ ! -e "$PEX" ]; then
    say "pex: CPython 3.11-3.13 on x86_64 and aarch64"
    rm -rf "$BUILD/pex" "$BUILD/wheel"
    mkdir -p "$BUILD/pex"
    "$TOOLS/bin/pip" wheel -q --disable-pip-version-check --no-deps -w "$BUILD/wheel" .
    # The sandbox here trusts the system CA bundle only; pex runs pip isolated from
    # pip.conf, so pass it on. pip 26.2: pex's default ("latest") may not be on the index.
    "$TOOLS/bin/pex" "$BUILD"/wheel/s3pull-*.whl \
        --constraints packaging/constraints.txt "${PLATFORMS[@]}" \
        --entry-point s3pull.cli:main --include-tools \
        --python-shebang '/usr/bin/env python3' \
        --pip-version 26.2 --cert /etc/ssl/certs/ca-certificates.crt \
        --output-file "$PEX.tmp"
    mv "$PEX.tmp" "$PEX"
fi
ln -sfn "$(basename "$PEX")" "$BUILD/pex/current"

# Every library in the pex must be named in the copyright file, and nothing else.
bundled=$(python3 -c 'import sys, zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' "$PEX" |
    sed -n 's#^\.deps/\([^/-]*\)-[^/]*\.whl/.*#\1#p' | tr _ - | sort -u | grep -vx s3pull)
listed=$(sed -n '/^Comment: Bundled libraries/,/^$/p' packaging/files/copyright |
    sed '1d; s/([^)]*)//g; s/^ *[A-Za-z0-9.-]*: //' | tr ',' '\n' | tr -d ' ' | grep . | sort -u)
[ "$bundled" = "$listed" ] ||
    die "packaging/files/copyright does not list the pex's libraries: $(diff <(echo "$bundled") <(echo "$listed") | grep '^[<>]' | tr '\n' ' ')"

# -- the staged tree: everything both formats install ---------------------------------
STAGE=$BUILD/stage
say "staging $VERSION-$RELEASE in $STAGE"
rm -rf "$STAGE"
put() { install -D -m "$1" "$2" "$STAGE/$3"; }
put 0755 packaging/files/s3pull usr/bin/s3pull
put 0644 "$PEX" usr/lib/s3pull/s3pull.pex
put 0755 packaging/files/s3pull-setup usr/libexec/s3pull/s3pull-setup
put 0644 packaging/files/s3pull_setup.py usr/lib/s3pull/s3pull_setup.py
put 0644 packaging/systemd/s3pull.service usr/lib/systemd/system/s3pull.service
put 0644 packaging/systemd/s3pull.sysusers usr/lib/sysusers.d/s3pull.conf
put 0644 packaging/files/s3pull.toml etc/s3pull/s3pull.toml
put 0644 README.md usr/share/doc/s3pull/README.md
put 0644 packaging/files/copyright usr/share/doc/s3pull/copyright
put 0644 packaging/systemd/site-paths.conf usr/share/doc/s3pull/examples/site-paths.conf
if [ -n "${PKG_CONFIG_NOTE:-}" ]; then
    printf '# %s\n' "$PKG_CONFIG_NOTE" >>"$STAGE/etc/s3pull/s3pull.toml"
fi
mkdir -p "$STAGE/usr/share/man/man1"
gzip -9n <packaging/files/s3pull.1 >"$STAGE/usr/share/man/man1/s3pull.1.gz"
# Same times everywhere: lintian and rpm see no future dates, rebuilds compare equal.
find "$STAGE" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$DIST"
rm -f "$DIST"/s3pull_*.deb "$DIST"/s3pull-*.rpm

# -- deb ---------------------------------------------------------------------------------
say "deb"
DEBROOT=$BUILD/deb
rm -rf "$DEBROOT"
cp -a "$STAGE" "$DEBROOT"
changelog_date=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
{
    printf 's3pull (%s-%s) unstable; urgency=medium\n\n' "$VERSION" "$RELEASE"
    printf '  * Package of s3pull %s; the changes are in the project history.\n\n' "$VERSION"
    printf ' -- s3pull maintainers <s3pull@example.com>  %s\n' "$changelog_date"
} | gzip -9n >"$DEBROOT/usr/share/doc/s3pull/changelog.Debian.gz"
install -D -m 0644 packaging/deb/lintian-overrides "$DEBROOT/usr/share/lintian/overrides/s3pull"
install -d "$DEBROOT/DEBIAN"
install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$DEBROOT/DEBIAN/"
install -m 0644 packaging/deb/conffiles "$DEBROOT/DEBIAN/"
# md5sums covers every file but the conffiles (dpkg keeps theirs in its status file).
(cd "$DEBROOT" && find usr -type f -print0 | sort -z | xargs -0 md5sum) >"$DEBROOT/DEBIAN/md5sums"
installed_size=$(du -sk --apparent-size --exclude=DEBIAN "$DEBROOT" | cut -f1)
sed -e "s/@VERSION@/$VERSION-$RELEASE/" -e "s/@INSTALLED_SIZE@/$installed_size/" \
    packaging/deb/control.in >"$DEBROOT/DEBIAN/control"
find "$DEBROOT" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
DEB=$DIST/s3pull_${VERSION}-${RELEASE}_all.deb
dpkg-deb --root-owner-group -Zxz --build "$DEBROOT" "$DEB" >/dev/null

# -- rpm ---------------------------------------------------------------------------------
say "rpm"
rm -rf "$BUILD/rpmbuild"
rpmbuild -bb --quiet \
    --define "_topdir $PWD/$BUILD/rpmbuild" \
    --define "_rpmdir $DIST" \
    --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
    --define "stage $PWD/$STAGE" \
    --define "scripts $PWD/packaging/rpm" \
    --define "pkg_version $VERSION" \
    --define "pkg_release $RELEASE" \
    --define "changelog_date $(date -u -d "@$SOURCE_DATE_EPOCH" '+%a %b %d %Y')" \
    --define "use_source_date_epoch_as_buildtime 1" \
    --define "_binary_payload w3.zstdio" \
    packaging/rpm/s3pull.spec
RPM=$DIST/s3pull-${VERSION}-${RELEASE}.noarch.rpm

# -- SSM Distributor ---------------------------------------------------------------------
say "SSM Distributor package"
rm -rf "$DIST/ssm"
python3 packaging/ssm/build_distributor.py "$VERSION-$RELEASE" "$DEB" "$RPM" "$DIST/ssm"

for file in "$DEB" "$RPM" "$DIST"/ssm/*; do
    printf '%10s  %s\n' "$(du -h --apparent-size "$file" | cut -f1)" "$(realpath --relative-to=. "$file")"
done
