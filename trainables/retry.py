"""Retrying MLflow calls through a tracking-server outage: exponential backoff, on transient failures only.

A refused connection, a timeout or a 5xx answer is worth waiting out; a 4xx answer (a bad parameter, a
deleted run) is not, so it is raised at once.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, TypeVar

from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)
T = TypeVar("T")

# What an unreachable or overloaded server answers (MLflow names a refused connection INTERNAL_ERROR).
TRANSIENT_CODES = frozenset(
    {
        "INTERNAL_ERROR",
        "TEMPORARILY_UNAVAILABLE",
        "SERVICE_UNDER_MAINTENANCE",
        "DEADLINE_EXCEEDED",
        "ABORTED",
        "REQUEST_LIMIT_EXCEEDED",
        "IO_ERROR",
        "RESOURCE_EXHAUSTED",
    }
)

# MLflow's own HTTP retries (7, doubling from 2 s: about 4 minutes per call) would stall training during an
# outage; inside a trial our backoff and queue do the waiting instead. setdefault: a user's settings win.
TRIAL_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def fail_fast_http() -> None:
    for key, value in TRIAL_HTTP_ENV.items():
        os.environ.setdefault(key, value)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, MlflowException):
        return exc.error_code in TRANSIENT_CODES
    return isinstance(exc, (OSError, TimeoutError))  # requests' errors are OSErrors


def retry(
    call: Callable[[], T], *, budget_s: float, what: str, first_delay_s: float = 0.5, max_delay_s: float = 15.0
) -> T:
    """``call()``, retried with doubling delays while it fails transiently and ``budget_s`` lasts; then its error."""
    deadline = time.monotonic() + budget_s
    delay = first_delay_s
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            # short waits are routine (the caller reports what it gives up on); a long one is worth a line
            log.log(
                logging.WARNING if delay >= max_delay_s else logging.DEBUG,
                "%s failed (%s); retrying in %.1f s",
                what,
                _short(exc),
                delay,
            )
            time.sleep(delay)
            delay = min(2 * delay, max_delay_s)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
