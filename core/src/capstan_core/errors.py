"""Domain errors: one type per kind of refusal, mapped to gRPC/HTTP status once, at the edge."""

from __future__ import annotations


class DomainError(Exception):
    """A command was refused. ``message`` is shown to the user: make it actionable."""

    code = "failed_precondition"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidArgument(DomainError):
    code = "invalid_argument"


class NotFound(DomainError):
    code = "not_found"


class AlreadyExists(DomainError):
    code = "already_exists"


class FailedPrecondition(DomainError):
    code = "failed_precondition"


class Conflict(DomainError):
    """Optimistic concurrency: the aggregate changed since it was read. Retry the command."""

    code = "conflict"


class Unavailable(DomainError):
    """A dependency (NATS, another service) cannot be reached now; retrying later may work."""

    code = "unavailable"


class Unauthenticated(DomainError):
    code = "unauthenticated"


class PermissionDenied(DomainError):
    code = "permission_denied"


ERRORS_BY_CODE: dict[str, type[DomainError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Conflict,
        Unavailable,
        Unauthenticated,
        PermissionDenied,
    )
}
