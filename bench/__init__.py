"""Benchmarks for s3pull against aws s3 sync, s5cmd and rclone (issue 7).

Run with ``make bench`` (full) or ``make bench-quick`` (CI-sized); see bench/README.md.
"""
