# deb and rpm packages, the hardened systemd unit and the SSM documents (issue 5).
# Included by the Makefile. The scripts say what each step does and why.

.PHONY: packages packages-test packages-clean

# dist/s3pull_<v>-<r>_all.deb, dist/s3pull-<v>-<r>.noarch.rpm, dist/ssm/ (Distributor).
packages:
	packaging/build.sh

# What CI runs after `make packages`: lint, validate, then install, upgrade, remove and
# boot the packages in a debootstrapped Debian 12 under systemd-nspawn. Needs root. The
# Debian root is cached in $(S3PULL_BUILD_CACHE) between local runs; CI=true builds it
# fresh.
S3PULL_BUILD_CACHE ?= /var/cache/s3pull-build
packages-test: $(STAMP)
	S3PULL_BUILD_CACHE=$(S3PULL_BUILD_CACHE) packaging/test/packages-test.sh

packages-clean:
	rm -rf build/packaging dist/s3pull_*.deb dist/s3pull-*.rpm dist/ssm
