"""From raw event logs to model inputs, torch-free: the event-log contract, sources, windows and labels, the
fitted featurization and the ragged sequences that training and scoring both read."""
