"""What every benchmark and experiment shares: logs, models, measurement and the result record."""
