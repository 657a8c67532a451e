"""Maps computed by hand on hand-weighted tiny networks."""

from __future__ import annotations

import torch
from torch import nn

import gradcam
from conftest import block_image

# Bilinear 2x2 -> 4x4 (align_corners=False) of [[1,2],[3,4]], worked by hand: source coordinates
# of the output centres are -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1).
UPSAMPLED_1234 = torch.tensor(
    [[1.0, 1.25, 1.75, 2.0], [1.5, 1.75, 2.25, 2.5], [2.5, 2.75, 3.25, 3.5], [3.0, 3.25, 3.75, 4.0]]
)


def test_gradcam_by_hand(hand_net):
    x = block_image([[1, 2], [3, 4]])
    e = gradcam.GradCAM(hand_net, "features")(x)
    # y0 = (1 + 4) + 2*(-2) + 2*(-3) = -5 ; y1 = 2*10 + 1*(-1) = 19 -> top-1 is class 1.
    assert e.classes.tolist() == [1]
    torch.testing.assert_close(e.scores, torch.tensor([19.0]))
    torch.testing.assert_close(e.weights, torch.tensor([[2.0, 0.25]]))
    # L = ReLU(2 A0 + 0.25 A1) = 1.75 * [[1,2],[3,4]]
    torch.testing.assert_close(e.raw, 1.75 * torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]))
    torch.testing.assert_close(e.heatmap, ((UPSAMPLED_1234 - 1) / 3).unsqueeze(0))
    assert e.layer == "features"


def test_all_zero_map_stays_zero_and_counterfactual_by_hand(hand_net):
    x = block_image([[1, 2], [3, 4]])
    cam = gradcam.GradCAM(hand_net, "features")
    e = cam(x, target=0)
    torch.testing.assert_close(e.weights, torch.tensor([[0.5, 1.0]]))
    # 0.5 A0 + A1 = -0.5 A0 < 0 everywhere: the map is all zero, with no NaN after normalisation.
    assert torch.equal(e.raw, torch.zeros(1, 2, 2))
    assert torch.equal(e.heatmap, torch.zeros(1, 4, 4))
    cf = cam(x, target=0, counterfactual=True)
    torch.testing.assert_close(cf.weights, torch.tensor([[-0.5, -1.0]]))
    torch.testing.assert_close(cf.raw, 0.5 * torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]))
    torch.testing.assert_close(cf.scores, torch.tensor([-5.0]))  # y itself, never negated
    assert cf.counterfactual


class TinyGap(nn.Module):
    """x (B,1,2,2) -> 1x1 conv to 2 channels (w = 1, -1) -> GAP -> linear [[1, 3], [-2, 1]] + b."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, 3.0], [-2.0, 1.0]]))
            self.fc.bias.copy_(torch.tensor([0.5, -0.5]))

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_cam_by_hand():
    x = torch.tensor([[[[1.0, -2.0], [3.0, 0.0]]]])
    e = gradcam.CAM(TinyGap().eval(), "conv")(x, target=1)
    # M_1 = -2 * A0 + 1 * A1 = -3 x = [[-3, 6], [-9, 0]] -> ReLU
    torch.testing.assert_close(e.raw, torch.tensor([[[0.0, 6.0], [0.0, 0.0]]]))
    torch.testing.assert_close(e.weights, torch.tensor([[-2.0, 1.0]]))
    cf = gradcam.CAM(TinyGap().eval(), "conv")(x, target=1, counterfactual=True)
    torch.testing.assert_close(cf.raw, torch.tensor([[[3.0, 0.0], [9.0, 0.0]]]))


class TwoReLU(nn.Module):
    """Elementwise: h1 = x, r1 = relu(h1), h2 = r1 - 1.5, r2 = relu(h2), y = w . r2, w = [1,-2,3,-4]."""

    def __init__(self, relu1, relu2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(1, 1, 1)
        self.fc = nn.Linear(4, 1, bias=False)
        self.relu1, self.relu2 = relu1, relu2
        with torch.no_grad():
            self.conv1.weight.fill_(1.0)
            self.conv2.weight.fill_(1.0)
            self.conv2.bias.fill_(-1.5)
            self.fc.weight.copy_(torch.tensor([[1.0, -2.0, 3.0, -4.0]]))

    def forward(self, x):
        return self.fc(self.relu2(self.conv2(self.relu1(self.conv1(x)))).flatten(1))


def _relu_variants():
    shared = nn.ReLU()
    shared_inplace = nn.ReLU(inplace=True)
    return {
        "module": (nn.ReLU(), nn.ReLU()),
        "module-inplace": (nn.ReLU(inplace=True), nn.ReLU(inplace=True)),
        "module-reused": (shared, shared),
        "module-reused-inplace": (shared_inplace, shared_inplace),
        "relu6": (nn.ReLU6(), nn.ReLU6(inplace=True)),
        "F.relu": (nn.functional.relu, lambda t: nn.functional.relu(t, inplace=True)),
        "torch.relu": (torch.relu, torch.relu_),
        "Tensor.relu": (lambda t: t.relu(), lambda t: t.relu_()),
        "F.relu6": (nn.functional.relu6, nn.functional.relu6),
    }


def test_guided_backprop_by_hand_for_every_relu_form():
    # image 1: x = [1, -1, 2, 3]: r1 = [1,0,2,3], h2 = [-.5,-1.5,.5,1.5];
    #   guided: max(w,0)*[h2>0] = [0,0,3,0], then *[h1>0] -> [0,0,3,0]; plain gradient [0,0,3,-4].
    # image 2: x = [2, 3, -1, 1]: h2 = [.5,1.5,-1.5,-.5]: [1,0,0,0]*[1,1,0,1] -> [1,0,0,0].
    x = torch.tensor([[1.0, -1.0, 2.0, 3.0], [2.0, 3.0, -1.0, 1.0]]).reshape(2, 1, 2, 2)
    expected = torch.tensor([[0.0, 0.0, 3.0, 0.0], [1.0, 0.0, 0.0, 0.0]]).reshape(2, 1, 2, 2)
    for name, (relu1, relu2) in _relu_variants().items():
        net = TwoReLU(relu1, relu2).eval()
        e = gradcam.GuidedBackprop(net)(x, target=0)
        torch.testing.assert_close(e.heatmap, expected, msg=f"guided backprop with {name}")
    xg = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(TwoReLU(nn.ReLU(), nn.ReLU())(xg).sum(), xg)
    torch.testing.assert_close(plain[0].flatten(), torch.tensor([0.0, 0.0, 3.0, -4.0]))


def test_guided_gradcam_is_the_hadamard_product(hand_net):
    x = block_image([[1, 2], [3, 4]]) + torch.linspace(0, 0.3, 16).reshape(1, 1, 4, 4)
    x = torch.cat([x, x.flip(-1)])
    cam = gradcam.GradCAM(hand_net, "features")(x)
    guided = gradcam.GuidedBackprop(hand_net)(x, cam.classes)
    combined = gradcam.GuidedGradCAM(hand_net, "features")(x)
    torch.testing.assert_close(combined.heatmap, guided.heatmap * cam.heatmap[:, None])
    assert combined.heatmap.abs().sum() > 0
