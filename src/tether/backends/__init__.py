"""Built-in backends, one module each (config, backend and handle together)."""
