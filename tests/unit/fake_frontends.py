"""Loopback servers for tests that stand in for TorchServe's gRPC and REST front ends.

    with serving_grpc(MyInference()) as port: ...      # an InferenceAPIsService servicer
    with serving_http(MyRestHandler) as port: ...      # a JsonHandler subclass

Each server listens on 127.0.0.1 on a free port and is stopped when the block ends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc

from smoothexplain._proto.torchserve import inference_pb2_grpc

__all__ = ["JsonHandler", "serving_grpc", "serving_http"]


@contextmanager
def serving_grpc(servicer: inference_pb2_grpc.InferenceAPIsServiceServicer) -> Iterator[int]:
    """Serve `servicer`; the RPCs it does not override answer UNIMPLEMENTED."""
    executor = ThreadPoolExecutor(max_workers=2)
    server = grpc.server(executor)
    inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None).wait()
        executor.shutdown(wait=True)


@contextmanager
def serving_http(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """Serve `handler` from a thread of its own, one thread per connection."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class JsonHandler(BaseHTTPRequestHandler):
    """A request handler that answers JSON bytes and keeps the test output free of access logs."""

    def send_json(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass
