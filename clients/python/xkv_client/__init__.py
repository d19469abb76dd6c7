"""xkv-client: a thin Python client for the xkv inference service (xkv.v1 gRPC API)."""
from xkv_client.client import (AdminClient, GenerateChunk, XkvClient, XkvError, build_kv_policy,
                               build_request)
from xkv_client._proto.xkv.v1 import admin_pb2, generation_pb2

__all__ = ["AdminClient", "GenerateChunk", "XkvClient", "XkvError", "admin_pb2", "build_kv_policy",
           "build_request", "generation_pb2"]
__version__ = "0.1.0"
