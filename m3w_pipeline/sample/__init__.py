"""The generated sample crawl: synthetic Common Crawl-like WARCs and the truth file tests compare against (crawl.write_sample_crawl)."""
