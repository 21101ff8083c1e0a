"""The `sluice` command line: parsing and wiring only; the work is done by the layers below."""

from stream.cli.main import main

__all__ = ["main"]
