"""Does context supply help? Paired test accuracy on real data, on the CPU.

ResNet-32 on Fashion-MNIST (Debian's ``dataset-fashion-mnist``, 1x28x28), cut at
the paper's K=16 cuts, softmax local loss and 1c2f heads; every row of a suite
uses the same fixed training subset, all 10,000 test images, and the same
seeds. A seed fixes the data order, the augmentation and the backbone's initial
weights, so rows are paired: R1E - R0 is taken seed by seed.

Suites (``--list`` prints them):

* ``core``: end-to-end, and K=16 R0 and R1E with each aux design (R0 is the
  same run for ``sized`` and ``scaled``: no bridges); 12,000 images, 3 seeds.
  About an hour on 2 cores.
* ``quick``: the same rows at 9,000 images, 4 epochs, 2 seeds (about 10 min).
* ``wide``: K=16 E and R1; K=4 and K=8 R0 and R1E; timm's resnet18 on
  Fashion-MNIST at 64 px, K=8, R0 and R1E (quick budget).
* ``ablation``: which parts of the paper's modules carry the benefit (quick
  budget); the variants are aux designs registered below.
* ``precision``: quick K=16 R0 and R1E in float32 without channels-last (seed
  0), to check that the bf16 autocast and channels-last every other row uses
  (1.5-2.4x faster on this CPU) does not move accuracy.
* ``explore``: beyond the ablation, at the quick budget with 3 seeds: context
  over all channels with BatchNorm, R2E, and the reconstruction decoder under
  R0 and R1E.
* ``bridges``: the default's heads with other bridges: the paper's init alone on
  the thin ones, the paper's pooled first to twice the grid, and a band a
  quarter of C wide (quick budget, 3 seeds; the second on core and on
  resnet18 at 64 px too).
* ``losses``: R0 and R1E with weaker heads (``0c1f``, GAP -> Linear) and with
  the supervised contrastive loss (quick budget, 3 seeds): does context help
  more where greedy learning loses more?
* ``c305389``: contsup at commit c305389's modules (the paper's, before the
  fidelity fixes: PyTorch's default init, no bias on E's second conv) on this
  yardstick (quick budget, 3 seeds).
* ``long``: K=16 R0 and R1E, and end-to-end, trained three times as long as
  ``quick`` (9,000 images, 12 epochs, 2 seeds): does context help more when
  greedy learning has longer to lose information?
* ``longer``: the default's K=16 R1E and R0 and end-to-end trained twice as
  long as ``long`` (24 epochs): does the gap to end-to-end keep shrinking?
* ``gap``: toward end-to-end with the default modules (quick budget): R1E at other
  learning rates, with InfoPro's decoder, and with momentum heads (each looks
  through a moving average of the next segment); resnet18 at 64 px end-to-end.

``--seeds`` runs other seeds of the chosen rows and adds them to the saved ones
(``--suite core --only "K16 R0 scaled" --seeds 3 4``).

    apt-get install dataset-fashion-mnist      # once, as root
    python benchmarks/learning.py --suite quick
    python benchmarks/learning.py --report     # md + png from the saved json

Rows run in ``--jobs`` processes (default 2) of one thread each: two processes of
two threads slow each other several-fold on this machine. Results are merged
into benchmarks/results/learning_cpu.json as each row finishes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
RECIPES = Path(__file__).parent.parent / "recipes"
# t quantiles (two-sided 95%) for the paired intervals, by degrees of freedom.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}

QUICK = dict(train_images=9000, epochs=4, seeds=[0, 1])
CORE = dict(train_images=12000, epochs=5, seeds=[0, 1, 2])
LONG = dict(train_images=9000, epochs=12, seeds=[0, 1])
LONGER = dict(train_images=9000, epochs=24, seeds=[0, 1])
RESNET32 = dict(model="resnet32", dataset="fashion_mnist", batch_size=128, lr=0.1)
DECODER = [5.0, 0.0, 0.5, 1.0]  # the paper's K=16 CIFAR-10 loss scales
RESNET18_64 = dict(model="resnet18", dataset="fashion_mnist:64", batch_size=64, lr=0.05)


def register_variants() -> None:
    """The ablation's aux designs: the scaled design with one choice changed, and the
    two designs' heads and bridges crossed."""
    from torch import nn

    from contsup.auxiliary import AuxDesign, paper, register_design, scaled, sized
    from contsup.models.cifar_resnet import paper_init

    # The ablation's baseline: the scaled bridge of contsup 0.2 (16 channels a source,
    # side by side, times a learned gain that starts at zero), registered as scaled-0.2.
    old = scaled.LEGACY_STYLE

    def styled(name: str, init=None, **choices) -> None:
        style = replace(old, **choices)

        def bridge(target, sources, image):
            built = scaled.FusedBridge(target, sources, image, style)
            return built if init is None else init(built)

        register_design(
            AuxDesign(name, bridge, scaled.build_legacy_head, scaled.ReconstructionDecoder)
        )

    styled("scaled+allC+nogain", band=None, combine="sum", gain="none")
    styled("scaled+e3x3", image="conv3x3")
    styled("scaled+fullgrid", recent_grid="full")
    styled("scaled+bn", norm=True)
    styled("scaled+allC", band=None, combine="sum")
    styled("scaled+nogain", gain="none")
    styled("scaled+allC+bn", band=None, combine="sum", norm=True, gain="none")
    # The paper's init alone on the thin bridges; the paper's bridge pooled first (its
    # form: BatchNorm, 3x3 image convs, summed into all C, on at most twice the grid).
    styled("scaled+paperinit", gain="none", init=paper_init)
    styled("scaled+paperlike", band=None, combine="sum", norm=True, gain="none",
           recent_grid="full", image="conv3x3", init=paper_init)  # fmt: skip
    # A band that grows with the boundary: a quarter of its channels (at least 16).
    quarter = replace(old, gain="none")

    def quarter_bridge(target, sources, image):
        style = replace(quarter, band=max(scaled.CONTEXT_WIDTH, target.channels // 4))
        return scaled.FusedBridge(target, sources, image, style)

    # contsup at c305389 (before the fidelity fixes): the paper's modules with PyTorch's
    # default init and no bias on E's second conv (R1E's first bridge stays E alone).
    def default_init(module):
        for m in module.modules():
            if isinstance(m, nn.Conv2d | nn.Linear | nn.BatchNorm2d):
                m.reset_parameters()
        return module

    def old_bridge(target, sources, image):
        built = paper.build_bridge(target, sources, image)
        if built.image is not None:
            built.image[3].bias = None
        return default_init(built)

    def old_head(*args, **kwargs):
        return default_init(paper.build_head(*args, **kwargs))

    # The thin modules these results were measured with: 32-channel heads on <= 16x16,
    # E on the boundary's grid (scaled-0.2's, without its gain).
    thin_head = scaled.build_legacy_head
    thin_bridge = partial(scaled.FusedBridge, style=scaled.BridgeStyle(image_grid="full"))

    from contsup.bridges import Bridge
    from contsup.geometry import FromMap, Geometry, pool_to

    def paper_heads(config, geometry, out_features, width):
        if geometry.layout == "NCHW":
            return paper.build_head(config, geometry, out_features, width, init=None)
        return thin_head(config, geometry, out_features, width)

    # The paper's bridge (PyTorch's init) with E on the image pooled, by halves, until
    # the bridge saves at most sized's RICH_LIMIT (thin if even the boundary's grid won't).
    def pooled_bridge(target, sources, image):
        recent = sized.paper_saved_values(target, sources, None)
        grid = image
        while image is not None:
            if recent + sized.paper_saved_values(target, [], grid) <= sized.RICH_LIMIT:
                break
            if grid.height // 2 < target.height or grid.width // 2 < target.width:
                return thin_bridge(target, sources, image)
            grid = Geometry(image.layout, image.channels, grid.height // 2, grid.width // 2)
        if recent > sized.RICH_LIMIT:
            return thin_bridge(target, sources, image)
        encoder = None
        if image is not None:
            pooled = paper.ImageEncoder(grid, target, init=None)
            encoder = nn.Sequential(pool_to(image, grid), pooled)
        return Bridge([paper.BoundaryEncoder(g, target, None) for g in sources], encoder)

    # E pooled early: its first conv on the full image, then pooled to the boundary's
    # grid, its second conv there (the paper's runs both at full resolution, then pools).
    class PooledImageEncoder(nn.Sequential):
        def __init__(self, image, target, hidden=paper.IMAGE_HIDDEN):
            super().__init__(
                nn.Conv2d(image.channels, hidden, 3, padding=1, bias=True),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
                pool_to(image, target),
                nn.Conv2d(hidden, target.channels, 3, padding=1, bias=True),
                nn.BatchNorm2d(target.channels),
                nn.ReLU(inplace=True),
                FromMap(target),
            )

    # sized, with every paper's E pooled early (it cuts a third of the 32 px aux FLOPs).
    # The paper's E is built and then replaced, as in the stored runs: their initial
    # weights came from those random draws.
    def pooled_e_bridge(target, sources, image):
        built = sized.build_bridge(target, sources, image)
        if isinstance(built, Bridge) and image is not None:
            built.image = PooledImageEncoder(image, target)
        return built

    # sized, with E pooled early where only that fits the limit (resnet18 at 64 px).
    def tiered_e_bridge(target, sources, image):
        if sized.paper_recent_macs(target, sources) <= sized.RECENT_LIMIT and image is not None:
            values = sized.paper_saved_values(target, sources, None)
            hidden, grid = paper.IMAGE_HIDDEN, target.height * target.width
            values += (image.channels + 2 * hidden) * image.height * image.width
            values += (hidden + 2 * target.channels) * grid  # pooled map, conv, BN-ReLU
            if sized.paper_saved_values(target, sources, image) > sized.RICH_LIMIT >= values:
                recent = [paper.BoundaryEncoder(g, target, init=None) for g in sources]
                return Bridge(recent, PooledImageEncoder(image, target))
        return sized.build_bridge(target, sources, image)

    thin_decoder, paper_decoder = scaled.ReconstructionDecoder, paper.ReconstructionDecoder
    for name, bridge, head, decoder in (
        ("scaled+quarterC", quarter_bridge, thin_head, thin_decoder),
        ("paperheads+pooledE", pooled_bridge, paper_heads, thin_decoder),
        ("scaledheads+pooledE", pooled_bridge, thin_head, thin_decoder),
        ("paper-0.1", old_bridge, old_head, paper_decoder),
        # sized before it took the paper's heads where they are cheap
        ("sized-scaledheads", sized.build_bridge, thin_head, thin_decoder),
        ("sized+poolE", pooled_e_bridge, sized.build_head, thin_decoder),
        ("sized+tieredE", tiered_e_bridge, sized.build_head, thin_decoder),
        ("heads:scaled+bridges:paper-0.1", old_bridge, thin_head, thin_decoder),
        ("heads:paper-0.1+bridges:scaled", thin_bridge, old_head, paper_decoder),
        ("heads:scaled+bridges:paper", paper.build_bridge, thin_head, thin_decoder),
        ("heads:paper+bridges:scaled", thin_bridge, paper.build_head, paper_decoder),
    ):
        register_design(AuxDesign(name, bridge, head, decoder))


def paper_cuts(k: int) -> list[str]:
    """ResNet-32's cuts in the paper's tables (the T2 recipe)."""
    from contsup.recipes import load_recipe

    runs = dict(load_recipe(RECIPES / "t2_resnet32_cifar10.yaml").runs)
    return runs[f"K{k}-R1E-softmax"]["cuts"]


def _row(suite: str, budget: dict, net: dict, name: str, k: int, context: str, aux: str, **more):
    row = dict(suite=suite, **budget, **net, name=name, k=k, context=context, aux=aux)
    return {"amp": "bf16", "channels_last": True, **row, **more}


def suites() -> dict[str, list[dict]]:
    def yardstick(suite: str, budget: dict) -> list[dict]:
        rows = [_row(suite, budget, RESNET32, "E2E", 1, "R0", "scaled")]
        for aux in ("sized", "scaled", "paper"):
            for context in ("R0", "R1E"):
                rows.append(_row(suite, budget, RESNET32, f"K16 {context} {aux}", 16, context, aux))
        return rows

    def momentum(suite: str, budget: dict, context: str) -> dict:
        """The default's K=16 row with momentum heads; context rows pair with its R0."""
        baseline = {"baseline": f"{suite}/K16 R0 sized momentum0.99"} if context != "R0" else {}
        name = f"K16 {context} sized momentum0.99"
        return _row(
            suite, budget, RESNET32, name, 16, context, "sized", momentum_heads=0.99, **baseline
        )

    wide = [
        *(_row("wide", QUICK, RESNET32, f"K16 {c} scaled", 16, c, "scaled") for c in ("E", "R1")),
        *(
            _row("wide", QUICK, RESNET32, f"K{k} {c} scaled", k, c, "scaled")
            for k in (4, 8)
            for c in ("R0", "R1E")
        ),
        *(
            _row("wide", QUICK, RESNET18_64, f"resnet18@64 K8 {c} {aux}", 8, c, aux)
            for aux in ("scaled", "paper")
            for c in ("R0", "R1E")
        ),
        *(
            _row("wide", QUICK, RESNET18_64, f"resnet18@64 K8 R1E {aux}", 8, "R1E", aux,
                 baseline="wide/resnet18@64 K8 R0 scaled")
            for aux in ("scaled+paperlike", "scaled+quarterC", "scaledheads+pooledE")
        ),
        *(
            _row("wide", QUICK, RESNET18_64, f"resnet18@64 K8 {c} paperheads+pooledE", 8, c,
                 "paperheads+pooledE")
            for c in ("R0", "R1E")
        ),
    ]  # fmt: skip
    variants = [
        "scaled-0.2",
        "heads:scaled+bridges:paper",
        "heads:paper+bridges:scaled",
        "scaled+e3x3",
        "scaled+fullgrid",
        "scaled+bn",
        "scaled+allC",
        "scaled+nogain",
        "scaled+allC+nogain",
    ]
    ablation = [
        _row("ablation", QUICK, RESNET32, f"K16 R1E {v}", 16, "R1E", v,
             baseline=f"quick/K16 R0 {'paper' if v.startswith('heads:paper') else 'scaled'}")
        for v in variants
    ]  # fmt: skip
    # Beyond the ablation: normalised context over all channels, more sources, and
    # the reconstruction decoder (the paper's K=16 CIFAR-10 loss scales) under both.
    explore = [
        _row("explore", {**QUICK, "seeds": [0, 1, 2]}, RESNET32, name, 16, context, aux,
             baseline=baseline, **more)
        for name, context, aux, baseline, more in (
            ("K16 R1E scaled+allC+bn", "R1E", "scaled+allC+bn", "quick/K16 R0 scaled", {}),
            ("K16 R2E scaled", "R2E", "scaled", "quick/K16 R0 scaled", {}),
            ("K16 R0 scaled+decoder", "R0", "scaled", None, {"decoder": DECODER}),
            ("K16 R1E scaled+decoder", "R1E", "scaled", "explore/K16 R0 scaled+decoder",
             {"decoder": DECODER}),
        )
    ]  # fmt: skip
    # The bridges changed, with the default's heads: the paper's init alone on the thin
    # ones, the paper's pooled first, and a band a quarter of C wide (16 on all of
    # ResNet-32's boundaries, as scaled's).
    bridges = [
        _row("bridges", {**QUICK, "seeds": [0, 1, 2]}, RESNET32, f"K16 R1E {v}", 16, "R1E", v,
             baseline="quick/K16 R0 scaled")
        for v in ("scaled+paperinit", "scaled+paperlike", "scaled+quarterC")
    ]  # fmt: skip
    fp32 = [
        _row("precision", {**QUICK, "seeds": [0]}, RESNET32, f"K16 {c} scaled", 16, c, "scaled",
             amp=None, channels_last=False)
        for c in ("R0", "R1E")
    ]  # fmt: skip
    return {
        "core": [
            *yardstick("core", CORE),
            # The best local configuration measured: the default with momentum heads,
            # its R0, and more context sources (the paper's Table 4 goes to R16).
            *(momentum("core", CORE, c) for c in ("R0", "R1E", "R2E", "R4E")),
            # The default's R1E in float32, against the bf16 rows above.
            _row(
                "core",
                CORE,
                RESNET32,
                "K16 R1E sized momentum0.99 fp32",
                16,
                "R1E",
                "sized",
                baseline="core/K16 R0 sized momentum0.99",
                momentum_heads=0.99,
                amp=None,
                channels_last=False,
            ),
            _row(
                "core",
                CORE,
                RESNET32,
                "K16 R1E sized+poolE momentum0.99",
                16,
                "R1E",
                "sized+poolE",
                baseline="core/K16 R0 sized momentum0.99",
                momentum_heads=0.99,
            ),
            _row(
                "core",
                CORE,
                RESNET32,
                "K16 R1E scaled+paperlike",
                16,
                "R1E",
                "scaled+paperlike",
                baseline="core/K16 R0 scaled",
            ),  # fmt: skip
            *(
                _row("core", CORE, RESNET32, f"K16 {c} paper-0.1", 16, c, "paper-0.1")
                for c in ("R0", "R1E")
            ),
            _row(
                "core",
                CORE,
                RESNET32,
                "K16 R1E sized-scaledheads",
                16,
                "R1E",
                "sized-scaledheads",
                baseline="core/K16 R0 scaled",
            ),
            # sized before it took PyTorch's default init: the same modules at 32 px.
            _row(
                "core",
                CORE,
                RESNET32,
                "K16 R1E heads:scaled+bridges:paper",
                16,
                "R1E",
                "heads:scaled+bridges:paper",
            ),
            # The thin heads' R0 with the widths sized by the boundary: the best R0 of
            # any head design, the default's R1E must beat (scaled's rows ran before).
            *(
                _row(
                    "core",
                    CORE,
                    RESNET32,
                    f"K16 {c} scaled (boundary widths)",
                    16,
                    c,
                    "scaled",
                    baseline="core/K16 R0 scaled (boundary widths)",
                )
                for c in ("R0", "R1E")
            ),
        ],
        "quick": [
            *yardstick("quick", QUICK),
            # scaled's rows above ran with its fixed widths; these with the widths sized
            # by the boundary (narrower heads on <= 8x8 at 28 px, E on half the grid).
            *(
                _row(
                    "quick",
                    QUICK,
                    RESNET32,
                    f"K16 {c} scaled (boundary widths)",
                    16,
                    c,
                    "scaled",
                    baseline="quick/K16 R0 scaled (boundary widths)",
                )
                for c in ("R0", "R1E")
            ),
        ],  # fmt: skip
        "wide": wide,
        "ablation": ablation,
        "precision": fp32,
        "explore": explore,
        "bridges": bridges,
        "losses": [
            _row(
                "losses",
                {**QUICK, "seeds": [0, 1, 2]},
                RESNET32,
                f"K16 {c} scaled {tag}",
                16,
                c,
                "scaled",
                **more,
                **({"baseline": f"losses/K16 R0 scaled {tag}"} if c == "R1E" else {}),
            )
            for tag, more in (("0c1f", {"head": "0c1f"}), ("contrast", {"local_loss": "contrast"}))
            for c in ("R0", "R1E")
        ],
        "c305389": [
            _row(
                "c305389",
                {**QUICK, "seeds": [0, 1, 2]},
                RESNET32,
                f"K16 {c} paper-0.1",
                16,
                c,
                "paper-0.1",
            )
            for c in ("R0", "R1E")
        ]
        + [
            _row(
                "c305389",
                {**QUICK, "seeds": [0, 1, 2]},
                RESNET32,
                "K16 R1E heads:scaled+bridges:paper-0.1",
                16,
                "R1E",
                "heads:scaled+bridges:paper-0.1",
                baseline="quick/K16 R0 scaled",
            ),
            _row(
                "c305389",
                {**QUICK, "seeds": [0, 1, 2]},
                RESNET32,
                "K16 R1E heads:paper-0.1+bridges:scaled",
                16,
                "R1E",
                "heads:paper-0.1+bridges:scaled",
                baseline="c305389/K16 R0 paper-0.1",
            ),
        ],
        "long": [
            _row("long", LONG, RESNET32, name, k, c, aux)
            for name, k, c, aux in (
                ("K16 R0 scaled", 16, "R0", "scaled"),
                ("K16 R1E scaled", 16, "R1E", "scaled"),
                ("E2E", 1, "R0", "scaled"),
            )
        ]
        # The default (momentum heads on) trained three times as long: is the gap to
        # end-to-end one of convergence speed?
        + [momentum("long", LONG, c) for c in ("R0", "R1E")],
        # Twice as long again: how the gap to end-to-end depends on the budget.
        # R1E first: it takes longest.
        "longer": [
            momentum("longer", LONGER, "R1E"),
            _row("longer", LONGER, RESNET32, "E2E", 1, "R0", "scaled"),
            momentum("longer", LONGER, "R0"),
        ],
        # Closing the gap to end-to-end with the default modules: the local rows' own
        # learning rate, InfoPro's reconstruction decoder, heads that borrow the next
        # segment (quick budget); and end-to-end for resnet18 at 64 px.
        "gap": [
            *(
                _row(
                    "gap",
                    QUICK,
                    {**RESNET32, "lr": lr},
                    f"K16 R1E sized lr{lr}",
                    16,
                    "R1E",
                    "sized",
                    baseline="quick/K16 R0 sized",
                )
                for lr in (0.05, 0.2)
            ),
            _row(
                "gap",
                QUICK,
                RESNET32,
                "K16 R1E sized+decoder",
                16,
                "R1E",
                "sized",
                baseline="quick/K16 R0 sized",
                decoder=DECODER,
            ),
            _row("gap", QUICK, RESNET18_64, "resnet18@64 E2E", 1, "R0", "sized"),
            _row("gap", QUICK, RESNET18_64, "resnet18@64 K8 R0 sized", 8, "R0", "sized"),
            *(
                _row(
                    "gap",
                    QUICK,
                    RESNET18_64,
                    f"resnet18@64 K8 {c} sized momentum0.99",
                    8,
                    c,
                    "sized",
                    baseline="gap/resnet18@64 K8 R0 sized momentum0.99" if c == "R1E" else None,
                    momentum_heads=0.99,
                )
                for c in ("R0", "R1E")
            ),
            _row(
                "gap",
                QUICK,
                RESNET18_64,
                "resnet18@64 K8 R1E sized+tieredE momentum0.99",
                8,
                "R1E",
                "sized+tieredE",
                baseline="gap/resnet18@64 K8 R0 sized momentum0.99",
                momentum_heads=0.99,
            ),
            _row(
                "gap",
                QUICK,
                RESNET18_64,
                "resnet18@64 K8 R1E sized",
                8,
                "R1E",
                "sized",
                baseline="gap/resnet18@64 K8 R0 sized",
            ),
            # Each head looks through a moving average of the next segment (momentum heads).
            *(
                _row(
                    "gap",
                    QUICK,
                    RESNET32,
                    f"K16 {c} sized momentum0.99",
                    16,
                    c,
                    "sized",
                    baseline="quick/K16 R0 sized",
                    momentum_heads=0.99,
                )
                for c in ("R0", "R1E")
            ),
            # How fast the shadow follows: 0 copies the live segment every step.
            *(
                _row(
                    "gap",
                    QUICK,
                    RESNET32,
                    f"K16 R1E sized momentum{decay}",
                    16,
                    "R1E",
                    "sized",
                    baseline="quick/K16 R0 sized",
                    momentum_heads=decay,
                )
                for decay in (0.9, 0.0)
            ),
        ],  # fmt: skip
    }


def cuts_for(row: dict) -> list[str] | None:
    """The paper's cuts for ResNet-32; for other models, where R1E's memory balance cuts.

    Balancing counts the aux modules, so R0 alone would cut elsewhere, and a
    comparison across cut sets measures the cuts more than the context.
    """
    if row["k"] == 1:
        return None
    if row["model"] == "resnet32":
        return paper_cuts(row["k"])
    import timm
    import torch

    from contsup.data import parse_dataset
    from contsup.learner import wrap

    info, _ = parse_dataset(row["dataset"])
    with torch.device("meta"):
        model = timm.create_model(row["model"], num_classes=10, in_chans=info.image_size[0])
    x = torch.empty(row["batch_size"], *info.image_size, device="meta")
    # The thin bridges price the cuts for every row (and did before sized existed).
    learner = wrap(
        model, row["k"], context="R1E", aux="scaled", objective="memory", example_input=x
    )
    return [b.tensors[0].node for b in learner.partition.boundaries]


def run_row(row: dict, seed: int, work: str) -> dict:
    """Train one row at one seed in this (one-thread) process; its final and per-epoch figures."""
    import torch

    torch.set_num_threads(1)
    register_variants()
    from contsup.metrics import read_metrics
    from contsup.trainer import TrainConfig, train

    out = Path(work) / f"{row['suite']}-{row['name'].replace(' ', '_').replace(':', '_')}-{seed}"
    config = TrainConfig(
        model=row["model"],
        k=row["k"],
        cuts=cuts_for(row),
        context=row["context"],
        aux=row["aux"],
        head=row.get("head", "1c2f"),
        local_loss=row.get("local_loss", "ce"),
        objective="memory",
        dataset=row["dataset"],
        train_images=row["train_images"],
        epochs=row["epochs"],
        batch_size=row["batch_size"],
        lr=row["lr"],
        device="cpu",
        amp=row["amp"],
        channels_last=row["channels_last"],
        decoder=row.get("decoder"),
        momentum_heads=row.get("momentum_heads"),
        seed=seed,
        out=str(out),
        tensorboard=False,
        threads=1,  # the trainer would take the idle cores, and runs repeat per thread count
    )
    started = time.perf_counter()
    train(config)
    seconds = time.perf_counter() - started
    metrics = read_metrics(out)
    return {
        "seed": seed,
        "seconds": seconds,
        "test_accuracy": metrics[-1].test_accuracy,
        "curve": [m.test_accuracy for m in metrics],
        "head_accuracies": metrics[-1].head_test_accuracies,
    }


def paired(rows: dict[str, dict], name: str, baseline: str) -> tuple[float, float, list[float]]:
    """Mean and 95% half-interval of ``name`` - ``baseline`` over their common seeds, in points."""
    a = {s["seed"]: s["test_accuracy"] for s in rows[name]["seeds"]}
    b = {s["seed"]: s["test_accuracy"] for s in rows[baseline]["seeds"]}
    diffs = [100 * (a[s] - b[s]) for s in sorted(a) if s in b]
    if len(diffs) < 2:
        return (diffs[0] if diffs else math.nan), math.nan, diffs
    half = T95.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return statistics.mean(diffs), half, diffs


def baseline_of(row: dict, rows: dict[str, dict]) -> str | None:
    """The R0 row a row is compared with: same suite, K and model; the same aux design
    if that R0 exists, else the scaled one."""
    if "baseline" in row:
        return row["baseline"] if row["baseline"] in rows else None
    if row["context"] == "R0":
        return None
    prefix = row["name"].split(f" {row['context']} ")[0]
    for aux in (row["aux"], "scaled"):
        name = f"{row['suite']}/{prefix} R0 {aux}"
        if name in rows:
            return name
    return None


def markdown(rows: dict[str, dict]) -> str:
    stamps = sorted({r["measured"] for r in rows.values()})
    lines = [f"Measured {'; '.join(stamps)}.", ""]
    for suite in suites():
        members = [r for key, r in rows.items() if key.startswith(f"{suite}/")]
        if not members:
            continue
        first = members[0]
        seeds = sorted({s["seed"] for r in members for s in r["seeds"]})
        lines += [
            f"### {suite}: {first['train_images']:,} training images, {first['epochs']} epochs, "
            f"seeds {', '.join(map(str, seeds))} (each row lists its own), "
            "all 10,000 test images",
            "",
            "| row | mean | sd | per seed | vs R0 (paired, points) | 95% interval "
            "| per epoch (mean) | time / run |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in members:
            accuracies = [100 * s["test_accuracy"] for s in r["seeds"]]
            sd = statistics.stdev(accuracies) if len(accuracies) > 1 else math.nan
            base = baseline_of(r, rows)
            versus = interval = ""
            if base is not None:
                mean, half, diffs = paired(rows, f"{suite}/{r['name']}", base)
                versus = f"{mean:+.2f} ({', '.join(f'{d:+.2f}' for d in diffs)})"
                interval = f"[{mean - half:+.2f}, {mean + half:+.2f}]" if half == half else ""
            curve = [statistics.mean(c) for c in zip(*(s["curve"] for s in r["seeds"]))]
            seconds = statistics.mean(s["seconds"] for s in r["seeds"])
            mark = " *" if "ran_as" in r else ""
            lines.append(
                f"| {r['name']}{mark} | {statistics.mean(accuracies):.2f} | "
                f"{'' if math.isnan(sd) else f'{sd:.2f}'} | "
                f"{', '.join(f'{a:.2f}' for a in accuracies)} | {versus} | {interval} | "
                f"{' '.join(f'{100 * c:.1f}' for c in curve)} | {seconds:.0f} s |"
            )
        lines += ["", *(f"\\* {r['name']}: {r['ran_as']}" for r in members if "ran_as" in r)]
        lines.append("")
    return "\n".join(lines)


def plot(rows: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [s for s in ("core", "quick") if any(k.startswith(f"{s}/") for k in rows)]
    if not shown:
        return
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4.2), squeeze=False)
    for axis, suite in zip(axes[0], shown):
        for key, r in rows.items():
            if key.startswith(f"{suite}/"):
                curve = [100 * statistics.mean(c) for c in zip(*(s["curve"] for s in r["seeds"]))]
                axis.plot(range(1, len(curve) + 1), curve, marker="o", label=r["name"])
        axis.set(
            xlabel="epoch", ylabel="test accuracy (%)", title=f"ResNet-32, Fashion-MNIST, {suite}"
        )
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_rows(path: Path) -> dict[str, dict]:
    saved = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    return saved["rows"] if isinstance(saved["rows"], dict) else {}  # lists: contsup < 0.3


def save_rows(path: Path, rows: dict[str, dict]) -> None:
    """Merge ``rows`` into the file as it is now: suites may run in parallel processes."""
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps({"rows": {**load_rows(path), **rows}}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", nargs="*", default=["quick"], help="suites to run")
    parser.add_argument("--only", nargs="*", help="row names to run (default: all of the suite)")
    parser.add_argument(
        "--seeds",
        nargs="*",
        type=int,
        help="seeds to run (default: the suite's); added to a row's saved seeds",
    )
    parser.add_argument("--jobs", type=int, default=2, help="processes, one thread each")
    parser.add_argument("--list", action="store_true", help="print the suites and rows")
    parser.add_argument("--report", action="store_true", help="only rewrite the .md and .png")
    args = parser.parse_args()
    table = suites()
    if args.list:
        for suite, rows in table.items():
            print(suite, *(f"  {r['name']}" for r in rows), sep="\n")
        return
    path = RESULTS / "learning_cpu.json"
    results = load_rows(path)
    todo = [] if args.report else [
        r for s in args.suite for r in table[s] if not args.only or r["name"] in args.only
    ]  # fmt: skip
    if args.seeds:
        todo = [{**r, "seeds": args.seeds} for r in todo]
    os.environ["OMP_NUM_THREADS"] = "1"  # before the workers start
    with tempfile.TemporaryDirectory() as work, ProcessPoolExecutor(args.jobs) as pool:
        futures = {
            (r["suite"], r["name"], seed): (r, pool.submit(run_row, r, seed, work))
            for r in todo
            for seed in r["seeds"]
        }
        done: dict[str, list] = {}
        for (suite, name, _), (row, future) in futures.items():
            key = f"{suite}/{name}"
            done.setdefault(key, []).append(future.result())
            if len(done[key]) == len(row["seeds"]):
                import torch

                saved = load_rows(path).get(key, {}).get("seeds", [])
                kept = [s for s in saved if s["seed"] not in row["seeds"]]
                results[key] = {
                    **row,
                    "seeds": sorted(kept + done[key], key=lambda s: s["seed"]),
                    "measured": f"{datetime.date.today()}, torch {torch.__version__}, "
                    "1 CPU thread per run",
                }
                print(key, [round(100 * s["test_accuracy"], 2) for s in done[key]], flush=True)
                save_rows(path, {key: results[key]})
    results = load_rows(path)
    order = [f"{r['suite']}/{r['name']}" for rows in table.values() for r in rows]
    results = {
        k: results[k] for k in sorted(results, key=lambda k: order.index(k) if k in order else 1e9)
    }
    (RESULTS / "learning_cpu.md").write_text(markdown(results))
    plot(results, RESULTS / "learning_cpu.png")
    print(markdown(results))


if __name__ == "__main__":
    main()
