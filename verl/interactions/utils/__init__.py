"""Helpers of the interactions: the YAML registry (``interaction_registry``)."""
