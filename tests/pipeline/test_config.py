"""Params validation refuses bad input before any work, naming the key and what is allowed;
the shipped presets validate; ``gat profile`` writes one to params.yaml atomically."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.cli import main as gat_main
from pipeline.config import DEFAULT_PARAMS, ParamsError, load_params, parse_params
from pipeline.config import profiles as profile
from pipeline.layout import REPO_ROOT

PROFILES = REPO_ROOT / "profiles"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _raw(**sections: dict[str, Any]) -> dict[str, Any]:
    """The embedded profile as a mapping, with some keys of some sections replaced."""
    raw = yaml.safe_load((PROFILES / "embedded.yaml").read_text())
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def _refused(raw: dict[str, Any], *fragments: str, check_paths: bool = False) -> str:
    with pytest.raises(ParamsError) as err:
        parse_params(raw, check_paths=check_paths)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ----------------------------------------------------------------------------- refusals


def test_unknown_model_size_lists_allowed_sizes():
    _refused(_raw(study={"sizes": ["GAT-T1/4", "GAT-XXL/2"]}),
             "study.sizes", "'GAT-XXL/2'", "Allowed:", "GAT-S/2", "GAT-XL/2")


def test_sweep_size_is_checked_too():
    _refused(_raw(sweep={"transfer_size": "GAT-Q/4"}), "sweep.transfer_size", "Allowed:")


def test_precision_allreduce_and_bucket_size_are_checked():
    _refused(_raw(runtime={"precision": "fp16"}), "runtime.precision", "'fp16'", "bf16")
    _refused(_raw(runtime={"allreduce": "ring"}), "runtime.allreduce", "bucketed")
    _refused(_raw(runtime={"bucket_mb": 0}), "runtime.bucket_mb", "greater than 0")


def test_storage_and_data_url_must_name_the_same_place_on_every_node():
    for key in ("storage", "data_url"):
        _refused(_raw(runtime={key: "outputs/shared"}), f"runtime.{key}", "relative path",
                 "every node")
    _refused(_raw(runtime={"placement": "ANYWHERE"}), "runtime.placement", "STRICT_SPREAD")
    parse_params(_raw(runtime={"storage": "s3://bucket/gat", "placement": "STRICT_SPREAD",
                               "data_url": "pipe:curl -s https://host/data/{path}"}),
                 check_paths=False)


@pytest.mark.parametrize("section,key,value,fragment", [
    ("runtime", "concurrent_trials", 0, "greater than 0"),
    ("runtime", "trial_cpus", -1.0, "greater than 0"),
    ("runtime", "trial_gpus", -1, "0 or positive"),
    ("sweep", "lr_max", 1e-5, "below sweep.lr_max")])
def test_sweep_resources_and_range(section, key, value, fragment):
    _refused(_raw(**{section: {key: value}}),
             f"{section}.{key}" if key != "lr_max" else "sweep.lr_min", fragment)


def test_collective_timeout_is_checked_and_reaches_ray_torch_config():
    """runtime.collective_timeout_s is Ray Train's TorchConfig(timeout_s) of every run; a
    timeout too short to outlast rank 0's checkpoint and logging is refused."""
    from ray.train.torch import TorchConfig

    from pipeline.training.driver import torch_config

    _refused(_raw(runtime={"collective_timeout_s": 30}), "runtime.collective_timeout_s",
             "30 s is too short", "at least 60")
    params = parse_params(_raw(runtime={"collective_timeout_s": 2400}), check_paths=False)
    config = torch_config(params)
    assert isinstance(config, TorchConfig) and config.timeout_s == 2400
    paper = load_params(PROFILES / "paper.yaml", check_paths=False).runtime
    assert paper.collective_timeout_s >= 1800 and paper.fd_every > 0


@pytest.mark.parametrize("value", [0, -4e-4, 0.0, ".nan"])
def test_non_positive_learning_rate(value):
    value = float("nan") if value == ".nan" else value
    _refused(_raw(train={"lr_base": value}), "train.lr_base", "must be greater than 0")


