"""Many runs: sweeps and seed searches, shards of them on many machines, presets side by side,
the init-seed x data-seed grid, and the tables and figures made from their results."""
