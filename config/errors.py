"""The one base of the errors a user can fix: commands print the message, never a traceback."""


class UserError(Exception):
    """Bad input, settings or registry state; the message says what is wrong and what to do."""
