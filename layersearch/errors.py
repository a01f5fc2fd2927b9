"""Errors that mean "the user must fix something": the CLI prints them as one
line and exits non-zero, without a traceback."""


class UserError(Exception):
    exit_code = 1
