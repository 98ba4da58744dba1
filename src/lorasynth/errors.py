"""The one exception type users see: its message is the whole story, printed as `error: ...`."""


class LorasynthError(ValueError):
    """Bad input or state that the user can fix; the message names the file, key and remedy."""
