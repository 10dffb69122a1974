"""batchd benchmarks: each scenario beside the baseline it is judged against, in one run."""
