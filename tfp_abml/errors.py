"""Errors a user can fix. Command-line tools print these as one line, without a traceback."""


class UserInputError(ValueError):
    """Raised for bad data, flags or requests; the message says what to change."""
