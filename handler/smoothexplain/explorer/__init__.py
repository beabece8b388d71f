"""The explorer room: a browser page next to the API that shows explanations (issue 14).

`smoothexplain serve` starts `ExplorerServer` in its own process. The page never sees
TorchServe's key: it logs in with a one-time token (`serve` prints the URL), keeps an HttpOnly
session cookie, and the explorer calls the inference API for it server-side. Free of torch;
imports only the protocol room.
"""

from .describe import ModelFacts, describe
from .server import ExplorerServer, ExplorerSettings

__all__ = ["ExplorerServer", "ExplorerSettings", "ModelFacts", "describe"]
