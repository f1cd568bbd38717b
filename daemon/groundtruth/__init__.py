"""Ground truth: golden datasets, their loaders, reference-exact metrics and live evaluation."""
