"""Pretrained-part loaders: real architectures saved locally load offline through them."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import TokenizerParams
from pipeline.pretrained.classifier import Classifier, load_classifier, save_classifier
from pipeline.pretrained.common import resolve_source
from pipeline.pretrained.teacher import load_teacher
from pipeline.pretrained.tokenizer import load_tokenizer, measure_scale_factor, small_autoencoder


def test_sd_vae_architecture_loads_offline_with_its_scale_factor(tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # SD-VAE's architecture (stabilityai/sd-vae-ft-ema config), random weights.
    sd_vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
        sample_size=256, scaling_factor=0.18215)
    assert sum(p.numel() for p in sd_vae.parameters()) == pytest.approx(83.65e6, rel=0.01)
    sd_vae.save_pretrained(tmp_path / "sd-vae")
    tok = load_tokenizer(str(tmp_path / "sd-vae"))
    assert tok.scale_factor == pytest.approx(0.18215)
    mean, std = tok.encode(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8))
    assert mean.shape == std.shape == (1, 4, 8, 8)  # f8, as for 256px -> 32x32
    assert tok.decode(mean * tok.scale_factor).shape == (1, 3, 64, 64)


def test_dinov2_loads_offline_and_gives_cls_and_patch_tokens(tmp_path, monkeypatch):
    from transformers import Dinov2Config, Dinov2Model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    Dinov2Model(Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                             intermediate_size=96, patch_size=14, image_size=56)
                ).save_pretrained(tmp_path / "dino")
    teacher = load_teacher(str(tmp_path / "dino"))
    tokens = teacher.tokens(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert tokens.shape == (2, 1 + 4 * 4, 48)  # resized to 56 px: a 4x4 grid of 14 px
    # DINOv2's own config says 518 px; REPA feeds 224 px: a 16x16 grid, 257 tokens.
    Dinov2Model(Dinov2Config(hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=48, patch_size=14, image_size=518)
                ).save_pretrained(tmp_path / "dino518")
    teacher = load_teacher(str(tmp_path / "dino518"))
    assert teacher.image_size == 224 and teacher.num_tokens == 257
    tokens = teacher.tokens(torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8))
    assert tokens.shape == (1, 257, 24)
    assert load_teacher(str(tmp_path / "dino518"), input_size=112).num_tokens == 1 + 8 * 8


def test_hub_id_offline_fails_with_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="Offline, give a local directory"):
        load_tokenizer("stabilityai/sd-vae-ft-ema")


def test_classifier_roundtrip(tmp_path):
    model = Classifier(num_classes=5).eval()
    save_classifier(model, tmp_path / "clf")
    loaded = load_classifier(str(tmp_path / "clf"))
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    feats, logits = loaded.features_and_logits(x)
    assert feats.shape == (3, 128) and logits.shape == (3, 5)
    torch.testing.assert_close(logits, model(x)[1])


def test_missing_stand_in_says_which_stage_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run its DVC stage first"):
        resolve_source("train", tmp_path / "nothing")
    assert resolve_source("stabilityai/sd-vae-ft-ema", tmp_path) == "stabilityai/sd-vae-ft-ema"


def test_measured_scale_factor_gives_unit_variance():
    torch.manual_seed(0)
    vae = small_autoencoder(TokenizerParams(block_out_channels=[8, 16])).eval()
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    scale = measure_scale_factor(vae, images)
    with torch.no_grad():
        latents = vae.encode(images.float() / 127.5 - 1).latent_dist.sample() * scale
    assert latents.std().item() == pytest.approx(1.0, abs=0.05)


_COMMITS = ("1111111111111111111111111111111111111111", "2222222222222222222222222222222222222222")


def _hub_cache(cache, repo: str, models: list) -> None:
    """A Hugging Face hub cache holding ``repo`` at two commits (``main`` -> the first), as
    a download leaves it: models--ORG--NAME/{refs/main, snapshots/<commit>/...}."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    for commit, model in zip(_COMMITS, models):
        model.save_pretrained(folder / "snapshots" / commit)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(_COMMITS[0])


def test_revision_reaches_from_pretrained_through_the_hub_cache(tmp_path):
    """tokenizer.revision / teacher.revision select the commit of a hub id: a real hub
    cache with two commits, read offline by diffusers and transformers in a fresh process
    (their cache location is fixed at import)."""
    import subprocess
    import sys

    from transformers import Dinov2Config, Dinov2Model

    from pipeline.config import TokenizerParams
    from tests.helpers import REPO, dvc_env

    cache = tmp_path / "hub"
    _hub_cache(cache, "gat-test/vae", [small_autoencoder(TokenizerParams(
        block_out_channels=[8, 16], latent_channels=c)) for c in (4, 6)])
    _hub_cache(cache, "gat-test/dino", [Dinov2Model(Dinov2Config(
        hidden_size=h, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        patch_size=8, image_size=32)) for h in (8, 12)])
    script = (
        "from pipeline.pretrained.teacher import load_teacher\n"
        "from pipeline.pretrained.tokenizer import load_tokenizer\n"
        f"for rev in ('', '{_COMMITS[0]}', '{_COMMITS[1]}'):\n"
        "    tok = load_tokenizer('gat-test/vae', scale_factor=1.0, revision=rev)\n"
        "    print(tok.vae.config.latent_channels, load_teacher('gat-test/dino', "
        "revision=rev).dim)\n"
        "try:\n"
        "    load_teacher('gat-test/dino', revision='3' * 40)\n"
        "except OSError as err:\n"
        "    print('refused:', err)\n")
    env = {**dvc_env(), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[:3] == ["4 8", "4 8", "6 12"], done.stdout  # default = main, then each commit
    assert lines[3].startswith("refused: teacher 'gat-test/dino' at revision 333"), lines[3]
