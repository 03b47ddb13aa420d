"""Built-in logger plugins."""
