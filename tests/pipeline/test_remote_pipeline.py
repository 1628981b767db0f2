"""An exported pipeline folder loads where the project is not installed: the folder carries
its code (generator/gat_pipeline.py and the files it imports, generated from the project's
modules at export), and ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``
runs it, giving the in-project pipeline's images exactly.

Real parts: the session's tiny trained generator and AutoencoderKL (``parts``), exported as
the evaluate stage exports them; the remote load runs in a fresh interpreter of this venv
that cannot import the project (``-I -S``: no script or working directory on sys.path, and
none of the venv's .pth files, the project's editable install being one).
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from gat import models, sample
from pipeline.layout import Layout
from pipeline.pretrained.tokenizer import Tokenizer
from pipeline.serving import diffusers_pipeline, remote_code
from pipeline.serving.diffusers_pipeline import GATGeneratorModel, GATPipeline, export_pipeline
from pipeline.serving.remote_code import CODE, COMPONENT, code_files

REPO = Path(__file__).resolve().parents[2]
# gat sample --classes 0,3 --seeds 1,2 (less one image), truncated and guided
REQUEST = {"class_labels": [0, 3, 3], "seeds": [1, 1, 2], "psi": 0.7, "guidance": 1.5}

# Run as `python -I -S -c REMOTE FOLDER OUT SITE_PACKAGES REPO THREADS REQUEST` from outside
# the repo: REQUEST's images (np) saved to OUT, what ran and what was refused printed.
REMOTE = """
import sys

folder, out, site_packages, repo, threads, request = sys.argv[1:]
sys.path.append(site_packages)  # the venv's packages, without its .pth files
import importlib.util
import os

assert not os.path.realpath(os.getcwd()).startswith(os.path.realpath(repo)), os.getcwd()
for name in ("gat", "pipeline"):
    assert importlib.util.find_spec(name) is None, f"{name} is importable"
    try:
        __import__(name)
        raise AssertionError(f"import {name} worked")
    except ModuleNotFoundError:
        pass

import json

import numpy as np
import torch
from diffusers import DiffusionPipeline

torch.set_num_threads(int(threads))
request = json.loads(request)
pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
seeds = request.pop("seeds")
images = pipe(**request, generator=[torch.Generator().manual_seed(s) for s in seeds],
              output_type="np").images
try:
    pipe(class_labels=[99])
    raise AssertionError("class 99 was not refused")
except ValueError as err:
    refused = str(err)
np.save(out, images)
print(json.dumps({"pipeline": type(pipe).__module__ + "." + type(pipe).__name__,
                  "generator": type(pipe.generator).__module__ + "." +
                               type(pipe.generator).__name__,
                  "refused": refused}))
"""


@pytest.fixture(scope="module")
def folder(parts, tmp_path_factory) -> Path:
    """The parts' generator exported as the evaluate stage exports it (the `train`
    tokenizer: the root's data/tokenizer)."""
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(parts["tokenizer"], root / "data" / "tokenizer")
    return export_pipeline(parts["generator"], root / "pipeline", Layout(root, root))


def _in_project_images(folder: Path) -> np.ndarray:
    """REQUEST's images [3, 32, 32, 3] (np) from the project's own GATPipeline."""
    pipe = GATPipeline.from_pretrained(folder)
    # the project's classes read the folder: none of its code ran here
    assert type(pipe) is GATPipeline and type(pipe.generator) is GATGeneratorModel
    request = dict(REQUEST)
    seeds = request.pop("seeds")
    return pipe(**request, generator=[torch.Generator().manual_seed(s) for s in seeds],
                output_type="np").images


