"""chatstate benchmarks: `python -m benchmarks.bench_sessions --help`."""
