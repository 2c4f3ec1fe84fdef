"""Media bytes: image and video decoding, validation and resizing, and fetching what the crawl does not hold."""
