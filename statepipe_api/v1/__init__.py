"""Generated from proto/statepipe/v1 by scripts/gen_proto.py."""
