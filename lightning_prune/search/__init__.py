"""What to remove, as pure functions of scores: the agents, their rewards, the distribution search and the level
controller that spends `b`."""
