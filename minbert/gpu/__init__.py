"""A GPU day: one command that runs the benchmarks and training rows on a rented or cluster GPU
within a time budget (day.py, its steps in steps.py), and merges its archive into results/ (merge.py)."""
