"""nodecache: a node-local DNS caching agent for Kubernetes."""

__version__ = "0.1.0"
