"""The streaming side of Sluice: broker, worker, model, CLI."""
