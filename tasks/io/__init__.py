"""Storage (local path or s3://), streaming readers, and the commit protocol's primitives."""
