"""The HTTP API: routes only; behaviour lives in the modules they call."""
