"""Centralized sampling served by the daemon itself in offline mode."""
