"""The one error type for what a user did wrong. The CLI prints its message without a traceback."""


class UserError(Exception):
    """Bad config, bad data, an unreachable service: the message is the whole story."""


class ConfigError(UserError):
    """A run config that cannot be used; the message names the file and the field."""


class DataError(UserError):
    """A data file that cannot be used; the message names the file (and line)."""


class StoreError(UserError):
    """A store that cannot be reached or holds something unusable; the message names the URI."""


class CorruptStageError(StoreError):
    """A committed stage whose stored object no longer matches its manifest (size or sha256)."""
