"""Training: one network's training, the networks of a model and its blend, losses, optimisers, augmentation."""
