"""status-proxy: webhooks for an OpenAI-style video upstream that has none."""
