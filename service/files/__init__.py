"""Input files: the readers and the predict-file job the CLI runs in-process."""
