"""How a plan is walked: one module per decoding strategy, named in `STRATEGIES`."""
