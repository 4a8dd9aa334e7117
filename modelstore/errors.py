"""The one configuration error of the project."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting (command-line option or environment variable) is unusable; the message
    names the setting and what it accepts. Raised once, at the entry point that reads it."""
