"""The docs check (tests/docs_check.py): every page's blocks are marked, and the checker
runs blocks in page order in a copy of a study, stops at the first failure naming its page
and line, prints what it skips, applies substitutions and serves. CI runs the check on the
real pages and the tiny study as its own step (scripts/test.sh)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.docs_check import DocsCheckError, blocks, check, pages


def test_every_block_of_every_page_is_marked():
    found = [b for page in pages() for b in blocks(page)]
    assert {"README.md", "docs/GENERATOR.md", "docs/EXPERIMENTS.md"} <= {
        b.where.split(":")[0] for b in found}
    assert sum(b.action == "run" for b in found) >= 10
    for b in found:
        assert b.action in ("run", "serve") or b.reason.split(":")[0] in (
            "gpu", "cluster", "network", "long"), b.where


def page(tmp_path: Path, text: str) -> Path:
    (tmp_path / "docs").mkdir(exist_ok=True)
    path = tmp_path / "docs" / "PAGE.md"
    path.write_text(text)
    return path


def test_an_unmarked_block_is_refused_naming_its_line(tmp_path):
    path = page(tmp_path, "# t\n\n```bash\necho hi\n```\n")
    with pytest.raises(DocsCheckError, match=r"PAGE.md:3: this bash block has no mark"):
        blocks(path)
    path = page(tmp_path, "<!-- check: skip someday: later -->\n```python\nprint(1)\n```\n")
    with pytest.raises(DocsCheckError, match=r"PAGE.md:2: a skip mark is 'skip KIND: reason'"):
        blocks(path)
    path = page(tmp_path, "```yaml\na: 1\n```\n")  # not shell or Python: not a block to run
    assert blocks(path) == []


def test_blocks_run_in_order_and_the_first_failure_is_named(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    path = page(tmp_path, """# A page

<!-- check: run; PLACEHOLDER -> made.txt -->
```bash
echo made > PLACEHOLDER
```

<!-- check: skip gpu: needs CUDA -->
```bash
nvidia-smi
```

<!-- check: run -->
```python
from pathlib import Path
assert Path("made.txt").read_text() == "made\\n"   # the block before ran, in this folder
print("python saw it")
```

<!-- check: run -->
```bash
echo "about to fail"
false
touch after_the_failure
```

<!-- check: run -->
```bash
touch never
```
""")
    logged: list[str] = []
    with pytest.raises(DocsCheckError) as err:
        check(study, tmp_path / "work", [path], log=logged.append)
    message = str(err.value)
    assert "PAGE.md:21: the block failed (exit 1)" in message and "about to fail" in message
    assert any(line.startswith("skip ") and "PAGE.md:9 (gpu: needs CUDA)" in line
               for line in logged)
    assert [line.split()[1] for line in logged if line.startswith("ok ")] == [
        f"{path}:4", f"{path}:14"]
    copy = tmp_path / "work" / "page0"
    assert (copy / "made.txt").exists() and not (copy / "after_the_failure").exists()
    assert not (copy / "never").exists() and not (study / "made.txt").exists()


def test_a_served_block_is_started_reached_and_stopped(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "study").mkdir()
    path = page(tmp_path, f"<!-- check: serve http://127.0.0.1:{port}/ -->\n```bash\n"
                          f"python -m http.server {port} --bind 127.0.0.1\n```\n")
    assert check(tmp_path / "study", tmp_path / "work", [path], log=lambda _: None) == (1, 0)
    with socket.socket() as s:  # stopped: nothing listens there (TIME_WAIT aside)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_every_relative_link_of_every_page_exists():
    import re

    missing = []
    for path in pages():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if "://" in target or target.startswith("#"):
                    continue
                if not (path.parent / target.split("#")[0]).exists():
                    missing.append(f"{path.name}:{n}: {target}")
    assert not missing, missing
