"""What happens after an attempt: complete, retry later, or give up (dead-letter).

Retriable: no answer (connection error, timeout), 408, 429 and 5xx.  Any other
4xx (and 3xx) can never succeed by repeating it: it fails permanently at once.
"""

from __future__ import annotations

import enum
import random
import re
from dataclasses import dataclass

from asyncgate.jsonutil import loads
from asyncgate.settings import RetrySettings, RouteSettings
from consumer.replay import Attempt


class Verdict(enum.Enum):
    SUCCESS = "success"
    RETRY = "retry_scheduled"
    EXHAUSTED = "dead_lettered"
    PERMANENT = "permanent_failure"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    delay: float = 0.0  # seconds before the next attempt, for RETRY
    message: str = ""  # result_message for the store and the dead letter


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base_delay: float
    max_delay: float

    @classmethod
    def for_route(cls, defaults: RetrySettings, route: RouteSettings | None) -> RetryPolicy:
        return cls(
            max_attempts=(
                route.max_attempts if route and route.max_attempts else defaults.max_attempts
            ),
            base_delay=defaults.base_delay,
            max_delay=(route.max_delay if route and route.max_delay else defaults.max_delay),
        )

    def backoff(self, attempts_in_budget: int) -> float:
        """Exponential with "equal jitter": half fixed, half random, capped."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempts_in_budget - 1))
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))


def is_retriable(status: int | None) -> bool:
    return status is None or status in (408, 429) or status >= 500


def judge(attempt: Attempt, attempts_in_budget: int, policy: RetryPolicy) -> Decision:
    if attempt.status is not None and 200 <= attempt.status < 300:
        return Decision(Verdict.SUCCESS, message=f"{attempt.status} {attempt.reason}".strip())
    message = summary(attempt)
    if not is_retriable(attempt.status):
        return Decision(Verdict.PERMANENT, message=message)
    if attempts_in_budget >= policy.max_attempts:
        return Decision(
            Verdict.EXHAUSTED, message=f"{message} (after {attempts_in_budget} attempts)"
        )
    delay = policy.backoff(attempts_in_budget)
    if attempt.retry_after is not None:
        delay = min(max(delay, attempt.retry_after), policy.max_delay)
    return Decision(Verdict.RETRY, delay=delay, message=message)


def summary(attempt: Attempt) -> str:
    """The backend's own ``message`` (placeholders filled) or the status line."""
    if attempt.status is None:
        return f"Upstream unreachable: {attempt.error}"
    try:
        data = loads(attempt.body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return _fill(data["message"], data.get("parameters"))
    return f"{attempt.status} {attempt.reason}".strip()


def _fill(message: str, parameters: object) -> str:
    """Magento's %1 / %name placeholders, filled for a human reader."""
    if isinstance(parameters, list):
        values = {str(i + 1): str(v) for i, v in enumerate(parameters)}
    elif isinstance(parameters, dict):
        values = {str(k): str(v) for k, v in parameters.items()}
    else:
        return message
    return re.sub(r"%(\w+)", lambda m: values.get(m.group(1), m.group(0)), message)
