"""Reading crawls: WARC records from any file system, and page bytes decoded to text (read first in the data flow)."""
