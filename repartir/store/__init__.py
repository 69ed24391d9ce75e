"""The node's object store: the shared-memory arena and the owner's object table."""
