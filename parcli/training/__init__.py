"""Training a tokenizer and PAR transformers on small data sets."""
