#!/bin/sh
# SSM Distributor, Amazon Linux 2023 and RHEL-likes, in-place update: upgrade s3pull from the
# .rpm beside this script (Distributor runs it as root in the unpacked zip). dnf pulls
# python3.11 from the distribution's repository when no Python 3.11-3.13 is installed.
set -eu
# An edited /etc/s3pull/s3pull.toml is kept on upgrade (%config(noreplace)).
if command -v dnf >/dev/null 2>&1; then
    dnf install -y -q ./s3pull-*.noarch.rpm
else
    yum install -y -q ./s3pull-*.noarch.rpm
fi
