"""runtime layer (see docs/architecture.md for what it may import)."""
