"""The stage runtime: the Faust app, the batch loop, steering, metrics, state."""
