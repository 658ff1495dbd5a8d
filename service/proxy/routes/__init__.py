"""One router per resource of the proxy's HTTP API (docs/api.md)."""
