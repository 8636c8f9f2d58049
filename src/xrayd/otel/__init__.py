"""Conversions between OpenTelemetry spans and X-Ray segment documents: pure functions, no I/O."""
