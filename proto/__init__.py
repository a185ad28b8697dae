"""Wire schema: generated protobuf classes (see im.proto and docs/protocol.md)."""
