"""Rollout correction: importance weights and rejection sampling between the rollout and training policies."""

from __future__ import annotations
