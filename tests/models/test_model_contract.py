"""Every backbone x decoder through the shared model contract (model_contract.ModelContract): a few lines each.

ResNet-101 and its deep-stem variant are ResNet-50's code with more blocks; they are left out to keep the suite
fast (test_backbones builds them)."""

from __future__ import annotations

from model_contract import ModelContract


class TestEfficientNetLite0FPN(ModelContract):
    backbone, architecture = "efficientnet_lite0", "fpn"


class TestEfficientNetLite0IFA(ModelContract):
    backbone, architecture = "efficientnet_lite0", "ifa"


class TestEfficientNetLite0IFAOnTheFPNNeck(ModelContract):
    backbone, architecture, config = "efficientnet_lite0", "ifa", {"ifa_features": "fpn"}


class TestEfficientNetLite0FPNAlignCorners(ModelContract):
    backbone, architecture, config = "efficientnet_lite0", "fpn", {"align_corners": True}


class TestEfficientNetLite0IFAAlignCorners(ModelContract):
    backbone, architecture, config = "efficientnet_lite0", "ifa", {"align_corners": True}


class TestHRNetW18FPN(ModelContract):
    backbone, architecture = "hrnet_w18", "fpn"


class TestHRNetW18IFA(ModelContract):
    backbone, architecture = "hrnet_w18", "ifa"


class TestResNet50FPN(ModelContract):
    backbone, architecture = "resnet50", "fpn"


class TestResNet50IFA(ModelContract):
    backbone, architecture = "resnet50", "ifa"


class TestResNet50DeepStemIFA(ModelContract):
    backbone, architecture = "resnet50_deepstem", "ifa"


class TestResNeSt50FPN(ModelContract):
    backbone, architecture = "resnest50", "fpn"


class TestResNeSt50IFA(ModelContract):
    backbone, architecture = "resnest50", "ifa"
