"""Built-in length_penalty plugins."""
