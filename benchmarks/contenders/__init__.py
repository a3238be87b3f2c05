"""The servers the benchmark compares with the service, each a script run as its own process."""
