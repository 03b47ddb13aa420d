"""An example third-party reasonzoo plugin package."""
