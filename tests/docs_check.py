"""The docs check: every shell and Python block of README.md and docs/*.md runs as written.

    python -m tests.docs_check --study STUDY        # a finished tiny study (copied per page)
    python -m tests.docs_check --build /tmp/docs    # build the tiny study there first
    python -m tests.docs_check --list               # the blocks and their marks, nothing run

Each ```bash / ```sh / ```python block must carry a mark on the line before it:

    <!-- check: run -->                              run it
    <!-- check: run; GAT-T4/4 -> GAT-T3/4; A -> B -->  run it with these substitutions
                                                     (the tiny study has other sizes)
    <!-- check: serve http://127.0.0.1:5000 -->      start it, wait for the URL, stop it
    <!-- check: skip KIND: reason -->                not here: KIND is gpu, cluster,
                                                     network or long; the reason is printed

A page's runnable blocks run in page order, in one fresh copy of the tiny study (so a
block sees what the blocks before it made), bash with ``set -eo pipefail``, the venv's
``python`` first on PATH. The first failure stops the check, naming the page and line.
An unmarked block is a failure too: a new block has to say whether it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import copy_repo, copy_study, dvc_env

REPO = Path(__file__).resolve().parent.parent
LANGS = {"bash": "bash", "sh": "bash", "shell": "bash", "console": "bash", "python": "python"}
SKIP_KINDS = ("gpu", "cluster", "network", "long")
MARK = re.compile(r"<!--\s*check:\s*(?P<body>.*?)\s*-->")
BLOCK_TIMEOUT_S = 900


class DocsCheckError(Exception):
    """A block failed or is not marked; the message names the page and line."""


@dataclass
class Block:
    page: Path
    line: int              # 1-based line of the opening fence
    lang: str              # bash | python
    code: str
    action: str            # run | serve | skip
    subs: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{_shown(self.page)}:{self.line}"

    def text(self) -> str:
        code = self.code
        for old, new in self.subs:
            code = code.replace(old, new)
        return code


def _shown(page: Path) -> Path:
    return page.relative_to(REPO) if page.is_relative_to(REPO) else page


def pages(root: Path = REPO) -> list[Path]:
    """README.md, then docs/*.md by name."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def parse_mark(body: str, where: str) -> dict:
    if body == "run" or body.startswith("run;"):
        subs = []
        for pair in body[4:].split(";") if body.startswith("run;") else []:
            old, sep, new = pair.partition("->")
            if not sep:
                raise DocsCheckError(f"{where}: substitution {pair.strip()!r} is not "
                                     "'OLD -> NEW'")
            subs.append((old.strip(), new.strip()))
        return {"action": "run", "subs": subs}
    if body.startswith("serve "):
        return {"action": "serve", "url": body[len("serve "):].strip()}
    if body.startswith("skip "):
        kind, sep, reason = body[len("skip "):].partition(":")
        if kind.strip() not in SKIP_KINDS or not sep or not reason.strip():
            raise DocsCheckError(f"{where}: a skip mark is 'skip KIND: reason' with KIND one "
                                 f"of {', '.join(SKIP_KINDS)}; got {body!r}")
        return {"action": "skip", "reason": f"{kind.strip()}: {reason.strip()}"}
    raise DocsCheckError(f"{where}: unknown mark {body!r}: use run, run; A -> B; C -> D, "
                         "serve URL, or skip KIND: reason")


def blocks(page: Path) -> list[Block]:
    """The shell and Python blocks of one page, with their marks. Raises DocsCheckError on
    an unmarked or badly marked block."""
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = lines[i].strip()
        if not fence.startswith("```"):
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```")),
                   None)
        if end is None:
            raise DocsCheckError(f"{_shown(page)}:{i + 1}: a code fence that never closes")
        lang = LANGS.get(fence[3:].strip().split(" ")[0].lower())
        if lang is not None:
            where = f"{_shown(page)}:{i + 1}"
            prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            mark = MARK.search(prev)
            if mark is None:
                raise DocsCheckError(
                    f"{where}: this {lang} block has no mark: put '<!-- check: run -->' (or "
                    f"'skip KIND: reason', KIND one of {', '.join(SKIP_KINDS)}) on the line "
                    "before it")
            found.append(Block(page, i + 1, lang, "\n".join(lines[i + 1:end]) + "\n",
                               **parse_mark(mark.group("body"), where)))
        i = end + 1
    return found


def block_env(study: Path) -> dict[str, str]:
    """The environment of a user of ``study`` whose venv is active (and whose git can
    commit). The venv is shared with the checkout the check runs from, where the project is
    installed: ``$PYTHONPATH`` makes ``gat`` import the study's code, as a user's own
    install would (``python -m stages.NAME`` imports its working directory's first, so a
    queued DVC experiment still runs its own copy)."""
    return {**dvc_env(), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(study)}


def _command(block: Block, script: Path) -> list[str]:
    if block.lang == "python":
        script.write_text(block.text())
        return [sys.executable, str(script)]
    script.write_text("set -eo pipefail\n" + block.text())
    return ["bash", str(script)]


def run_block(block: Block, cwd: Path, timeout: float = BLOCK_TIMEOUT_S) -> float:
    """Run (or serve) one block in ``cwd``; returns its seconds. Raises DocsCheckError."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="docs-block-") as tmp:
        cmd = _command(block, Path(tmp) / ("block.py" if block.lang == "python" else "block.sh"))
        if block.action == "serve":
            _serve(block, cmd, cwd)
            return time.perf_counter() - start
        try:
            done = subprocess.run(cmd, cwd=cwd, env=block_env(cwd), capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise DocsCheckError(f"{block.where}: still running after {timeout:.0f} s") from err
    if done.returncode != 0:
        raise DocsCheckError(f"{block.where}: the block failed (exit {done.returncode}):\n"
                             f"{block.text()}--- output (last 3000 characters) ---\n"
                             f"{(done.stdout + done.stderr)[-3000:]}")
    return time.perf_counter() - start


def _serve(block: Block, cmd: list[str], cwd: Path, wait_s: float = 120) -> None:
    proc = subprocess.Popen(cmd, cwd=cwd, env=block_env(cwd), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DocsCheckError(f"{block.where}: the server exited ({proc.returncode}) "
                                     f"before {block.url} answered:\n{proc.stdout.read()[-3000:]}")
            try:
                with urllib.request.urlopen(block.url, timeout=5) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise DocsCheckError(f"{block.where}: {block.url} did not answer within {wait_s:.0f} s")
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen, wait_s: float = 30) -> None:
    """SIGTERM the block's whole process group (the shell and the server it started), and
    wait until every member has exited, not only the shell: a server still closing its
    socket would hold the port. SIGKILL what is left after ``wait_s``."""
    import psutil

    group = [p for p in psutil.process_iter() if _pgid(p) == proc.pid]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=wait_s)
    _, alive = psutil.wait_procs(group, timeout=wait_s)
    for left in alive:
        with contextlib.suppress(psutil.Error):
            left.kill()


def _pgid(process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except OSError:
        return None


def _print(line: str) -> None:
    print(line, flush=True)  # before a block's own output, in a log file too


def check(study: Path, work: Path, page_list: list[Path] | None = None,
          log=_print) -> tuple[int, int]:
    """Run every page's runnable blocks, each page in its own copy of ``study`` under
    ``work``; returns (blocks run, blocks skipped). Raises DocsCheckError at the first
    failure. Every page's marks are read (and an unmarked block refused) before anything
    runs."""
    plan = [blocks(page) for page in (page_list or pages())]
    ran = skipped = 0
    for n, found in enumerate(plan):
        copy = None
        for block in found:
            if block.action == "skip":
                log(f"skip {block.where} ({block.reason})")
                skipped += 1
                continue
            if copy is None:
                copy = work / f"page{n}"
                copy_study(study, copy)
            seconds = run_block(block, copy)
            log(f"ok   {block.where} ({block.action}, {seconds:.1f} s)")
            ran += 1
        if copy is not None:
            shutil.rmtree(copy, ignore_errors=True)
    log(f"docs check: {ran} blocks run, {skipped} skipped")
    return ran, skipped


def build_tiny_study(work: Path) -> Path:
    """What a user has after cloning and running the tiny profile: a copy of the checkout,
    committed as a clone is, then ``params.yaml`` = profiles/tiny.yaml and
    `bash scripts/repro.sh` (their results uncommitted)."""
    study = work / "study"
    study.mkdir(parents=True)
    copy_repo(study)
    env = {**dvc_env(), "RAY_USAGE_STATS_ENABLED": "0"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-q", "-m", "a clone of the checkout"]):
        subprocess.run(cmd, cwd=study, env=env, check=True)
    (study / ".venv").symlink_to(Path(sys.executable).parent.parent)  # .gitignore: .venv/
    shutil.copy(study / "profiles" / "tiny.yaml", study / "params.yaml")
    subprocess.run(["bash", "scripts/repro.sh"], cwd=study, env=env, check=True)
    return study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--study", type=Path, help="a finished tiny study to copy per page")
    parser.add_argument("--build", type=Path, help="build the tiny study in this folder first")
    parser.add_argument("--list", action="store_true", help="list the blocks, run nothing")
    parser.add_argument("pages", nargs="*", type=Path, help="pages (default: all)")
    args = parser.parse_args()
    page_list = [p.resolve() for p in args.pages] or pages()
    try:
        if args.list:
            for page in page_list:
                for b in blocks(page):
                    print(f"{b.where}: {b.lang} {b.action} {b.reason or b.url or b.subs or ''}")
            return
        if (args.study is None) == (args.build is None):
            parser.error("give --study DIR (a finished tiny study) or --build DIR")
        study = args.study or build_tiny_study(args.build)
        with tempfile.TemporaryDirectory(prefix="docs-check-") as work:
            check(study.resolve(), Path(work), page_list)
    except DocsCheckError as err:
        sys.exit(f"docs check failed: {err}")


if __name__ == "__main__":
    main()
