"""On-disk storage of contexts."""
