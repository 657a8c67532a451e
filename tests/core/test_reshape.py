"""Token -> grid reshapes: every token lands in its cell; maps at a token layer equal maps at the grid."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

import gradcam
from conftest import GapNet
from gradcam.reshape import (
    TokenGrid,
    auto_reshape,
    channels_last_to_grid,
    infer_prefix,
    patch_size,
    prefix_tokens,
    token_layer,
    tokens_to_grid,
)
from targets.targets_support import one_thread  # noqa: F401  (autouse fixture)


def coded_tokens(batch: int, rows: int, cols: int, channels: int, prefix: int) -> torch.Tensor:
    """tokens[b, prefix + i*cols + j, c] = 1000 b + 100 i + 10 j + c; prefix tokens are -1."""
    tokens = torch.full((batch, prefix + rows * cols, channels), -1.0)
    for b in range(batch):
        for i in range(rows):
            for j in range(cols):
                for c in range(channels):
                    tokens[b, prefix + i * cols + j, c] = 1000 * b + 100 * i + 10 * j + c
    return tokens


def expected_grid(batch: int, rows: int, cols: int, channels: int) -> torch.Tensor:
    b, c, i, j = torch.meshgrid(
        torch.arange(batch), torch.arange(channels), torch.arange(rows), torch.arange(cols), indexing="ij"
    )
    return (1000 * b + 100 * i + 10 * j + c).float()


@pytest.mark.parametrize(
    ("rows", "cols", "prefix", "grid_arg", "prefix_arg"),
    [
        (3, 3, 1, None, None),  # class token, inferred
        (3, 3, 2, None, 2),  # class + distillation tokens, given
        (2, 3, 5, (2, 3), None),  # non-square with 5 prefix tokens, grid given
        (4, 2, 0, (4, 2), 0),
    ],
)
def test_each_token_lands_in_its_cell(rows, cols, prefix, grid_arg, prefix_arg):
    tokens = coded_tokens(2, rows, cols, 3, prefix)
    grid = TokenGrid(grid=grid_arg, prefix=prefix_arg)(tokens)
    assert torch.equal(grid, expected_grid(2, rows, cols, 3))


def test_channels_last_cells():
    grid = expected_grid(2, 3, 4, 5)
    channels_last = grid.permute(0, 2, 3, 1).contiguous()
    assert channels_last[1, 2, 3, 4] == 1000 + 200 + 30 + 4
    assert torch.equal(TokenGrid("channels_last")(channels_last), grid)
    assert torch.equal(channels_last_to_grid(channels_last), grid)


def test_infer_prefix():
    assert [infer_prefix(n) for n in (197, 198, 201, 50, 196, 17)] == [1, 2, 5, 1, 0, 1]
    with pytest.raises(gradcam.LayerError, match="cannot lay 323 tokens on a square grid"):
        infer_prefix(323)


def test_reshape_errors():
    with pytest.raises(gradcam.LayerError, match="grid 3x3 with 1 prefix tokens needs 10 tokens; the layer gives 17"):
        tokens_to_grid(torch.zeros(1, 17, 2), grid=(3, 3), prefix=1)
    with pytest.raises(gradcam.LayerError, match="17 tokens minus 2 prefix tokens = 15 patches, not a square"):
        tokens_to_grid(torch.zeros(1, 17, 2), prefix=2)
    with pytest.raises(gradcam.LayerError, match=r"needs a \(B, N, C\) tensor"):
        TokenGrid()(torch.zeros(1, 2, 3, 4))
    with pytest.raises(gradcam.LayerError, match="layout must be"):
        TokenGrid("nchw")
    with pytest.raises(gradcam.LayerError, match="grid must be a pair"):
        TokenGrid(grid=(0, 3))


class ToTokens(nn.Module):
    """(B, C, h, w) -> (B, P + h*w, C): P learned register tokens, then the patches row-major."""

    def __init__(self, channels: int, prefix: int) -> None:
        super().__init__()
        self.register_tokens = nn.Parameter(torch.randn(1, prefix, channels))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.register_tokens.expand(len(a), -1, -1), a.flatten(2).transpose(1, 2)], 1)


class TokenNet(nn.Module):
    """conv -> tokens (with prefix) -> the first token attends to all -> linear."""

    def __init__(self, prefix: int) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.tokens = ToTokens(6, prefix)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tokens(self.features(x))
        attention = torch.softmax((t[:, :1] * t).sum(-1), dim=1)
        return self.head((attention[..., None] * t).sum(1) + t[:, 0])


class LastNet(nn.Module):
    """conv -> channels-last -> LayerNorm over channels -> mean over the grid -> linear."""

    def __init__(self, channels: int = 6) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, channels, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(channels)
        self.head = nn.Linear(channels, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.norm(self.features(x).permute(0, 2, 3, 1))).mean((1, 2)))


@pytest.mark.parametrize(("prefix", "size"), [(1, (8, 8)), (5, (4, 4)), (3, (8, 12))])
def test_token_layer_maps_equal_grid_layer_maps(prefix, size):
    # The token layer is a re-indexing of the conv output (plus constant prefix tokens), so Grad-CAM
    # through the reshape must give exactly the conv layer's weights and maps.
    torch.manual_seed(prefix)
    model = TokenNet(prefix).eval()
    x = torch.randn(3, 3, *size)
    reshape = auto_reshape(model, "tokens", x)  # prefix from the model, grid from the input's aspect ratio
    assert reshape == TokenGrid("tokens", (size[0] // 2, size[1] // 2), prefix)
    targets = torch.tensor([[0, 3], [1, 2], [3, 3]])
    through_tokens = gradcam.GradCAM(model, "tokens", reshape=reshape)(x, targets)
    at_grid = gradcam.GradCAM(model, "features")(x, targets)
    torch.testing.assert_close(through_tokens.weights, at_grid.weights)
    torch.testing.assert_close(through_tokens.raw, at_grid.raw)
    torch.testing.assert_close(through_tokens.heatmap, at_grid.heatmap)


def test_register_tokens_come_from_the_model_not_from_n():
    # 2x2 patches + 5 registers = 9 tokens, which N alone would read as a 3x3 grid.
    model = TokenNet(5).eval()
    assert prefix_tokens(model) == 5
    assert infer_prefix(9) == 0
    assert auto_reshape(model, "tokens", torch.randn(1, 3, 4, 4)) == TokenGrid("tokens", (2, 2), 5)


@pytest.mark.parametrize("channels", [6, 5])  # (B,4,4,5) from 8x8 could be either layout: the LayerNorm decides
def test_channels_last_layer_maps_equal_autograd(channels):
    torch.manual_seed(0)
    model = LastNet(channels).eval()
    x = torch.randn(2, 3, 8, 8)
    reshape = auto_reshape(model, "norm", x)
    assert reshape == TokenGrid("channels_last")
    through = gradcam.GradCAM(model, "norm", reshape=reshape)(x, [1, 2])
    # independent: differentiate w.r.t. the channels-last tensor, then move channels first
    normed = model.norm(model.features(x).permute(0, 2, 3, 1))
    leaf = normed.detach().requires_grad_(True)
    scores = model.head(torch.tanh(leaf).mean((1, 2)))
    (grad,) = torch.autograd.grad(scores[torch.arange(2), torch.tensor([1, 2])].sum(), leaf)
    at_grid_weights = grad.permute(0, 3, 1, 2).mean((-2, -1))
    torch.testing.assert_close(through.weights, at_grid_weights)
    torch.testing.assert_close(through.raw, torch.relu(torch.einsum("bk,bkuv->buv", at_grid_weights,
                                                                    normed.detach().permute(0, 3, 1, 2))))  # fmt: skip


def test_conv_layers_need_no_reshape():
    assert auto_reshape(GapNet().eval(), "act", torch.randn(1, 3, 8, 8)) is None
    assert auto_reshape(GapNet().eval(), "act", torch.randn(1, 3, 7, 7)) is None


def test_torchvision_vit_and_swin():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=3).eval()  # fmt: skip
    nn.init.normal_(vit.heads.head.weight)  # torchvision initialises the head to zero: no gradient at all
    assert (prefix_tokens(vit), patch_size(vit)) == (1, (8, 8))
    layer = token_layer(vit)
    assert layer == "encoder.layers.encoder_layer_0.ln_1"
    assert auto_reshape(vit, layer, x) == TokenGrid("tokens", (4, 4), 1)
    e = gradcam.GradCAM(vit, layer, reshape=auto_reshape(vit, layer, x))(x, [0, 2])
    assert e.raw.shape == (2, 4, 4) and bool((e.raw.flatten(1).amax(1) > 0).all())
    swin = SwinTransformer(patch_size=[4, 4], embed_dim=12, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2],
                           num_classes=3).eval()  # fmt: skip
    layer = token_layer(swin)
    assert layer == "features.3.0.norm1"
    assert auto_reshape(swin, layer, x) == TokenGrid("channels_last")
    assert auto_reshape(swin, "features.1", x) == TokenGrid("channels_last")
    e = gradcam.GradCAM(swin, layer, reshape=TokenGrid("channels_last"))(x, [0, 2])
    assert e.raw.shape == (2, 4, 4) and bool((e.raw.flatten(1).amax(1) > 0).all())


def test_timm_register_tokens():
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    model = timm_vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, reg_tokens=4,
                                       num_classes=3).eval()  # fmt: skip
    assert prefix_tokens(model) == 5
    assert auto_reshape(model, token_layer(model), torch.randn(1, 3, 32, 32)) == TokenGrid("tokens", (4, 4), 5)


def test_token_layer_error():
    with pytest.raises(gradcam.LayerError, match="no transformer block LayerNorm"):
        token_layer(GapNet())


def test_hf_swin_later_stage_tokens():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 1],
                                     window_size=2, num_labels=3)  # fmt: skip
    model = transformers.SwinForImageClassification(config).eval()
    x = torch.randn(2, 3, 32, 32)
    layer = token_layer(model)
    assert layer == "swin.encoder.layers.1.blocks.0.layernorm_before"
    # stage 2 after one patch merging: the 8x8 patch grid halved to 4x4, no prefix tokens
    assert auto_reshape(model, layer, x) == TokenGrid("tokens", (4, 4), 0)
    assert auto_reshape(model, "swin.encoder.layers.0.blocks.0.layernorm_before", x) == TokenGrid("tokens", (8, 8), 0)
    e = gradcam.GradCAM(model, layer, reshape=auto_reshape(model, layer, x))(x, [0, 2])
    assert bool((e.raw.flatten(1).amax(1) > 0).all())


def test_engine_reshape_auto_equals_the_explicit_token_grid():
    """`reshape="auto"` in the engine picks the same TokenGrid as auto_reshape, with identical maps."""
    import gradcam
    from gradcam.reshape import auto_reshape

    torch.manual_seed(0)
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5
    ).eval()
    layer = "encoder.layers.encoder_layer_0.ln_1"
    x = torch.randn(2, 3, 32, 32)
    explicit = gradcam.GradCAM(model, layer, reshape=auto_reshape(model, layer, x))(x, [1, 3])
    forwards = []
    handle = model.register_forward_pre_hook(lambda module, args: forwards.append(args[0].shape[0]))
    try:
        auto = gradcam.GradCAM(model, layer, reshape="auto")
        first = auto(x, [1, 3])
        assert forwards == [2]  # read from the call's own activations: no probe forward
        assert auto.reshape == auto_reshape(model, layer, x)
        again = auto(x, [1, 3])
    finally:
        handle.remove()
    assert explicit.raw.shape == (2, 4, 4)
    torch.testing.assert_close(first.raw, explicit.raw)
    torch.testing.assert_close(again.raw, explicit.raw)
    with pytest.raises(gradcam.LayerError, match="reshape must be a callable, 'auto' or None; got 'tokens'"):
        gradcam.GradCAM(model, layer, reshape="tokens")
