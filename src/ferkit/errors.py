"""The one exception type for mistakes a user can cause (bad file, bad CSV row, unknown model...)."""


class FerkitError(Exception):
    """A user-facing error: the message says what was wrong and what to do.

    The CLI prints it on one line and exits non-zero; the server answers 4xx with it.
    """
