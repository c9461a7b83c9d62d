"""Measures of what `par` makes: digit accuracy, Frechet distances, FID runs, and speed."""
