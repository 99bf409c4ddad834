"""mkv's benchmarks: run them all with `python -m bench` (see bench/README.md)."""
