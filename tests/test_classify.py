"""Classification: default verdicts, rules (first match wins), retry-after hints."""

from __future__ import annotations

import errno
import math
import socket

import anyio
import pytest

from resilient import (
    BulkheadFullError,
    CircuitOpenError,
    Classification,
    Classifier,
    ConfigurationError,
    Outcome,
    RateLimitedError,
    TimeoutExceeded,
    Verdict,
    on_exception,
    on_result,
)

DEFAULT = Classifier()


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (ConnectionResetError(), Verdict.TRANSIENT),
        (ConnectionRefusedError(), Verdict.TRANSIENT),
        (BrokenPipeError(), Verdict.TRANSIENT),
        (TimeoutError(), Verdict.TRANSIENT),
        (TimeoutExceeded("t"), Verdict.TRANSIENT),
        (socket.gaierror(), Verdict.TRANSIENT),
        (OSError(errno.ENETUNREACH, "unreachable"), Verdict.TRANSIENT),
        (OSError(errno.EHOSTUNREACH, "no route"), Verdict.TRANSIENT),
        (anyio.BrokenResourceError(), Verdict.TRANSIENT),
        (OSError(errno.ENOENT, "no such file"), Verdict.FAILURE),
        (ValueError("bad"), Verdict.FAILURE),
        (RuntimeError("bug"), Verdict.FAILURE),
        (CircuitOpenError("open"), Verdict.REJECTED),
        (BulkheadFullError("full"), Verdict.REJECTED),
        (RateLimitedError("slow down"), Verdict.REJECTED),
    ],
)
def test_default_exception_verdicts(exc: BaseException, verdict: Verdict) -> None:
    assert DEFAULT.classify_exception(exc).verdict is verdict


def test_returned_values_are_success_by_default() -> None:
    assert DEFAULT.classify_result(None).verdict is Verdict.SUCCESS
    assert DEFAULT.classify_result({"status": 503}).verdict is Verdict.SUCCESS


def test_verdict_properties_follow_the_table() -> None:
    assert [v for v in Verdict if v.is_retryable] == [Verdict.TRANSIENT]
    assert {v for v in Verdict if v.is_failure} == {Verdict.TRANSIENT, Verdict.FAILURE}


def test_first_matching_rule_wins() -> None:
    classifier = Classifier(
        on_exception(KeyError, verdict=Verdict.CLIENT_ERROR),
        on_exception(LookupError, verdict=Verdict.TRANSIENT),
    )
    assert classifier.classify_exception(KeyError()).verdict is Verdict.CLIENT_ERROR
    assert classifier.classify_exception(IndexError()).verdict is Verdict.TRANSIENT
    assert classifier.classify_exception(ValueError()).verdict is Verdict.FAILURE


def test_when_predicate_narrows_an_exception_rule() -> None:
    classifier = Classifier(
        on_exception(ValueError, verdict=Verdict.CLIENT_ERROR, when=lambda e: "input" in str(e))
    )
    assert classifier.classify_exception(ValueError("bad input")).verdict is Verdict.CLIENT_ERROR
    assert classifier.classify_exception(ValueError("bug")).verdict is Verdict.FAILURE


def test_result_rule_with_retry_after_hint() -> None:
    classifier = Classifier(
        on_result(
            lambda r: r["status"] == 503,
            verdict=Verdict.TRANSIENT,
            retry_after=lambda r: r.get("retry_after"),
        )
    )
    assert classifier.classify_result({"status": 503, "retry_after": 2}) == Classification(
        Verdict.TRANSIENT, 2.0
    )
    assert classifier.classify_result({"status": 200}).verdict is Verdict.SUCCESS


@pytest.mark.parametrize("garbage", [-1, math.nan, math.inf, "soon", None, True])
def test_garbage_retry_after_hints_are_dropped(garbage: object) -> None:
    classifier = Classifier(
        on_result(lambda r: True, verdict=Verdict.TRANSIENT, retry_after=lambda r: garbage)
    )
    assert classifier.classify_result(1) == Classification(Verdict.TRANSIENT, None)


def test_raising_retry_after_function_is_ignored() -> None:
    classifier = Classifier(
        on_result(lambda r: True, verdict=Verdict.TRANSIENT, retry_after=lambda r: 1 / 0)
    )
    assert classifier.classify_result(1) == Classification(Verdict.TRANSIENT, None)


def test_broad_rule_never_swallows_the_librarys_rejections() -> None:
    classifier = Classifier(on_exception(Exception, verdict=Verdict.TRANSIENT))
    assert classifier.classify_exception(CircuitOpenError("open")).verdict is Verdict.REJECTED
    # a timeout is not a refusal: the broad rule applies
    assert classifier.classify_exception(TimeoutExceeded("t")).verdict is Verdict.TRANSIENT


def test_rule_naming_a_rejection_type_does_apply() -> None:
    classifier = Classifier(on_exception(RateLimitedError, verdict=Verdict.TRANSIENT))
    assert classifier.classify_exception(RateLimitedError("x")).verdict is Verdict.TRANSIENT


def test_plain_function_rules_see_an_outcome() -> None:
    seen: list[Outcome] = []

    def rule(outcome: Outcome) -> Verdict | None:
        seen.append(outcome)
        if outcome.exception is not None:
            return Verdict.CLIENT_ERROR
        return None

    classifier = Classifier(rule)
    assert classifier.classify_exception(KeyError()).verdict is Verdict.CLIENT_ERROR
    assert classifier.classify_result(5).verdict is Verdict.SUCCESS
    assert classifier(Outcome(result=5)).verdict is Verdict.SUCCESS
    assert seen[1] == Outcome(result=5)


def test_function_rule_returning_garbage_is_a_type_error() -> None:
    classifier = Classifier(lambda outcome: "transient")  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="expected a Verdict"):
        classifier.classify_result(1)


def test_extended_tries_new_rules_first() -> None:
    base = Classifier(on_exception(KeyError, verdict=Verdict.TRANSIENT))
    more = base.extended(on_exception(KeyError, verdict=Verdict.CLIENT_ERROR))
    assert more.classify_exception(KeyError()).verdict is Verdict.CLIENT_ERROR
    assert base.classify_exception(KeyError()).verdict is Verdict.TRANSIENT
    assert len(more.rules) == 2


def test_invalid_rules_name_the_parameter() -> None:
    with pytest.raises(ConfigurationError, match=r"on_exception\.types"):
        on_exception(verdict=Verdict.TRANSIENT)
    with pytest.raises(ConfigurationError, match=r"on_exception\.types"):
        on_exception(int, verdict=Verdict.TRANSIENT)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"on_exception\.verdict"):
        on_exception(KeyError, verdict="transient")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"on_result\.predicate"):
        on_result(5, verdict=Verdict.TRANSIENT)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"Classifier\.rules"):
        Classifier(5)  # type: ignore[arg-type]


async def test_pipeline_classify_option_reaches_the_context() -> None:
    from resilient import Pipeline
    from resilient.extend import Context

    seen: list[Classification] = []

    class Peek:
        name = "peek"

        async def execute(self, call: object, ctx: Context, /) -> object:
            seen.append(ctx.classifier.classify_exception(KeyError()))
            return None

    async def work() -> None:
        return None

    rules = [on_exception(KeyError, verdict=Verdict.CLIENT_ERROR)]
    await Pipeline(Peek(), classify=rules).call(work)  # type: ignore[arg-type]
    assert seen == [Classification(Verdict.CLIENT_ERROR)]
