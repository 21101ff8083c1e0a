"""The streaming engine around features/: pipeline (one micro-batch), serving, kafka and feast adapters, lifecycle, the Faust worker, tools, CLI."""
