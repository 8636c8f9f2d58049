"""xrayd: a drop-in replacement for the AWS X-Ray daemon."""

__version__ = "0.1.0"
