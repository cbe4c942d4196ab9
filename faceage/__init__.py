"""faceage: a reproducible pipeline that estimates a person's age from a face photo."""

__version__ = "0.1.0"
