"""The offline operations (rebuild, rebalance, verify, repair), the walk over the volumes they
share, and how one is run: bounded concurrency, progress, summary, exit status."""
