"""One run's plumbing: its folder and files (folder.py), building a model and data for it (build.py),
the progress bar, where the default model and data live, torchrun, and export to Hugging Face."""
