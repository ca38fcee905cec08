"""The docs cannot drift from the code: docs/configs.md is what ``lrn.configdoc`` renders, every group,
option and default of ``lrn train --help`` is documented with the same value, every key README.md and
docs/commands.md name exists, README.md stays a front page, and every relative link resolves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lrn import configdoc
from lrn.config import CONF_DIR

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
REGENERATE = "python -m lrn.configdoc > docs/configs.md"


def test_configs_page_is_what_configdoc_renders_now():
    page = (DOCS / "configs.md").read_text()
    assert page == configdoc.render(), f"docs/configs.md is stale: run `{REGENERATE}` and commit it"


# --- lrn train --help against the docs ---------------------------------------------------------------


def train_help() -> tuple[dict[str, list[str]], dict[str, object]]:
    """``lrn train --help`` as the user sees it: group -> options, and dotted key -> default."""
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "lrn.cli", "train", "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    groups_part = out.split("== Config groups ==", 1)[1].split("== Config ==", 1)[0]
    groups = {}
    for line in groups_part.splitlines():
        match = re.fullmatch(r"(\w+): (.+)", line.strip())
        if match:
            groups[match.group(1)] = [o.strip() for o in match.group(2).split(",")]
    config_part = out.split("== Config ==", 1)[1]
    config_yaml = config_part.split("\n", 2)[2].split("\nExamples:", 1)[0]  # after "Any key below ..."
    return groups, configdoc.flat(yaml.safe_load(config_yaml))


def table_rows(text: str) -> dict[str, str]:
    """First column (a code span) -> second column of every table row ``| `key` | cell | ...``."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"\| `([^`]+)` \| (`(?:[^`\\]|\\.)*`|[^|]*?) \|", line)
        if match:
            rows.setdefault(match.group(1), match.group(2))
    return rows


def test_every_group_option_and_default_of_train_help_is_documented_with_the_same_value():
    groups, keys = train_help()
    assert "sampler" in groups and "trainer.steps" in keys  # the parse found the real --help
    documented = (DOCS / "configs.md").read_text() + (DOCS / "commands.md").read_text()
    rows = table_rows((DOCS / "configs.md").read_text().split("## The other group options", 1)[0])
    missing = [f"{g}={o}" for g, options in groups.items() for o in [g, *options] if f"`{o}`" not in documented]
    assert not missing, f"--help lists these, docs/configs.md and docs/commands.md do not: {missing}; " \
                        f"run `{REGENERATE}`"
    wrong = {k: (configdoc.cell(v), rows.get(k)) for k, v in keys.items() if rows.get(k) != configdoc.cell(v)}
    assert not wrong, f"key: (--help's default, docs/configs.md's): {wrong}; run `{REGENERATE}`"


TOP = ("model", "dataset", "sampler", "ppo", "trainer", "rollout", "eval", "logger")
FILE_SUFFIXES = {"py", "json", "jsonl", "yaml", "safetensors", "md", "png", "csv", "txt", "log", "sh", "distcp"}
KEY = re.compile(r"(?<![\w./$<-])((?:" + "|".join(TOP) + r")(?:\.(?:[A-Za-z_]\w*|\{[\w,]+\}))+)")
CHOICE = re.compile(r"(?<![\w./+<-])(model|dataset|sampler|ppo|experiment)=([^\s`'\"\\]+)")


def code_of(text: str) -> str:
    """Code blocks and inline code spans: where a doc names keys and overrides."""
    blocks = re.findall(r"```.*?```", text, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return "\n".join(blocks + spans)


def expand(key: str) -> list[str]:
    """``trainer.{steps,batch_size}`` -> ``trainer.steps``, ``trainer.batch_size``."""
    match = re.search(r"\{([\w,]+)\}", key)
    if not match:
        return [key]
    return [k for part in match.group(1).split(",") for k in expand(key[:match.start()] + part + key[match.end():])]


def known_keys() -> set[str]:
    """Every key of the composed config under any option of the groups that add keys, and their prefixes."""
    leaves = set(configdoc.defaults())
    for group in ("sampler", "dataset", "model"):
        for option in configdoc.groups()[group]:
            leaves |= set(configdoc.defaults([f"{group}={option}"]))
    return leaves | {".".join(k.split(".")[:i]) for k in leaves for i in range(1, k.count(".") + 1)}


@pytest.mark.parametrize("page", ["README.md", "docs/commands.md"])
def test_every_key_and_group_option_a_page_names_exists(page):
    code = code_of((ROOT / page).read_text())
    keys = known_keys()
    named = {k for raw in KEY.findall(code) for k in expand(raw) if k.rsplit(".", 1)[1] not in FILE_SUFFIXES}
    unknown = sorted(k for k in named if k not in keys)
    assert not unknown, f"{page} names keys the composed config does not have: {unknown}"
    groups = configdoc.groups()
    bad = []
    for group, value in CHOICE.findall(code):
        for option in value.split(","):
            if "=" in option:
                break  # the next override of a comma list: `--baseline sampler=uniform,trainer.batch_size=32`
            if not re.match(r"[a-z0-9]", option):
                continue  # a placeholder: `sampler=<name>`, `dataset=NAME`, `dataset=...`
            if (group, option) == ("sampler", "predictive") and not (CONF_DIR / "sampler" / "predictive.yaml").exists():
                continue  # documented ahead of its config, which is merged into main from another branch
            if option not in groups[group]:
                bad.append(f"{group}={option}")
    assert not bad, f"{page} names group options conf/ does not have: {bad}"


# --- README as a front page, and links -------------------------------------------------------------


def test_readme_is_a_front_page_of_at_most_200_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/ (at most 200)"


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped, spaces to '-'; repeats -1, -2."""
    seen: dict[str, int] = {}
    out = set()
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


PAGES = [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s):, mailto:
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"
