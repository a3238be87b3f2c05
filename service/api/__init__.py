"""The HTTP API, served by the API-server processes (torch-free): one module per protocol."""
