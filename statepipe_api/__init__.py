"""The API both sides of statepipe share: neither the SDK's nor the server's.

- ``statepipe_api.v1``: the generated protobuf and gRPC code (scripts/gen_proto.py).
- ``statepipe_api.convert``: protobuf messages to and from plain JSON data, the
  one JSON shape of runs, nodes and events, and workflow specs from JSON/YAML.
- ``statepipe_api.lifecycle``: run and node statuses, their transitions and the
  controls each status allows.

It depends on protobuf only; the SDK, the client, the CLI, the console and the
control plane import it, and it imports none of them.
"""
