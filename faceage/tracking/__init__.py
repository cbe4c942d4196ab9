"""MLflow: where runs are kept, one run, the runs of a training, and the model registry."""
