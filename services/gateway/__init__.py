"""The gRPC gateway: a grpc.aio server in front of the Ray Serve deployments."""
