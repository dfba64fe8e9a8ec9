"""Errors the job raises on purpose; each maps to a clear message and a non-zero exit code."""


class ReclusterError(Exception):
    """Base class: a failure we can explain to the user in one message."""

    exit_code = 1


class ConfigError(ReclusterError):
    """The configuration file or an override is invalid."""

    exit_code = 2


class InputDataError(ReclusterError):
    """The input table cannot be segmented as given (names the column or file)."""

    exit_code = 3


class OutputConflictError(ReclusterError):
    """The output location already holds a different published run."""

    exit_code = 4


class StageError(ReclusterError):
    """A stage of the run failed; the message names the stage."""

    exit_code = 5


class StorageError(ReclusterError):
    """The object store kept failing after the configured retries (names the URL and stage)."""

    exit_code = 6


class IntegrityError(ReclusterError):
    """A published file is not the one its run recorded (SHA-256 mismatch, unlisted, missing),
    or a model file is not in a portable format (e.g. a pickle). Names the file."""

    exit_code = 7


class DriftError(ReclusterError):
    """``score --fail-on-drift``: the scored rows passed a drift threshold (the labels were
    published; the message names the nodes and why)."""

    exit_code = 8
