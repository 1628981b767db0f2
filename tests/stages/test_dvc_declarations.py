"""dvc.yaml declares exactly what each stage reads: the params keys its processes read in a
real run (traced), and the project modules it imports (see tests/declarations.py)."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from pipeline.config import Params
from pipeline.config.trace import read_traces
from tests import declarations as decl
from tests.helpers import FASHION, REPO, params_trace

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not FASHION.exists(), reason="needs dataset-fashion-mnist")]


def _study(tiny_study):
    params = yaml.safe_load((tiny_study / "params.yaml").read_text())
    return decl.stages(tiny_study / "dvc.yaml", params), params


def test_every_stage_declares_the_params_it_reads_and_only_those(tiny_study):
    stages, params = _study(tiny_study)
    reads = read_traces(params_trace(tiny_study))
    assert set(reads) >= set(stages), f"stages that never ran: {set(stages) - set(reads)}"
    for name, stage in stages.items():
        assert not decl.undeclared_keys(stage, reads[name], params), name
        assert not decl.unread_keys(stage, reads[name], params), name
    # The train workers (other processes) and the sweep's Tune trials were traced too.
    assert "train.agp_sigma" in reads["train@GAT-T1/4-0"] and "train.mng" in reads["sweep"]


def test_every_stage_declares_the_modules_it_imports_and_only_those():
    for name, stage in decl.stages().items():
        assert not decl.undeclared_code(stage), name
        assert not decl.unused_code_deps(stage), name


def test_the_check_fails_when_a_declaration_is_missing(tiny_study):
    """The same check on a dvc.yaml with one param key and one module dropped."""
    stages, params = _study(tiny_study)
    reads = read_traces(params_trace(tiny_study))
    stage = dict(stages["encode"])
    stage["params"] = [k for k in stage["params"] if k != "data.hflip"]
    assert decl.undeclared_keys(stage, reads["encode"], params) == ["data.hflip"]
    stage["deps"] = [d for d in stage["deps"] if d != "pipeline/shards.py"]
    assert decl.undeclared_code(stage) == ["pipeline.shards"]
    # and when one is too many: a key the stage never reads, a module it never imports
    stage = dict(stages["tokenizer"], params=[*stages["tokenizer"]["params"], "train.batch"],
                 deps=[*stages["tokenizer"]["deps"], "pipeline/shards.py"])
    assert decl.unread_keys(stage, reads["tokenizer"], params) == ["train.batch"]
    assert decl.unused_code_deps(stage) == ["pipeline/shards.py"]


def test_runtime_and_tracking_reads_need_no_declaration(tiny_study):
    stages, params = _study(tiny_study)
    reads = read_traces(params_trace(tiny_study))["train@GAT-T1/4-0"]
    assert {"runtime.workers", "runtime.log_every"} <= reads  # read, yet never declared
    assert not decl.undeclared_keys(stages["train@GAT-T1/4-0"], reads, params)


@pytest.mark.parametrize("profile", ["tiny", "embedded", "paper"])
def test_every_profile_sets_every_key(profile):
    """DVC looks declared keys up in params.yaml: a profile must list each one."""
    raw = yaml.safe_load((REPO / "profiles" / f"{profile}.yaml").read_text())
    for section, value in Params().to_dict().items():
        missing = set(value) - set(raw.get(section, {}))
        assert not missing, f"{profile}.yaml {section}: {sorted(missing)}"
    assert dataclasses.fields(Params)  # the schema has sections at all
