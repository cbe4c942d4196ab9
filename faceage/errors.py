"""Errors that the pipeline reports to the user as one line, without a stack trace."""


class FaceageError(Exception):
    """A problem with the user's input or setup, with a message that says how to fix it."""
