"""seal-tt pipeline: configuration, tasks, rewards, run directories and the `seal-tt` CLI."""
