"""Speed, memory and accuracy benchmarks of v2drop: ``python -m benchmarks.bench``."""
