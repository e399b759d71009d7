"""Signed completion webhooks (Standard Webhooks): events, endpoints, durable delivery.

``events.emit`` records an event once and creates one delivery per target;
``delivery.attempt`` makes one attempt of one delivery (one worker invocation each, so a
slow receiver holds only its own); the retry schedule and the records are in
``model``. The whole design is in docs/webhooks.md.
"""
