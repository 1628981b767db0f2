"""pipeline.analysis and ``gat analyze`` on the tiny real parts (tests/eval_helpers.py): a
trained GAT-T1/4, an AutoencoderKL, the FD-classifier, a Dinov2Model teacher, D from a
checkpoint, real latents from shards, and LPIPS with weights the test makes itself."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from gat.models import build_models
from pipeline import analysis as pa
from pipeline.cli import main
from pipeline.layout import Layout
from tests.eval_helpers import CLASSES, LATENT, SIZE, save_generator_dir
from tests.helpers import make_synthetic_shards

SMALL = {"samples": 8, "per_class": 4, "k": 3}  # 2 classes x 4 z


@pytest.fixture(scope="module")
def extras(tmp_path_factory, parts):
    """A teacher folder, real latent shards, D checkpoints and LPIPS weight files."""
    from torchvision.models import vgg16
    from transformers import Dinov2Config, Dinov2Model

    root = tmp_path_factory.mktemp("analysis")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=48, patch_size=8, image_size=32)
                ).save_pretrained(root / "teacher")
    make_synthetic_shards(root, samples=64, shard_size=32, classes=CLASSES,
                          latent=(LATENT[0], LATENT[1], LATENT[1]))
    _, disc = build_models(SIZE, LATENT[0], LATENT[1], CLASSES, teacher_dim=8)
    g_ema = torch.load(parts["generator"] / "generator.pt", weights_only=True)
    torch.save({"D": disc.state_dict(), "G_ema": g_ema, "step": torch.tensor(2)},
               root / "state.pt")
    # LPIPS files in the formats users have: torchvision's whole VGG16 (random features;
    # its classifier, 0.5 GB and unused by LPIPS, as zeros of one stored element each: the
    # file stays small, torchvision's strict load still checks every key and shape) and
    # lpips's lin0..lin4.
    state = {k: v if k.startswith("features.") else torch.zeros(()).expand(v.shape)
             for k, v in vgg16().state_dict().items()}
    torch.save(state, root / "vgg16.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1)
                for i, c in enumerate((64, 128, 256, 512, 512))}, root / "lin.pth")
    return {"root": root, "teacher": root / "teacher", "shards": root / "data/shards/train",
            "state": root / "state.pt", "vgg": root / "vgg16.pth", "lin": root / "lin.pth"}


def _in_range(values, lo: float, hi: float) -> bool:
    return all(v is not None and math.isfinite(v) and lo <= v <= hi for v in values)


def test_analyze_one_generator_numbers_in_range_and_figures(parts, extras, tmp_path):
    p = pa.load_parts(str(parts["tokenizer"]), "train", str(parts["classifier"]),
                      str(extras["teacher"]), shards=extras["shards"])
    out = tmp_path / "out"
    summary = pa.analyze([pa.Subject(parts["generator"], checkpoint=extras["state"],
                                     mng="exp")], out, p, seed=3, layout=Layout(tmp_path,
                                                                                tmp_path),
                         **SMALL)
    assert json.loads((out / pa.ANALYSIS_FILE).read_text()) == summary
    (r,) = summary["generators"]
    assert r["depth"] == 2 and r["samples"] == 8 and r["classes"] == [0, 3]
    assert r["contribution"]["distance"] == "classifier-feature distance (not LPIPS)"
    for key in ("contribution", "io_cosine", "cross_z_cosine"):
        assert len(r[key]["mean"]) == 2
    assert _in_range(r["contribution"]["mean"], 0, math.inf)
    assert _in_range(r["io_cosine"]["mean"] + r["cross_z_cosine"]["mean"], -1, 1 + 1e-9)
    d = r["discriminator"]
    assert d["how"] == "given" and d["step"] == 2 and d["matches_generator"] is True
    assert r["mng"] == "exp" and r["mng_source"] == "given"
    ck = r["cknna"]
    assert ck["k"] == 3 and "8 latents" in ck["real"]
    for key in ("g_fake", "d_fake", "d_real"):  # one value per block of G or D
        assert len(ck[key]) == 2 and _in_range(ck[key], -1, 1 + 1e-6), (key, ck[key])
    for name in ("contributions.png", "similarity.png", "cknna.png", "pca_0.png"):
        assert (out / name).stat().st_size > 1000
    assert not (out / "compare.png").exists()


def test_d_defaults_to_the_runs_last_ray_checkpoint(parts, extras, tmp_path):
    from gat.io import load_generator
    from pipeline.training.checkpoint import seal

    gen, meta = load_generator(parts["generator"])
    layout = Layout(tmp_path, tmp_path)
    disc, info = pa.load_discriminator(gen, meta, None, layout)
    assert disc is None and "give --checkpoint" in info["skipped"]
    run = layout.checkpoints(SIZE) / meta["run_key"]
    for step in (1, 2):  # Ray's checkpoint folders, sealed as training seals them
        folder = run / f"checkpoint_00000{step}"
        folder.mkdir(parents=True)
        (folder / "state.pt").write_bytes(extras["state"].read_bytes())
        seal(folder, step)
    unsealed = run / "checkpoint_000003"  # a torn copy: never the newest
    unsealed.mkdir()
    (unsealed / "state.pt").write_bytes(extras["state"].read_bytes())
    disc, info = pa.load_discriminator(gen, meta, None, layout)
    assert disc is not None and info["path"].endswith("checkpoint_000002/state.pt")
    assert "last Ray checkpoint (step 2)" in info["how"]
    _, info = pa.load_discriminator(gen, meta, run, layout)  # a run folder given
    assert "newest checkpoint (step 2)" in info["how"]
    assert pa.load_discriminator(gen, meta, "none")[0] is None
    with pytest.raises(FileNotFoundError, match=r"state\.pt, a Ray checkpoint"):
        pa.load_discriminator(gen, meta, tmp_path / "nowhere", layout)
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="holds no discriminator"):
        pa.load_discriminator(gen, meta, tmp_path / "other.pt", layout)


def test_lpips_from_files_the_user_gives(extras, tmp_path):
    lpips = pa.lpips_from_files(extras["vgg"], extras["lin"])
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (3, 3, 32, 32), generator=g, dtype=torch.uint8)
    b = torch.randint(0, 256, (3, 3, 32, 32), generator=g, dtype=torch.uint8)
    assert torch.equal(lpips(a, a), torch.zeros(3))
    assert torch.all(lpips(a, b) > 0)
    assert torch.allclose(lpips(a, b), lpips(b, a))
    near = (a.int() + 8).clamp(0, 255).to(torch.uint8)
    assert torch.all(lpips(a, near) < lpips(a, b))  # a small change is a small distance
    with pytest.raises(FileNotFoundError, match="--lpips-lin"):
        pa.lpips_from_files(extras["vgg"], tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="--lpips-vgg"):
        pa.lpips_from_files(extras["lin"], extras["lin"])


def test_gat_analyze_compares_two_generators_with_lpips(parts, extras, tmp_path, capsys):
    second = save_generator_dir(tmp_path / "second", steps=1)
    out = tmp_path / "out"
    rc = main(["analyze", "--generator", str(parts["generator"]), "--compare", str(second),
               "--label", "MNG exp", "--compare-label", "w/o MNG", "--decoder",
               str(parts["tokenizer"]), "--classifier", str(parts["classifier"]),
               "--teacher", "none", "--lpips-vgg", str(extras["vgg"]), "--lpips-lin",
               str(extras["lin"]), "--samples", "4", "--per-class", "4", "--out", str(out),
               "--cpu"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / pa.ANALYSIS_FILE).read_text())
    assert [r["label"] for r in summary["generators"]] == ["MNG exp", "w/o MNG"]
    assert summary["settings"]["distance"] == "LPIPS (VGG16)"
    first, other = summary["generators"]
    assert first["contribution"]["mean"] != other["contribution"]["mean"]
    assert first["cknna"] == {"skipped": "no teacher given"}
    for name in ("compare.png", "contributions.png", "similarity.png", "pca_0.png",
                 "pca_1.png"):
        assert (out / name).exists(), name
    assert not (out / "cknna.png").exists()
    assert "LPIPS (VGG16)" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--generator", "/no/such/generator"], "generator folder /no/such/generator does not"),
    (["--lpips-vgg", "x.pth"], "needs both --lpips-vgg and --lpips-lin"),
    (["--classifier", "/no/classifier"], "--classifier /no/classifier: no FD-classifier"),
    (["--samples", "3"], "CKNNA needs >= 4 samples"),
])
def test_gat_analyze_says_what_is_wrong(parts, tmp_path, capsys, args, message):
    base = {"--generator": str(parts["generator"]), "--decoder": str(parts["tokenizer"]),
            "--classifier": str(parts["classifier"]), "--teacher": "none",
            "--out": str(tmp_path / "out")}
    base.update(dict(zip(args[::2], args[1::2])))
    assert main(["analyze", *[x for kv in base.items() for x in kv], "--cpu"]) == 2
    assert message in capsys.readouterr().err
    assert not Path(tmp_path / "out").exists()
