"""The names of the engines `par bench` times side by side: here, torch-free, so that the
command's module loads without torch for --help."""

OURS, PLAIN = "ours", "plain"  # engines: every speed-up on, or none (the --baseline yardstick)
INT8 = "int8"  # ours with weight-only int8 projections (--quantize int8), timed beside float
# Any other engine name is ours in another dtype ("bf16"), timed beside the first dtype.
