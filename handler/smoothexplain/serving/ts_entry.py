"""The file given to torch-model-archiver as `--handler`.

TorchServe imports it as a top-level module and instantiates the one class defined here, so it
uses absolute imports only and defines nothing else.
"""

from smoothexplain.serving.ts_handler import SmoothExplainHandler

__all__ = ["Handler"]


class Handler(SmoothExplainHandler):
    """smoothexplain's TorchServe handler."""
