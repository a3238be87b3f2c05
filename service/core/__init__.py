"""Torch-free pieces every process uses: the model repository, the messages, the spool folder."""
