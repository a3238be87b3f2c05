"""The inference worker: the LitAPI, the batching loop, the session, worker-side file streaming."""
