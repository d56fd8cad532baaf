# shellcheck shell=bash
# Shared by packaging/build.sh and packaging/test/packages-test.sh (sourced, bash).

say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
die() { printf 's3pull packaging: %s\n' "$*" >&2; exit 1; }

# Install the Debian packages that are missing, so a fresh machine needs nothing but
# apt (CI runs as root). apt-get update only when something is missing.
ensure_debs() {
    local missing=() name
    for name in "$@"; do
        dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q 'ok installed' || missing+=("$name")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "apt-get install ${missing[*]}"
    [ "$(id -u)" -eq 0 ] || die "need root to install: ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# The packaging tools live in a venv of their own, rebuilt when their pins change.
TOOLS=${TOOLS:-build/packaging/tools}
ensure_tools() {
    local stamp
    stamp="$TOOLS/.stamp-$(cksum <packaging/tools-requirements.txt | cut -d' ' -f1)"
    [ -e "$stamp" ] && return 0
    say "packaging tools venv ($TOOLS)"
    rm -rf "$TOOLS"
    python3 -m venv "$TOOLS"
    # (This machine's pip.conf names local wheel directories that may be missing: quiet.)
    "$TOOLS/bin/pip" install -q --disable-pip-version-check -r packaging/tools-requirements.txt \
        2> >(grep -v '^WARNING: Location' >&2)
    touch "$stamp"
}

project_version() {
    python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])'
}
