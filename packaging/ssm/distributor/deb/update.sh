#!/bin/sh
# SSM Distributor, Debian and Ubuntu, in-place update: upgrade s3pull from the .deb beside this
# script (Distributor runs it as root in the unpacked zip). apt resolves python3 and
# systemd from what is installed; the package itself needs no network.
set -eu
export DEBIAN_FRONTEND=noninteractive
# confold: an upgrade keeps /etc/s3pull/s3pull.toml as SSM or an administrator wrote it,
# without asking (a non-interactive dpkg would otherwise fail on the question).
apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    ./s3pull_*_all.deb
