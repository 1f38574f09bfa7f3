"""optlab's built-in plugins, registered through optlab's own entry points."""
