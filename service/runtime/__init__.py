"""The launcher's side: building and running the LitServer, draining, replacing dead workers."""
