"""Tool registry and helpers."""
