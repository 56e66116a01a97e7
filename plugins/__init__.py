"""Built-in ftzoo method plugins, each registered through the ``ftzoo.methods`` entry points."""
