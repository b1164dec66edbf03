"""Helpers a user runs by hand (plots, benchmarks, latency tables), installed with the package so that
`python -m nas.tools.<name>` works from any directory, not only inside a checkout."""
