"""verl's experimental namespace: the agent loop lives here, as upstream."""
