"""Domain errors and the one place they become gRPC status codes."""

from __future__ import annotations

import grpc


class StatepipeError(Exception):
    """Base of the control plane's domain errors; `code` is the gRPC status."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(StatepipeError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(StatepipeError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(StatepipeError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExists(StatepipeError):
    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhausted(StatepipeError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(StatepipeError):
    code = grpc.StatusCode.UNAVAILABLE


def status_of(err: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client should see for `err`."""
    if isinstance(err, StatepipeError):
        return err.code, str(err)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}: {err}"
