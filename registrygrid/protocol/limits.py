"""Size caps of everything that crosses a trust boundary, and where each comes from.

Every number here bounds memory a peer, a file or a request can make us spend.
"""

# A gossip message carries a batch of envelopes and libp2p pubsub
# implementations cap a message at 1 MiB (go-libp2p's DefaultMaxMessageSize,
# which js-libp2p follows), so one envelope must stay well below that for a
# batch to hold several: 256 KiB.
MAX_ENVELOPE_BYTES = 256 * 1024

# A record's fields, encoded. Registries hold metadata about assets, not the
# assets themselves (large bytes go to the object store), and the biggest
# realistic descriptors (a vDAG with hundreds of nodes, an OpenAPI-sized tool
# interface) fit in tens of KiB. 128 KiB leaves the Automerge change that
# carries them (ops + column headers, about 1.3-2x the JSON) under the
# envelope cap.
MAX_RECORD_BYTES = 128 * 1024

# Names are used in LMDB keys and topic names; LMDB's default max key size is
# 511 bytes and a key joins registry + record id + a few fixed bytes.
MAX_REGISTRY_NAME = 128
MAX_RECORD_ID = 128
MAX_KIND_NAME = 64
MAX_TAGS = 64
MAX_TAG_LENGTH = 64
MAX_LINKS = 256

# Automerge changes made by one transaction depend on the document's heads;
# heads grow with concurrent writers, so a few hundred is generous and bounds
# what a hostile envelope can make us look up.
MAX_DEPS = 256

# JSON nesting: deep enough for any real descriptor, shallow enough that a
# recursive walk cannot exhaust Python's stack (default limit 1000).
MAX_NESTING = 32

# The largest integer magnitude a float64 holds exactly. Schema engines that
# compare numbers as floats (jsonschema-rs 0.60) agree with exact comparison
# only up to here; crdt.snapshot.check_value reports whether a value stays
# within it, so validation can skip its own walk (schemas/catalog.py).
EXACT_FLOAT_INT = 2**53
