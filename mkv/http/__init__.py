"""HTTP/1.1 for the master: the server clients talk to, the pool it talks to volumes with,
streamed bodies with flow control, and pipelined HEAD checks."""
