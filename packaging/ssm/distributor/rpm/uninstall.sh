#!/bin/sh
# SSM Distributor, Amazon Linux 2023 and RHEL-likes: remove s3pull. An edited
# configuration is kept as /etc/s3pull/s3pull.toml.rpmsave; /var/lib/s3pull stays.
set -eu
if command -v dnf >/dev/null 2>&1; then
    dnf remove -y -q s3pull
else
    yum remove -y -q s3pull
fi
