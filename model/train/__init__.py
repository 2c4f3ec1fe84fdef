"""Training Flamingo on the shards: data loading and mixing, the loop, its state and metrics, backbone pretraining and the demo."""
