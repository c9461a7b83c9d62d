"""Measures of what `par` makes: digit accuracy, Frechet distances, FID runs, and speed; the
names of the engines `par bench` times side by side live here, torch-free, for `--help`."""

OURS, PLAIN = "ours", "plain"  # engines: every speed-up on, or none (the --baseline yardstick)
INT8 = "int8"  # ours with weight-only int8 projections (--quantize int8), timed beside float
# Any other engine name is ours in another dtype ("bf16"), timed beside the first dtype.
