"""Helpers of verl's engine workers (``verl.workers.utils``)."""
