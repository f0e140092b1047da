"""Stable error codes and the exception that carries them.

Owns: the names a client, a daemon and a test use for every failure that reaches a user.
Must not: import anything from mgpu or do I/O.
"""

BAD_REQUEST = "bad_request"            # malformed frame, missing or ill-typed field
UNKNOWN_TYPE = "unknown_type"          # a message type this daemon does not know
VERSION_MISMATCH = "version_mismatch"  # protocol versions differ
TOO_LARGE = "too_large"                # a frame over the size limit
UNSATISFIABLE = "unsatisfiable"        # a request no node of this cluster can ever satisfy
PERMISSION_DENIED = "permission_denied"
NOT_FOUND = "not_found"                # no such job
INVALID_ARGUMENT = "invalid_argument"  # a value out of range (priority, time, ...)
UNAVAILABLE = "unavailable"            # no daemon to talk to
TIMEOUT = "timeout"                    # the peer did not answer in time
INTERNAL = "internal"

# Exit codes of the command-line client.
EXIT_ERROR = 1
EXIT_USAGE = 2


class MgpuError(Exception):
    """A failure with a stable code and one human line (what failed, why, what to do)."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self):
        return self.message
