"""ResNet-18 as a class with a no-argument constructor, for the serving benchmark's archives.

TorchServe's stock `image_classifier` handler instantiates the one class defined in its
`--model-file` and loads a state_dict into it; our handler imports the same class through
`model_class: "tv_resnet18:ResNet18"` (TorchServe puts the model directory on the path).
Defines exactly one class on purpose.
"""

from torchvision.models.resnet import BasicBlock, ResNet


class ResNet18(ResNet):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
