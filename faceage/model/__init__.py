"""The model: networks, the one model type that averages and blends them, its checkpoint, and prediction."""
