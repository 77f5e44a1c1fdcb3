"""The retry policy of downloads: which failures trying again may cure (a 5xx or 429 answer, a dropped
connection, a timeout), how often, and how long to wait (what the server asked for, else exponential
backoff). It knows nothing of what is retried: :func:`with_retries` runs any attempt."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import requests

T = TypeVar("T")


class _Retryable(Exception):
    """A failure that trying again may cure (an overloaded server, a cut connection); ``wait`` is
    what the server asked for (Retry-After), None for the policy's backoff."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


RETRYABLE: tuple[type[BaseException], ...] = (
    _Retryable, requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


@dataclass(frozen=True)
class RetryPolicy:
    """How often to try again, and how long to wait: what the server asked for, else exponential backoff."""

    retries: int = 6
    backoff: float = 1.0

    def wait(self, retry: int, failure: BaseException) -> float:
        asked = failure.wait if isinstance(failure, _Retryable) else None
        return asked if asked is not None else self.backoff * 2 ** (retry - 1)


class _RetriesExhausted(Exception):
    """Every retry failed; ``failure`` is the last failure."""

    def __init__(self, failure: BaseException) -> None:
        super().__init__(reason(failure))
        self.failure = failure


def with_retries(policy: RetryPolicy, attempt: Callable[[], T],
                 on_retry: Callable[[int, float, BaseException], None] = lambda *_: None) -> T:
    """Run ``attempt`` until it returns, and return what it returns; a :data:`RETRYABLE` failure is
    followed by ``on_retry``, a wait and another try, ``policy.retries`` times at most, then
    :class:`_RetriesExhausted`. Other errors pass through: they are not cured by asking again."""
    retry = 0
    while True:
        try:
            return attempt()
        except RETRYABLE as failure:
            retry += 1
            if retry > policy.retries:
                raise _RetriesExhausted(failure) from None
            wait = policy.wait(retry, failure)
            on_retry(retry, wait, failure)
            time.sleep(wait)



def reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:160]
