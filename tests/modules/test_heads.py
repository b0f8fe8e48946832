"""MlpClassifierHead options."""

import torch

from hf_vlp.modules.heads import MlpClassifierHead


def test_default_head_keeps_the_original_layout() -> None:
    head = MlpClassifierHead(8, 3)
    assert list(head.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert isinstance(head[1], torch.nn.ReLU)
    x = torch.randn(4, 8)
    torch.testing.assert_close(head(x), head[2](torch.relu(head[0](x))), atol=0, rtol=0)


def test_vilt_style_head_with_gelu_norm_and_wider_hidden_layer() -> None:
    head = MlpClassifierHead(8, 5, intermediate_size=16, activation="gelu", layer_norm_eps=1e-5)
    assert list(head.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
    assert head[1].eps == 1e-5 and head[0].out_features == 16
    x = torch.randn(4, 8)
    expected = head[3](torch.nn.functional.gelu(head[1](head[0](x))))
    torch.testing.assert_close(head(x), expected, atol=0, rtol=0)
    assert head(x).shape == (4, 5)