@pytest.mark.parametrize("section", ["tokenizer", "teacher", "evaluator"])
def test_stand_in_learning_rates_must_be_positive(section):
    _refused(_raw(**{section: {"lr": -1e-3}}), f"{section}.lr", "greater than 0")


def test_batch_not_divisible_by_workers():
    message = _refused(_raw(train={"batch": 30}, runtime={"workers": 4}),
                       "train.batch", "30", "runtime.workers")
    assert "multiple of 4" in message


def test_batch_not_divisible_by_workers_times_accumulation():
    _refused(_raw(train={"batch": 48}, runtime={"workers": 4, "grad_accum": 8}),
             "multiple of 32")


def test_missing_dataset_path(tmp_path):
    missing = str(tmp_path / "nowhere")
    _refused(_raw(data={"path": missing}), "data.path", missing, "does not exist",
             "dataset-fashion-mnist", check_paths=True)
    # The same file is accepted when validated for another machine.
    parse_params(_raw(data={"path": missing}), check_paths=False)


def test_missing_imagefolder_eval_path(tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    _refused(_raw(data={"source": "imagefolder", "path": str(train), "eval_path": ""}),
             "data.eval_path", "empty")
    _refused(_raw(data={"source": "imagefolder", "path": str(train),
                        "eval_path": str(tmp_path / "val")}),
             "data.eval_path", "does not exist", check_paths=True)


def test_unknown_dataset_source_lists_allowed():
    _refused(_raw(data={"source": "imagenet"}), "data.source", "'imagenet'",
             "Allowed: fashion-mnist, imagefolder")


def test_unknown_evaluator_lists_allowed():
    _refused(_raw(evaluator={"source": "fid"}), "evaluator.source", "train, inception")


def test_unknown_mng_variant_lists_allowed():
    _refused(_raw(train={"mng": "cosine"}), "train.mng", "none, lin, exp, msg")


@pytest.mark.parametrize(("section", "typo", "right"), [
    ("train", "lr_bsae", "lr_base"),
    ("train", "itertions", "iterations"),
    ("evaluate", "num_sample", "num_samples"),
])
def test_typo_in_key_suggests_the_right_one(section, typo, right):
    raw = _raw()
    raw[section][typo] = raw[section].pop(right)
    _refused(raw, f"{section}.{typo}", f"did you mean {right!r}", "Allowed keys:")


def test_typo_in_section_suggests_the_right_one():
    raw = _raw()
    raw["trian"] = raw.pop("train")
    _refused(raw, "trian", "did you mean 'train'")


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("train", "batch", "512", "expected an integer"),
    ("train", "batch", 32.5, "expected an integer"),
    ("train", "iterations", True, "expected an integer"),
    ("runtime", "use_gpu", "yes", "expected true or false"),
    ("train", "lr_base", "fast", "expected a number"),
    ("study", "sizes", "GAT-T1/4", "expected a list"),
    ("tracking", "study_name", 7, "expected a string"),
    ("data", "resolution", [32], "expected an integer"),
])
def test_wrong_types(section, key, value, expected):
    _refused(_raw(**{section: {key: value}}), f"{section}.{key}", expected)


def test_section_must_be_a_mapping():
    raw = _raw()
    raw["train"] = 5
    _refused(raw, "train", "expected a mapping")


def test_yaml_float_without_dot_is_a_number():
    # YAML 1.1 reads 4e-4 as a string; the schema takes it as the number it means.
    params = parse_params(_raw(train={"lr_base": "4e-4"}), check_paths=False)
    assert params.train.lr_base == pytest.approx(4e-4)


def test_load_params_names_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(_raw(runtime={"workers": 0})))
    with pytest.raises(ParamsError, match=r"params\.yaml: runtime\.workers: 0 must be"):
        load_params(bad, check_paths=False)
    with pytest.raises(ParamsError, match="no such params file"):
        load_params(tmp_path / "absent.yaml")
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_stage_refuses_before_any_work(tmp_path):
    """A stage's CLI exits with the message, without running anything."""
    from pipeline.stage import stage_main

    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(_raw(study={"sizes": ["GAT-Z/2"]})))
    ran = []
    with pytest.raises(SystemExit) as exit_:
        stage_main("doc", lambda params, args: ran.append(1), argv=["--params", str(bad)])
    assert "study.sizes" in str(exit_.value.code) and "Allowed" in str(exit_.value.code)
    assert not ran


