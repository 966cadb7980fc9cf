"""What a Redis error means for the entries in hand: "not now" (wait and retry, they stay pending), "the consumer
group is gone" (recreate it), or neither (the entry's own fault, or a bug).

redis-py maps some error codes to classes (LOADING, READONLY, OOM) and leaves others as a plain ResponseError whose
message starts with the code (BUSY, NOGROUP); an error raised from a pipeline is prefixed with the command it answers.
"""

from __future__ import annotations

from redis import exceptions as rx

LOADING = "loading"  # the server is loading its dataset after a restart
READONLY = "readonly"  # a replica (failover in progress, or demoted): writes refused
BUSY = "busy"  # a script or module command runs past its time limit
OOM = "oom"  # maxmemory reached: writes refused until memory is freed
UNAVAILABLE = "unavailable"  # no connection, or it timed out
NOGROUP = "nogroup"  # the stream or its consumer group does not exist (a restart without persistence, XGROUP DESTROY)

# Server codes that mean "not now", as ResponseError message prefixes redis-py does not map to a class.
_WAIT_CODES = {"BUSY": BUSY, "LOADING": LOADING, "READONLY": READONLY, "OOM": OOM, "MASTERDOWN": UNAVAILABLE,
               "TRYAGAIN": UNAVAILABLE, "UNBLOCKED": UNAVAILABLE, "CLUSTERDOWN": UNAVAILABLE}


def server_code(exc: BaseException) -> str:
    """The error code the server sent ('WRONGTYPE', 'NOGROUP', ...), '' if none is visible."""
    msg = str(exc.args[0]) if exc.args else ""
    if "of pipeline caused error: " in msg:  # redis-py: "Command # 2 (...) of pipeline caused error: ('msg',)"
        msg = msg.split("of pipeline caused error: ", 1)[1].lstrip("(\"'")
    word = msg.split(" ", 1)[0]
    return word if word.isupper() else ""


def trouble(exc: BaseException) -> str | None:
    """The kind of "not now" (or NOGROUP) this error is, None when it is neither."""
    if isinstance(exc, rx.BusyLoadingError):
        return LOADING
    # not OSError or the builtin TimeoutError: a stage's own file or HTTP trouble is not Redis being away
    if isinstance(exc, (rx.ConnectionError, rx.TimeoutError, ConnectionError)):
        return UNAVAILABLE
    if isinstance(exc, rx.OutOfMemoryError):
        return OOM
    if isinstance(exc, rx.ReadOnlyError):
        return READONLY
    if isinstance(exc, rx.ResponseError):
        code = server_code(exc)
        if code == "NOGROUP":
            return NOGROUP
        return _WAIT_CODES.get(code)
    return None


def waits(exc: BaseException) -> bool:
    """True for the errors that wait out: the server or the connection, not the entry."""
    return trouble(exc) not in (None, NOGROUP)
