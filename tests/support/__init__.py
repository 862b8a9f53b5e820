"""Helpers the tests share: small campaigns, a PostgreSQL server, a fork runner, the per-call reference model."""
