"""The data plane: model-config, model loading, request decoding and answers, admission,
metrics, and the TorchServe adapter (the only module here that TorchServe imports)."""
