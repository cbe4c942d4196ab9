"""Evaluation: metrics, the splits' and test sources' figures, Grad-CAM, the leaderboard and the verdict."""
