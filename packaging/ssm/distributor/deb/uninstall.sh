#!/bin/sh
# SSM Distributor, Debian and Ubuntu: remove s3pull. remove, not purge: the configuration
# and the state in /var/lib/s3pull stay for a later install.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get remove -y -q s3pull
