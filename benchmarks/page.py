"""Write a benchmark's table into docs/benchmarks.md, headed by where and how it was measured.

Each benchmark script ends with `write_section(name, command_line(), table)`: the section
`## <name>` is replaced in place (or appended), so the page always holds each benchmark's
latest run with its commit, date, machine and command. `python benchmarks/page.py` prints the
header this machine would get.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "benchmarks.md"
TITLE = (
    "# Benchmarks\n\n"
    "Written by the scripts in `benchmarks/`: each section is the latest run of one script, "
    "headed by the commit, date, machine and command that made it. Rerun a script to replace "
    "its section.\n"
)


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return ""
    return done.stdout.strip()


def commit() -> str:
    """The short HEAD commit, with "+dirty" when tracked files differ from it; $MNISTCNN_COMMIT
    where set (a copy of the tree whose .git is not its own, as on a lent GPU machine)."""
    if named := os.environ.get("MNISTCNN_COMMIT"):
        return named
    head = _git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


def machine() -> str:
    """CPU model, core count and, when CUDA is available, the GPU's name."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores"
    try:
        import torch
    except ImportError:
        return text
    return text + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")


def command_line() -> str:
    """The command that is running, as a user would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    return shlex.join(["python", str(shown), *sys.argv[1:]])


def header(command: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"Commit {commit()}, {now}, {machine()}.\n\n```bash\n{command}\n```\n"


def _sections(text: str) -> list[tuple[str, list[str]]]:
    """Split a page into (heading, lines) at each `## ` heading outside a code fence."""
    parts: list[tuple[str, list[str]]] = [("", [])]
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            parts.append((line[3:].strip(), [line]))
        else:
            parts[-1][1].append(line)
    return parts


def _replace(page: Path, name: str, body: str) -> None:
    """Replace (or append) the section `## <name>` of `page` with `body`, atomically."""
    text = page.read_text(encoding="utf-8") if page.exists() else TITLE
    parts = _sections(text)
    blocks = ["\n".join(lines).strip() + "\n" for _, lines in parts]
    names = [heading for heading, _ in parts]
    if name in names:
        blocks[names.index(name)] = body
    else:
        blocks.append(body)
    page.parent.mkdir(parents=True, exist_ok=True)
    tmp = page.with_name(page.name + ".tmp")
    tmp.write_text("\n".join(block for block in blocks if block.strip()), encoding="utf-8")
    os.replace(tmp, page)
    print(f"wrote section '{name}' of {page}", file=sys.stderr)


def write_section(name: str, command: str, markdown: str, page: Path | None = None) -> None:
    """Replace (or append) the section `## <name>` of `page` (docs/benchmarks.md) with a table."""
    _replace(page or PAGE, name, f"## {name}\n\n{header(command)}\n{markdown.strip()}\n")


def copy_section(name: str, page: Path, as_name: str) -> None:
    """Copy the section `## <name>` of docs/benchmarks.md, its header included, into `page` as
    `## <as_name>` (the README's results are the Speed section as it was written)."""
    sections = _sections(PAGE.read_text(encoding="utf-8"))
    (lines,) = [lines for heading, lines in sections if heading == name]
    body = "\n".join([f"## {as_name}", *lines[1:]]).strip() + "\n"
    _replace(page, as_name, body)


if __name__ == "__main__":
    print(header(command_line()))
