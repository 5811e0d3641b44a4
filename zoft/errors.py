"""The error a user can cause and fix: the CLI turns it into one line and exit code 2."""


class ConfigError(ValueError):
    """A user-fixable problem with flags, a recipe, an algorithm option or an input path (the CLI exits with 2)."""
