"""Reliability and security harness: bad-input corpus, load generator, fault models, soak.

Imported by the integration tests next to it (tests/integration is on sys.path there) and run
as `python -m reliability.soak` from tests/integration by `make soak`.
"""
