"""status-proxy: webhooks for an OpenAI-style video upstream that has none."""

from importlib import metadata

try:
    __version__ = metadata.version("status-proxy")
except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare source tree
    __version__ = "0.0.0+unknown"
