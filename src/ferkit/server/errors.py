"""The one error type of the web API: every refusal carries the HTTP status to answer and a short code."""
from __future__ import annotations


class ApiError(Exception):
    """An error answer: HTTP ``status``, short ``code``, and a ``message`` that says what to do.

    The app answers any ApiError (its kinds :class:`~ferkit.server.imaging.ImageError` and
    :class:`~ferkit.server.fetch.FetchError` included) as JSON with that status."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
