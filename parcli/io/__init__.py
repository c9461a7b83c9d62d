"""Everything `par` reads and writes: checkpoints, the download cache, the catalogue, media."""
