"""Generated protobuf / gRPC modules (do not edit by hand).

Everything below this package except this file is produced by ``tools/gen_protos.py`` from
the ``.proto`` files under ``proto/`` and is git-ignored; run
``.venv/bin/python tools/gen_protos.py`` after a fresh checkout or after editing a proto.
``proto/torchserve/inference.proto`` becomes ``smoothexplain._proto.torchserve.inference_pb2``
and ``smoothexplain._proto.torchserve.inference_pb2_grpc``.
"""