def test_folder_loads_without_the_project_and_gives_its_images(folder, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(outside),
           # diffusers copies the folder's code to HF_MODULES_CACHE (HF_HOME/modules)
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-I", "-S", "-c", REMOTE, str(folder), str(tmp_path / "remote.npy"),
         sysconfig.get_paths()["purelib"], str(REPO), str(torch.get_num_threads()),
         json.dumps(REQUEST)],
        cwd=outside, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    # nothing to warn about: no project import that diffusers would ask to pip install, no
    # generator of another class than the pipeline's
    assert "might require" not in run.stderr and "Expected types" not in run.stderr, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    # the folder's copy of the classes ran, from diffusers' module cache
    assert report["pipeline"] == f"diffusers_modules.local.{CODE}.GATPipeline"
    assert report["generator"] == f"diffusers_modules.local.{CODE}.GATGeneratorModel"
    assert "classes [99] out of range: the generator has classes 0..3" in report["refused"]
    remote = np.load(tmp_path / "remote.npy")
    assert remote.shape == (3, 32, 32, 3) and remote.dtype == np.float32
    assert np.array_equal(remote, _in_project_images(folder))


def test_loading_without_trust_remote_code_is_refused_by_diffusers(folder):
    with pytest.raises(ValueError, match=r"(?s)generator contains custom code in "
                                         rf"{CODE}\.py.*Pass `trust_remote_code=True`"):
        DiffusionPipeline.from_pretrained(folder)


def test_the_folder_carries_the_projects_code(folder):
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == [f"generator/{CODE}", "GATPipeline"]
    assert index["generator"] == [COMPONENT, "GATGeneratorModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    code = {p.stem: p.read_text() for p in (folder / "generator").glob("*.py")}
    assert sorted(code) == sorted(code_files()) == sorted(
        ["gat_common", "gat_generator", "gat_models", "gat_pipeline", "gat_sample",
         "gat_tokenizer"])

    def body(text: str) -> str:  # less the generated header
        return text.split("\n\n", 1)[1]

    # whole files as the project has them, imports between them made relative
    assert body(code["gat_models"]) == Path(models.__file__).read_text()
    assert body(code["gat_sample"]) == Path(sample.__file__).read_text().replace(
        "from gat.models import", "from .gat_models import")
    # the traveling classes and functions, each as its source reads
    for obj, stem in ((GATPipeline, CODE), (GATGeneratorModel, CODE),
                      (diffusers_pipeline.check_folder, CODE), (Tokenizer, "gat_tokenizer")):
        assert inspect.getsource(obj) in code[stem], obj
    # and nothing that needs the project
    for stem, text in code.items():
        assert "from gat" not in text and "from pipeline" not in text, stem
        assert "def export_pipeline" not in text and "def load_tokenizer" not in text, stem


def test_a_folder_without_its_code_is_refused_naming_the_file(folder, tmp_path):
    broken = shutil.copytree(folder, tmp_path / "no_code")
    (broken / "generator" / f"{CODE}.py").unlink()
    with pytest.raises(FileNotFoundError, match=rf"no_code/generator/{CODE}\.py is missing"):
        GATPipeline.from_pretrained(broken)


@pytest.mark.parametrize("stem, keep, message", [
    # a module that does not travel at all
    ("gat_tokenizer", ("load_tokenizer",),
     r"tokenizer\.py: the code that travels uses `from pipeline\.layout import LAYOUT, "
     r"Layout`, a module that does not"),
    # a name left out of a module that travels
    ("gat_common", ("to_uint8",),
     r"tokenizer\.py: uses \['to_unit'\] of pipeline\.pretrained\.common, which do not "
     r"travel"),
], ids=["module-stays", "name-stays"])
def test_code_that_needs_what_stays_is_refused_at_export(monkeypatch, stem, keep, message):
    """Traveling code that uses what does not travel fails the export, naming both, rather
    than the remote load."""
    travels = [(m, s, keep if s == stem else k) for m, s, k in remote_code.TRAVELS]
    monkeypatch.setattr(remote_code, "TRAVELS", tuple(travels))
    with pytest.raises(ValueError, match=message):
        code_files()
