"""Model definitions and weight conversions used by the training back-ends (``mcore``: megatron-core)."""
