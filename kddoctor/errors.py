"""The one exception type that means "the user's input is wrong" (exit status 2)."""


class UserError(Exception):
    """Bad input: the message says what is wrong and how to fix it, in one line."""
