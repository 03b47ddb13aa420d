"""Built-in warmup plugins."""
