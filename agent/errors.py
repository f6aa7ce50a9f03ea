"""One exception tree for the whole agent.

AIFinOpsError                      every error we raise on purpose
├── ConfigError                    bad settings file, environment or command line
│   └── PolicyError                a policy that is invalid, unsigned or wrongly signed
├── ModelError                     a model asset is missing, corrupt or unusable
│   └── ModelNotFound              a request named a model nobody configured
├── LedgerError                    the SQLite ledger cannot be opened or written
├── AuthError                      no token, an unknown or a revoked token
├── PermissionDenied               the caller may not do this (e.g. read others' spend)
├── InvalidRequest                 a malformed request body or parameter
│   └── RequestTooLarge            the body is over the configured limit
├── RateLimited                    too many requests (carries retry_after_s)
├── BudgetExceeded                 a hard budget blocks the request
└── ProviderError                  the model provider failed
    ├── ProviderUnavailable        unreachable, or it kept failing with 5xx / 429
    ├── ProviderTimeout            no answer within the timeout
    └── ProviderBadResponse        it answered with something that is not a valid reply
AgentUnreachable, AgentApiError    CLI side: no agent answered, or it answered with an error

Each class carries the HTTP status and the stable, machine-readable ``type`` that the API
puts into an OpenAI-style error body. Adapters wrap third-party errors with ``raise ... from e``.
"""

from __future__ import annotations


class AIFinOpsError(Exception):
    status_code = 500
    error_type = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ConfigError(AIFinOpsError):
    error_type = "config_error"


class PolicyError(ConfigError):
    """A policy file that does not parse, validate or verify; the last good policy stays."""

    error_type = "invalid_policy"


class ModelError(AIFinOpsError):
    status_code = 503
    error_type = "model_unavailable"


class ModelNotFound(ModelError):
    status_code = 404
    error_type = "model_not_found"


class LedgerError(AIFinOpsError):
    status_code = 503
    error_type = "ledger_unavailable"


class AuthError(AIFinOpsError):
    status_code = 401
    error_type = "authentication_error"


class PermissionDenied(AIFinOpsError):
    status_code = 403
    error_type = "permission_error"


class InvalidRequest(AIFinOpsError):
    status_code = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message, code=code)
        self.param = param  # the request field at fault, when one is (the error body's "param")


class RequestTooLarge(InvalidRequest):
    status_code = 413
    error_type = "request_too_large"


class RateLimited(AIFinOpsError):
    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: float, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class BudgetExceeded(AIFinOpsError):
    status_code = 402
    error_type = "budget_exceeded"

    def __init__(self, message: str, *, code: str | None = None, budget: dict[str, str | int] | None = None) -> None:
        super().__init__(message, code=code)
        self.budget = budget or {}  # which budget, spent, amount, reset time: in the error body


class ProviderError(AIFinOpsError):
    status_code = 502
    error_type = "provider_error"


class ProviderUnavailable(ProviderError):
    status_code = 503
    error_type = "provider_unavailable"


class ProviderTimeout(ProviderError):
    status_code = 504
    error_type = "provider_timeout"


class ProviderBadResponse(ProviderError):
    status_code = 502
    error_type = "provider_bad_response"


class AgentUnreachable(AIFinOpsError):
    """The CLI could not reach a running agent."""

    error_type = "agent_unreachable"


class AgentApiError(AIFinOpsError):
    """The agent answered a CLI call with an error body."""

    def __init__(self, status_code: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type