# ----------------------------------------------------------------------------- profiles


def test_paper_profile_is_the_papers_study():
    params = load_params(PROFILES / "paper.yaml", check_paths=False)
    assert params.study.sizes == ["GAT-S/2", "GAT-B/2", "GAT-L/2", "GAT-XL/2"]
    assert params.data.source == "imagefolder" and params.data.eval_path
    assert params.data.resolution == 256
    assert params.tokenizer.source == "stabilityai/sd-vae-ft-ema"
    assert params.tokenizer.scale_factor == pytest.approx(0.18215)
    assert params.teacher.source == "facebook/dinov2-base"
    assert params.evaluator.source == "inception" and params.evaluate.num_samples == 50_000
    t, rt = params.train, params.runtime
    assert (t.batch, t.iterations, t.lr_base, t.c_base) == (512, 50_000, 4e-4, 384)
    assert (t.ema_decay, t.mng, rt.use_gpu, rt.grad_checkpointing) == (0.999, "exp", True, True)
    assert rt.workers > 1 and t.batch % (rt.workers * rt.grad_accum) == 0
    # The width-aware rule reproduces the paper's lr column.
    lrs = {name: s["lr"] for name, s in profile.derived(params)["sizes"].items()}
    assert lrs == pytest.approx({"GAT-S/2": 4e-4, "GAT-B/2": 2e-4, "GAT-L/2": 1.5e-4,
                                 "GAT-XL/2": 1.333e-4}, rel=1e-3)


def test_paper_profile_needs_its_dataset_on_the_machine_that_runs_it():
    if Path("/data/imagenet/train").exists():
        pytest.skip("ImageNet is present here")
    with pytest.raises(ParamsError, match=r"data\.path"):
        load_params(PROFILES / "paper.yaml")


@pytest.mark.skipif(not FASHION.exists(), reason="needs dataset-fashion-mnist")
@pytest.mark.parametrize("name", ["tiny", "embedded"])
def test_local_profiles_validate_here(name):
    params = load_params(PROFILES / f"{name}.yaml")
    assert params.data.source == "fashion-mnist"


def test_tiny_profile_is_small():
    params = load_params(PROFILES / "tiny.yaml", check_paths=False)
    assert len(params.study.sizes) >= 3
    assert 0 < params.data.train_limit <= 2048 and 0 < params.data.eval_limit <= 1024
    assert params.train.iterations <= 50 and params.evaluate.num_samples <= 1024
    assert not params.runtime.use_gpu
    # the sweep is on, small, so that `dvc repro` in CI runs (and traces) the sweep stage
    assert params.sweep.iterations <= 50 and params.sweep.num_trials <= 3


def test_params_yaml_is_written_from_the_embedded_preset():
    """The committed params.yaml is what `gat profile embedded` writes: one file to edit,
    with a header that says so; the preset is its source, not a second copy to keep."""
    current = profile.selected()
    if current not in (None, "embedded"):
        pytest.skip(f"params.yaml is the {current!r} preset, written on purpose")
    assert DEFAULT_PARAMS.read_text() == profile.render("embedded"), (
        "params.yaml is not what `gat profile embedded` writes: change the preset "
        "profiles/embedded.yaml, then run `gat profile embedded`")
    assert DEFAULT_PARAMS.read_text().startswith("# params.yaml: the study every stage reads")


# ----------------------------------------------------------------------------- the command


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "profile", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_profile_dry_run_prints_the_resolved_config():
    result = _cli("paper", "--dry-run")
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["study"]["sizes"][-1] == "GAT-XL/2"
    assert printed["derived"]["sizes"]["GAT-B/2"]["lr"] == pytest.approx(2e-4)
    assert printed["derived"]["metric"].startswith("FID (Inception")


