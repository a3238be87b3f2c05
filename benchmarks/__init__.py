"""Side-by-side performance runs of the service against its alternatives: ``python -m benchmarks.run``."""
