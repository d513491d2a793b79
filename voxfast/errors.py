"""User-facing error types.

Every error a user can cause (a bad file, a malformed list line, a config typo, an unknown name)
derives from :class:`VoxfastError`. The CLI prints such errors as one line and exits non-zero
without a traceback; anything else is a bug and keeps its traceback.
"""


class VoxfastError(Exception):
    """A problem with the user's input; the message names the problem and the fix."""


class ConfigError(VoxfastError):
    """A config file or override is invalid; the message lists every problem found."""


class ListFormatError(VoxfastError):
    """A list, trial or score file is malformed; the message names the file and line."""


class AudioLoadError(VoxfastError):
    """An audio file could not be read or holds invalid samples."""