def test_profile_help_and_unknown_name():
    assert "--dry-run" in _cli("--help").stdout
    result = _cli("papr")
    assert result.returncode == 2
    assert "'papr'" in result.stderr and "embedded, paper, tiny" in result.stderr


def test_select_copies_atomically_and_refuses_bad_profiles(tmp_path):
    target = tmp_path / "params.yaml"
    target.write_text("untouched\n")
    # A bad profile leaves params.yaml as it was.
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_raw(train={"lr_base": -1.0})))
    assert gat_main(["profile", str(bad), "--params", str(target)]) == 2
    assert target.read_text() == "untouched\n"
    # The paper profile: refused here unless its paths are not checked.
    if not Path("/data/imagenet/train").exists():
        assert gat_main(["profile", "paper", "--params", str(target)]) == 2
        assert target.read_text() == "untouched\n"
    assert gat_main(["profile", "paper", "--no-check-paths", "--params", str(target)]) == 0
    assert target.read_text() == profile.render("paper")
    assert profile.selected(target) == "paper"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("revision", ["main", "v1.0", "A" * 40, "abc123", "0" * 41])
def test_hub_revision_must_be_a_full_commit(revision):
    for section, source in (("tokenizer", "stabilityai/sd-vae-ft-ema"),
                            ("teacher", "facebook/dinov2-base")):
        _refused(_raw(**{section: {"source": source, "revision": revision}}),
                 f"{section}.revision", repr(revision), "40-hex commit")
    commit = "0123456789abcdef0123456789abcdef01234567"
    params = parse_params(_raw(tokenizer={"source": "stabilityai/sd-vae-ft-ema",
                                          "revision": commit}), check_paths=False)
    assert params.tokenizer.revision == commit
    _refused(_raw(teacher={"source": "train", "revision": commit}), "teacher.revision",
             "source `train`", "leave it empty")


def test_precomputed_reference_must_be_an_existing_npz(tmp_path):
    _refused(_raw(evaluator={"reference": str(tmp_path / "ref.txt")}),
             "evaluator.reference", "is not an .npz")
    missing = str(tmp_path / "VIRTUAL_imagenet256_labeled.npz")
    _refused(_raw(evaluator={"reference": missing}), "evaluator.reference", missing,
             "does not exist", check_paths=True)
    parse_params(_raw(evaluator={"reference": missing}), check_paths=False)


def test_paper_profile_names_its_reference_and_pinned_revisions(capsys):
    assert gat_main(["profile", "paper", "--dry-run", "--no-check-paths"]) == 0
    derived = yaml.safe_load(capsys.readouterr().out)["derived"]
    assert derived["reference"].endswith("VIRTUAL_imagenet256_labeled.npz")
    revisions = derived["hub_revisions"]
    assert revisions["tokenizer"].startswith("stabilityai/sd-vae-ft-ema@")
    assert revisions["teacher"].startswith("facebook/dinov2-base@")
    assert all(re.fullmatch(r"[^@]+@[0-9a-f]{40}", v) for v in revisions.values())


def test_an_unpinned_hub_part_says_so():
    params = parse_params(_raw(tokenizer={"source": "stabilityai/sd-vae-ft-ema"}),
                          check_paths=False)
    assert "NOT PINNED" in profile.hub_revisions(params)["tokenizer"]


@pytest.mark.parametrize(("use_gpu", "pool", "on_pool"), [
    (True, "auto", True), (False, "auto", False), (False, "ray", True), (True, "ray", True)])
def test_runtime_pool_puts_the_data_and_evaluation_stages_on_ray(use_gpu, pool, on_pool):
    params = parse_params(_raw(runtime={"use_gpu": use_gpu, "pool": pool}))
    assert params.runtime.on_pool is on_pool


def test_runtime_pool_refuses_other_values():
    _refused(_raw(runtime={"pool": "always"}), "runtime.pool: 'always' is not allowed",
             "Allowed: auto, ray")
