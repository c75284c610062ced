"""A stand-in for Serve's gRPC context: what router.serving.grpc_api.handle reads of it and sets on it."""
from __future__ import annotations


class Ctx:
    def __init__(self, metadata=(), peer="ipv4:127.0.0.1:5555"):
        self.metadata, self._peer, self.code, self.details, self.trailing = list(metadata), peer, None, None, {}

    def invocation_metadata(self):
        return self.metadata

    def peer(self):
        return self._peer

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details

    def set_trailing_metadata(self, md):
        self.trailing = dict(md)
