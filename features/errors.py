"""The one root error of Sluice and the errors raised while compiling features."""


class SluiceError(Exception):
    """Root of every error Sluice raises on purpose.

    Messages say what happened and what the operator should do about it.
    """


class UnsupportedFeatureError(SluiceError):
    """A feature declaration that Sluice cannot compute exactly online and offline."""
