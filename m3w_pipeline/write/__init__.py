"""Writing corpora: M3W shards, image-text and video-text pairs with their shards, and the Parquet indexes."""
