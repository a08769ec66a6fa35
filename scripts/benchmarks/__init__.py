"""Speed and memory benchmarks; each compares side by side in one run, since the machines are noisy."""
