"""The architecture registry: every network builds, has the documented shapes, trains, and is listed."""
from __future__ import annotations

import json

import pytest
import torch

from ferkit.cli import main as cli_main
from ferkit.commands.models import count_macs, recipe_summary
from ferkit.errors import FerkitError
from ferkit.models import count_parameters, create_model, list_models, model_info

LITERATURE = ["gudi", "oleniuk", "rathi", "mehra", "vgg"]

# The keys the training loop reads from a model's registered recipe (docs/architectures.md lists them).
RECIPE_KEYS = {
    "family", "label_set", "optimizer", "lr", "momentum", "nesterov", "weight_decay", "batch_size", "epochs",
    "schedule", "schedule_params", "clean", "split", "augment", "tta", "source", "reported_accuracy",
    "description",
}


def test_registry_has_the_literature_and_an_efficient_network():
    names = list_models()
    for name in LITERATURE:
        assert name in names
    assert any(model_info(n)["family"] == "efficient" for n in names)


@pytest.mark.parametrize("name", list_models())
def test_builds_for_every_class_count_and_trains(name):
    torch.manual_seed(0)
    for num_classes in (5, 6, 7, 8):
        model = create_model(name, num_classes=num_classes)
        model.eval()
        with torch.no_grad():
            out = model(torch.randn(3, 1, 48, 48))
        assert out.shape == (3, num_classes)
        assert torch.isfinite(out).all()
    # backward in training mode (BN batch statistics, dropout): every parameter gets a gradient
    model.train()
    x = torch.randn(4, 1, 48, 48)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:3]}"
    first = next(p for p in model.parameters() if p.dim() == 4)
    assert first.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list_models())
def test_recipe_info_has_the_documented_keys(name):
    info = model_info(name)
    assert RECIPE_KEYS <= set(info), f"{name} lacks {sorted(RECIPE_KEYS - set(info))}"
    assert info["label_set"] in ("fer7", "fer6", "fer5", "ferplus8")
    assert info["optimizer"] in ("sgd", "adam", "adamw")
    assert info["description"] and info["source"]


def test_rathi_parameter_count():
    # conv 5x5 (1->64) 1,664 + BN 128; conv 4x4 (64->64) 65,600 + BN 128; conv 3x3 (64->32) 18,464 + BN 64;
    # dense 2,592->128 331,904 + BN 256; dense 128->5 645  = 418,853 (valid padding, Keras' default)
    n = count_parameters(create_model("rathi", num_classes=5))
    assert n == 418_853
    # the issue quotes "about 359k"; no padding of the described layers reaches it exactly (see rathi.py)
    assert abs(n - 359_000) / 359_000 < 0.2


def test_source_layer_shapes():
    assert create_model("oleniuk", num_classes=6).classifier.in_features == 22 * 6 * 6  # 792
    gudi = create_model("gudi", num_classes=7)
    assert (gudi.fc.in_features, gudi.fc.out_features) == (128 * 12 * 12, 3072)
    vgg = create_model("vgg", num_classes=7)
    assert vgg.head[1].in_features == 512 * 3 * 3
    assert create_model("mehra", num_classes=7).head[1].in_features == 256 * 2 * 2
    assert model_info("oleniuk")["label_set"] == "fer6" and model_info("rathi")["label_set"] == "fer5"
    assert model_info("vgg")["nesterov"] is True and model_info("vgg")["lr"] == 0.01


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(FerkitError, match="unknown architecture 'resnet9000'.*vgg"):
        create_model("resnet9000")
    with pytest.raises(FerkitError, match="unknown architecture"):
        model_info("resnet9000")


def test_count_macs_on_a_known_network():
    from torch import nn

    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2),
                        nn.Flatten(), nn.Linear(4 * 24 * 24, 7))
    expected = 48 * 48 * 2 * 9 + 24 * 24 * 4 * (1 * 9) + 4 * 24 * 24 * 7
    assert count_macs(net) == expected
    # VGG: 2 convs per stage cost the same at every stage after the first; known total ~504M
    assert 500e6 < count_macs(create_model("vgg")) < 510e6


def test_recipe_summary():
    s = recipe_summary(model_info("vgg"))
    assert "sgd lr 0.01 nesterov" in s and "batch 64" in s and "plateau" in s
    assert "cleaned" in recipe_summary(model_info("oleniuk"))


def test_models_command_lists_all(capsys):
    assert cli_main(["models"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert f"\n{name} " in out
    assert "73.28%" in out  # vgg's reported accuracy
    assert cli_main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list_models()
    by_name = {r["name"]: r for r in rows}
    assert by_name["rathi"]["params"] == 418_853 and by_name["rathi"]["num_classes"] == 5
    assert by_name["oleniuk"]["label_set"] == "fer6"
    assert all(r["macs"] > 0 for r in rows)


def test_efficient_network_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    name = next(n for n in list_models() if model_info(n)["family"] == "efficient")
    model = create_model(name).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, torch.zeros(1, 1, 48, 48), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    x = torch.randn(5, 1, 48, 48)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == (5, 7)
    assert abs(got - want).max() < 1e-4
