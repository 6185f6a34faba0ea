"""contsup.recipes: YAML recipes, and the paper's recipes against docs/paper.md."""

from pathlib import Path

import pytest
import timm

from contsup.context import parse_context
from contsup.data import DataError, parse_dataset
from contsup.data.augment import check_augment
from contsup.heads import parse_head
from contsup.mixing import check_mixing
from contsup.optimizers import check_optimizer
from contsup.recipes import RecipeError, load_recipe
from contsup.schedule import check_schedule
from contsup.trainer import TrainConfig

RECIPES = sorted(Path(__file__).resolve().parents[2].joinpath("recipes").glob("*.yaml"))


def test_every_paper_experiment_has_a_recipe():
    names = {p.stem for p in RECIPES}
    assert {
        "digits",
        "t1_resnet32_k16_cifar10",
        "t2_resnet32_cifar10",
        "t3_resnet110_cifar10",
        "t3_resnet110_svhn",
        "t3_resnet110_stl10",
        "t4_resnet32_cifar10",
        "memory_balanced_e_star",
        "timm_resnet18",
        "timm_vit_tiny",
        "timm_convnext_atto",
        "imagenet_resnet50",
        "imagenet_vit_small",
    } <= names


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_is_valid(path):
    recipe = load_recipe(path)
    assert recipe.description
    for _, overrides in recipe.runs:
        config = TrainConfig(**{**recipe.base, **overrides})
        assert timm.is_model(config.model)
        parse_context(config.context)
        parse_head(config.head)
        folder = config.dataset.partition("imagefolder:")[2]
        if folder and not Path(folder).is_dir():  # ImageNet: a path on the user's machine
            with pytest.raises(DataError, match=f"{folder} is not a directory"):
                parse_dataset(config.dataset)
        else:
            parse_dataset(config.dataset)
        assert config.decoder is None or len(config.decoder) == 4
        check_optimizer(config.optimizer)
        check_schedule(config.schedule)
        check_augment(config.augment, config.random_erasing)
        check_mixing(config.mixup, config.cutmix, config.label_smoothing, config.local_loss)


@pytest.mark.parametrize("name", ["imagenet_resnet50", "imagenet_vit_small"])
def test_imagenet_recipes_use_timms_pieces_and_keep_the_paper_recipes_sgd(name):
    recipe = load_recipe(Path(f"recipes/{name}.yaml"))
    config = TrainConfig(**recipe.base)
    assert config.optimizer in ("lamb", "adamw") and config.schedule == "timm:cosine"
    assert config.augment.startswith("rand-") and config.mixup and config.cutmix
    assert config.k == 4 and config.context == "R1E"
    for paper in Path("recipes").glob("t[1-4]_*.yaml"):
        base = load_recipe(paper).base
        assert TrainConfig(**base).optimizer == "sgd" and base["schedule"] == "paper"


def test_paper_tables_match_paper_md():
    t3 = load_recipe(Path("recipes/t3_resnet110_stl10.yaml"))
    assert t3.base["batch_size"] == 128 and t3.base["lr"] == 0.1
    assert dict(t3.runs)["K4"]["decoder"] == [20, 0.2, 5, 2]
    t1 = load_recipe(Path("recipes/t1_resnet32_k16_cifar10.yaml"))
    assert [o["context"] for _, o in t1.runs] == ["R0", "E", "R1", "R1E"]
    t4 = load_recipe(Path("recipes/t4_resnet32_cifar10.yaml"))
    assert len(t4.runs) == 10


@pytest.mark.parametrize(
    "text,message",
    [
        ("epoch: 3\n", "unknown field 'epoch' \\(did you mean 'epochs'\\?\\)"),
        ("k: four\n", "field 'k' must be int, got 'four'"),
        ("lr: [1]\n", "field 'lr' must be float"),
        ("decoder: [1, x]\n", "field 'decoder' must be list"),
        ("runs: [{context: E}]\n", "runs\\[0\\] must be a mapping with a 'name'"),
        ("runs: [{name: a, kk: 2}]\n", "runs\\[0\\] \\(a\\): unknown field 'kk'"),
        ("runs: [{name: a}, {name: a}]\n", "unique"),
        ("- just\n- a list\n", "a recipe is a mapping"),
        ("k: [\n", "not valid YAML"),
    ],
)
def test_malformed_recipe_names_the_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_missing_recipe(tmp_path):
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path / "nope.yaml")


PAPER_RECIPES = [p for p in RECIPES if p.stem.startswith(("t1_", "t2_", "t3_", "t4_", "memory_"))]


def test_paper_recipes_pin_the_papers_modules_and_cuts():
    """T1-T4 and E* use aux paper and cut where docs/paper.md's tables say, at cut points."""
    import torch

    import partitioner

    candidates = {}
    for path in PAPER_RECIPES:
        recipe = load_recipe(path)
        for name, overrides in recipe.runs:
            config = TrainConfig(**{**recipe.base, **overrides})
            assert config.aux == "paper", (path.name, name)
            assert config.cuts, (path.name, name)
            if config.model not in candidates:
                model = timm.create_model(config.model)
                analysis = partitioner.analyze(model, torch.zeros(2, 3, 32, 32, device="meta"))
                candidates[config.model] = [c.boundary[0] for c, _ in analysis.cuts]
            order = [candidates[config.model].index(c) for c in config.cuts]
            assert order == sorted(set(order)), (path.name, name)
    t3 = dict(load_recipe(Path("recipes/t3_resnet110_cifar10.yaml")).runs)
    # ResNet-110 K=16: [1,1/4/7/10/13/16] [2,1/4/7/11/15] [3,1/5/9/13]
    assert t3["K16"]["cuts"] == [
        *(f"layer1_{b}_act2" for b in (1, 4, 7, 10, 13, 16)),
        *(f"layer2_{b}_act2" for b in (1, 4, 7, 11, 15)),
        *(f"layer3_{b}_act2" for b in (1, 5, 9, 13)),
    ]
    t1 = load_recipe(Path("recipes/t1_resnet32_k16_cifar10.yaml"))
    assert t1.base["cuts"][0] == "act1" and len(t1.base["cuts"]) == 15  # [0,0]: the stem
