"""Helpers of ``python -m verl.trainer.main_generation_server``: prompt loading, the resumable progress log and
the request loop that spreads chat-completion requests over the replicas."""
