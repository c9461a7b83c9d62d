"""Everything `par` reads and writes: files written atomically, safetensors, checkpoints and
their safe conversion, the download cache, the catalogue, and media."""
