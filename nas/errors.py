"""Errors a user can cause: the entry points print their message once and exit with status 2."""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a path, a config value); the message says what to do."""
