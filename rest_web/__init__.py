"""rest_web package."""
