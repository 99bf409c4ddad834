"""Coverage-guided fuzzing of mkv's pure parsers with atheris: one harness a module, each run
for a set time by `python -m fuzz NAME --seconds N` (see fuzz/README.md)."""

# name → what it feeds; each is the module fuzz.<name>
HARNESSES = {
    "sigv4": "SigV4/V2 verification: Authorization headers, presigned URLs, chunk signatures",
    "awschunked": "aws-chunked bodies: chunk sizes, chunk signatures, trailers",
    "forms": "POST Object forms: multipart parsing, the policy and its signature",
    "target": "request targets to keys and volume paths; query, Range, dates, ETag lists",
    "s3xml": "S3's XML bodies (Complete, Delete, Tagging) and the XML answers",
    "httphead": "the HTTP request head as the master's server reads it",
    "s3rules": "S3 lifecycle configurations and ACLs (XML and grant headers), and answers",
}
