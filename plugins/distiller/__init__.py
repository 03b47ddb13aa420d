"""Built-in distiller plugins."""
