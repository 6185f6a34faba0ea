"""The product's promise: chained segments compute exactly what the model computes."""

import pytest
import torch
import torchvision

import partitioner
from tests.conftest import create, twin

# One small member of each family, with an input size the model accepts.
FAMILIES = [
    ("resnet18", 64, {}),
    ("efficientnet_b0", 64, {}),
    ("mobilenetv3_small_050", 64, {}),
    ("convnext_atto", 64, {}),
    ("vit_tiny_patch16_224", 64, {"img_size": 64}),
    ("deit_tiny_patch16_224", 64, {"img_size": 64}),
    ("swin_tiny_patch4_window7_224", 112, {"img_size": 112}),
    ("regnetx_002", 64, {}),
    ("densenet121", 64, {}),
    ("ghostnet_050", 64, {}),
    ("resmlp_12_224", 64, {"img_size": 64}),
    ("poolformer_s12", 64, {}),
    ("mixer_s16_224", 64, {"img_size": 64}),
    ("levit_128s", 224, {}),
    ("mobilevit_xxs", 64, {}),
    ("dla34", 64, {}),
    ("edgenext_xx_small", 64, {}),
    ("hrnet_w18_small", 64, {}),
    ("maxvit_nano_rw_256", 64, {"img_size": 64}),
    ("inception_v3", 96, {}),
]
CIFAR = ["resnet20", "resnet32", "resnet56"]


def outputs_equal(a, b) -> bool:
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


def check_transparent(model: torch.nn.Module, x: torch.Tensor, ks) -> None:
    reference = twin(model)
    analysis = partitioner.analyze(model, x)
    for k in sorted({min(k, analysis.max_k) for k in ks}):
        part = analysis.partition(k)
        assert part.k == k
        part.eval(), reference.eval()
        with torch.no_grad():
            assert outputs_equal(part(x), reference(x)), f"eval output differs at k={k}"
        part.train(), reference.train()
        torch.manual_seed(k)
        expected = reference(x)
        torch.manual_seed(k)
        assert outputs_equal(part(x), expected), f"train output differs at k={k}"
        # Both saw one training batch: batch-norm statistics must agree too.
        for (name, b), (_, rb) in zip(model.named_buffers(), reference.named_buffers()):
            assert torch.equal(b, rb), f"buffer {name} differs at k={k}"


@pytest.mark.parametrize("name,size,kwargs", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_timm_families(name, size, kwargs):
    try:  # stochastic depth makes the train graph differ from the eval graph
        model = create(name, num_classes=10, drop_path_rate=0.1, **kwargs)
    except TypeError:
        model = create(name, num_classes=10, drop_rate=0.1, **kwargs)
    check_transparent(model, torch.randn(2, 3, size, size), ks=(2, 4, 1000))


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_resnets(name):
    model = create(name, num_classes=10)
    check_transparent(model, torch.randn(4, 3, 32, 32), ks=(1, 2, 8, 16))


def test_torchvision_model():
    model = torchvision.models.resnet18(num_classes=10)
    check_transparent(model, torch.randn(2, 3, 64, 64), ks=(3, 6))


def test_multi_tensor_boundaries():
    model = create("hrnet_w18_small", num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    single = partitioner.analyze(model, x).max_k
    analysis = partitioner.analyze(model, x, max_boundary_tensors=4)
    assert analysis.max_k > single
    part = analysis.partition(analysis.max_k)
    assert any(len(b.tensors) > 1 for b in part.boundaries)
    reference = twin(model).eval()
    part.eval()
    with torch.no_grad():
        assert torch.equal(part(x), reference(x))


def test_chained_gradients_equal_model_gradients():
    model = create("resnet20", num_classes=10)
    reference = twin(model)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    part = partitioner.partition(model, x, k=5).train()
    torch.nn.functional.cross_entropy(part(x), y).backward()
    torch.nn.functional.cross_entropy(reference.train()(x), y).backward()
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.equal(p.grad, q.grad), name
