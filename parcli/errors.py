"""The one base class of the failures a user can fix, which the command line shows as one line."""

from __future__ import annotations


class UserError(Exception):
    """A request or a file that cannot be used; the message says what was wrong and what to do.

    `setting` names the value at fault as the library calls it (`cfg_scale`), where one is; the
    command line shows it as the option that set it (`--cfg-scale`).
    """

    def __init__(self, message: str, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


class SettingError(UserError, ValueError):
    """A setting whose value is out of range or of the wrong form."""

    def __init__(self, setting: str, message: str):
        super().__init__(message, setting)


class Terminated(BaseException):
    """SIGTERM, raised where the program is so that cleanup code runs as for Ctrl-C."""
