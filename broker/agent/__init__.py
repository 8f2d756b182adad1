"""The node agent. ``agent.py`` is a standalone standard-library script that every node of a
cluster with a command runs as ``python3 -I agent.py`` (docs/agent-protocol.md); the broker
ships its bytes to the nodes and never imports it."""
