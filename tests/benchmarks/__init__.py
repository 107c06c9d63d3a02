"""Benchmarks of the serving path (`make bench`): a program, not a test suite.

`python -m tests.benchmarks.run [--quick] [--output bench-results/bench.json]` trains a model
into a throw-away store, starts the real model server and gateway on free loopback ports,
measures in-process `predict` against both HTTP paths in the same run, prints a table with
ratios and the targets, saves JSON, reports the RSS of every process it started and stops them.
File names avoid pytest's `test_` prefix so that the test suite never collects them.
"""
