"""Gemini API error answers as the real service sends them, for the provider stand-in.

The shapes follow real answers quoted in public issues: a 429 ``RESOURCE_EXHAUSTED``
carries a ``google.rpc.Help`` link, a ``google.rpc.QuotaFailure`` naming each quota hit
(``quotaId`` says per minute or per day) and a ``google.rpc.RetryInfo`` — also when the
quota is used up for the day or is 0 (google-gemini/gemini-cli#6962 and #8437,
continuedev/continue#10280). A retired or unknown model is a 404 ``NOT_FOUND``.

``[fail:…]`` values (the prompt token) this module answers:

- ``429`` — a per-minute limit: ``GenerateRequestsPerMinutePerProjectPerModel``,
  ``RetryInfo`` 7 s and ``Retry-After: 7``;
- ``quota-day`` — the daily quota is used up: ``GenerateRequestsPerDayPerProjectPerModel-
  FreeTier`` (``quotaValue`` 100), ``RetryInfo`` 41 s — only the quota id tells it from a
  per-minute limit;
- ``quota-zero`` — the project has no quota for the model (a free tier's image model):
  per-minute and per-day violations without ``quotaValue``, "limit: 0" in the message,
  ``RetryInfo`` 11 s.
- ``404`` — the model is not found ("models/X is not found for API version v1beta, …").
"""

from __future__ import annotations

from typing import Any

_TYPES = "type.googleapis.com/google.rpc."
_METRIC = "generativelanguage.googleapis.com/"
_HELP = {"@type": _TYPES + "Help", "links": [{
    "description": "Learn more about Gemini API quotas",
    "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]}
_EXCEEDED = ("You exceeded your current quota, please check your plan and billing details. "
             "For more information on this error, head to: "
             "https://ai.google.dev/gemini-api/docs/rate-limits. To monitor your current usage, "
             "head to: https://ai.dev/rate-limit. ")


def gemini_error(fail: str, model: str) -> tuple[int, dict[str, Any], dict[str, str]] | None:
    """(status, body, headers) for a ``[fail:…]`` value; None when it is not one of these."""
    if fail == "404":
        return 404, {"error": {
            "code": 404, "status": "NOT_FOUND",
            "message": f"models/{model} is not found for API version v1beta, or is not supported "
                       "for generateContent. Call ListModels to see the list of available models "
                       "and their supported methods."}}, {}
    if fail == "429":
        per_minute = [("generate_requests_per_model",
                       "GenerateRequestsPerMinutePerProjectPerModel", "10")]
        return 429, _exhausted(model, per_minute, delay=7), {"Retry-After": "7"}
    if fail == "quota-day":
        per_day = [("generate_content_free_tier_requests",
                    "GenerateRequestsPerDayPerProjectPerModel-FreeTier", "100")]
        return 429, _exhausted(model, per_day, delay=41.207), {}
    if fail == "quota-zero":
        none = [("generate_content_free_tier_input_token_count",
                 "GenerateContentInputTokensPerModelPerMinute-FreeTier", "0"),
                ("generate_content_free_tier_requests",
                 "GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "0"),
                ("generate_content_free_tier_requests",
                 "GenerateRequestsPerDayPerProjectPerModel-FreeTier", "0")]
        return 429, _exhausted(model, none, delay=11.161852119, with_value=False), {}
    return None


def _exhausted(model: str, quotas: list[tuple[str, str, str]], *, delay: float,
               with_value: bool = True) -> dict[str, Any]:
    """A 429 body for ``quotas`` ((metric, quotaId, limit) each) and a retry delay."""
    lines = "".join(f"\n* Quota exceeded for metric: {_METRIC}{metric}, limit: {limit}, "
                    f"model: {model}" for metric, _id, limit in quotas)
    violations = []
    for metric, quota_id, limit in quotas:
        violation: dict[str, Any] = {"quotaMetric": _METRIC + metric, "quotaId": quota_id,
                                     "quotaDimensions": {"location": "global", "model": model}}
        if with_value:
            violation["quotaValue"] = limit
        violations.append(violation)
    return {"error": {
        "code": 429, "status": "RESOURCE_EXHAUSTED",
        "message": f"{_EXCEEDED}{lines}\nPlease retry in {delay}s.",
        "details": [_HELP, {"@type": _TYPES + "QuotaFailure", "violations": violations},
                    {"@type": _TYPES + "RetryInfo", "retryDelay": f"{int(delay)}s"}]}}
