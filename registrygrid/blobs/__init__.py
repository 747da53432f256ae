"""Asset content: the bytes that asset records describe.

``digest``: checksums computed inline while bytes stream (SHA-256, the CID,
MD5 where S3 wants it). ``objects``: the object store interface and its
local, content-addressed backend (``s3`` holds the S3-compatible one).
``blobs``: content addressing over an object store. ``uploads``: resumable
upload sessions.
"""
