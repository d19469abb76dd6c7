"""Generated gRPC stubs of proto/xkv/v1 (created by clients/python/generate.sh or at install)."""
