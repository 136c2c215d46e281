"""SGLang rollout engines. ``utils`` and ``adapter`` import without SGLang (the translation is tested on CPU);
``sglang_rollout`` and ``sglang_rollout_with_logit`` (what the registry points at) need it installed."""
