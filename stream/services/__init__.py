"""Long-running processes other than the worker, each a thin loop over pure steps."""
