"""The S3 face: S3 requests translated into calls on the store, with S3's XML, signatures,
aws-chunked bodies, checksums, and its own state (the spool, or PostgreSQL tables)."""
