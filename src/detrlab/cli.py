"""Glue between the Hydra entry points (train.py, eval.py) and the run functions."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from detrlab.errors import DetrlabError

log = logging.getLogger("detrlab")

T = TypeVar("T")


def report_user_errors(run: Callable[..., T]) -> Callable[..., T]:
    """Turn a :class:`DetrlabError` into its message and exit status 1, without a stack trace.

    Those errors come from the user's config or data and their message says how to fix it; a
    traceback through our code would only hide that. Any other exception keeps its traceback.
    """

    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        try:
            return run(*args, **kwargs)
        except DetrlabError as error:
            log.error("%s: %s", type(error).__name__, error)
            print(f"Error: {error}", file=sys.stderr)
            sys.exit(1)

    return wrapper
