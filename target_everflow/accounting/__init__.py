"""What a run counts and writes: dead letters, the run summary, metrics, thresholds, run history."""
