"""Training: state and steps, checkpoints, the train/eval loop."""
