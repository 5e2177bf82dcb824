"""Readers for the stack's files as the tools read them: compose interpolation, Dockerfiles, PromQL names."""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from doodle_lib.settings import PROJECT_ROOT

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yaml"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
MONITORING = PROJECT_ROOT / "monitoring"
DESIGN = PROJECT_ROOT.parent / "shared" / "DESIGN.md"

# Compose's interpolation: $$, $NAME, ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?err}, ${NAME?err}.
VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    """A ${NAME:?message} whose variable is unset or empty: compose stops with the message."""


def interpolate(text: str, env: dict[str, str], errors: list[str]) -> str:
    """One string as compose resolves it; messages of missing required variables go to `errors`."""

    def resolve(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        value = env.get(name)
        present = value is not None and (value != "" or not (op or "").startswith(":"))
        if op in (":-", "-"):
            return value if present else arg
        if op in (":?", "?"):
            if not present:
                errors.append(f"{name}: {arg}")
                return ""
            return value
        if op in (":+", "+"):
            return arg if present else ""
        return value or ""

    return VARIABLE.sub(resolve, text)


def raw_compose() -> dict:
    """docker-compose.yaml parsed, anchors and merge keys resolved, nothing interpolated."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def resolve(node, env: dict[str, str], errors: list[str]):
    """Interpolate every string of a parsed compose file (compose interpolates values, not comments)."""
    if isinstance(node, dict):
        return {key: resolve(value, env, errors) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value, env, errors) for value in node]
    if isinstance(node, str):
        return interpolate(node, env, errors)
    return node


def compose(env: dict[str, str]) -> dict:
    """The compose file as `docker compose config` would see it with this environment, or MissingVariable."""
    errors: list[str] = []
    resolved = resolve(raw_compose(), env, errors)
    if errors:
        raise MissingVariable("; ".join(dict.fromkeys(errors)))
    return resolved


def variables(node) -> list[tuple[str, str | None, str]]:
    """Every (name, operator, argument) the compose file interpolates."""
    found = []
    if isinstance(node, dict):
        for value in node.values():
            found += variables(value)
    elif isinstance(node, list):
        for value in node:
            found += variables(value)
    elif isinstance(node, str):
        for match in VARIABLE.finditer(node):
            if not match["escaped"]:
                found.append((match["name"] or match["bare"], match["op"], match["arg"] or ""))
    return found


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file (comments and blank lines skipped), as compose reads .env."""
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pairs[key.strip()] = value.split(" #")[0].strip()
    return pairs


def environment(service: dict) -> dict[str, str]:
    """A service's environment as a mapping (compose accepts a mapping or a list of KEY=VALUE)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


@dataclass
class Dockerfile:
    """A Dockerfile as instructions; `stages` holds the instructions of each FROM."""

    path: Path
    stages: list[list[tuple[str, str]]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> "Dockerfile":
        text = re.sub(r"\\\n", " ", "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
        ))
        parsed = cls(path)
        for line in text.splitlines():
            if not line.strip():
                continue
            instruction, _, argument = line.strip().partition(" ")
            instruction = instruction.upper()
            if instruction == "FROM":
                parsed.stages.append([])
            parsed.stages[-1].append((instruction, argument.strip()))
        return parsed

    def all(self, instruction: str, stage: int | None = None) -> list[str]:
        stages = self.stages if stage is None else [self.stages[stage]]
        return [argument for one in stages for name, argument in one if name == instruction]

    def env(self) -> dict[str, str]:
        """ENV of the final stage (KEY=VALUE pairs; values here have no spaces)."""
        pairs = {}
        for argument in self.all("ENV", -1):
            for item in argument.split():
                key, _, value = item.partition("=")
                pairs[key] = value
        return pairs


PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
    "inf", "nan",
}
LABEL_CLAUSE = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR_BODY = re.compile(r"\{([^}]*)\}")
IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()")


@dataclass
class Query:
    """Metric names, label matchers and grouping labels of one PromQL expression (enough for checks)."""

    metrics: set[str]
    matched_labels: set[str]
    grouping_labels: set[str]


def parse_promql(expr: str) -> Query:
    """The metric names a PromQL expression reads, and the labels it matches on or groups by."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    grouping = {label.strip() for _, labels in LABEL_CLAUSE.findall(text) for label in labels.split(",") if label.strip()}
    text = LABEL_CLAUSE.sub(" ", text)
    matched = {m.split("=")[0].split("!")[0].strip() for body in SELECTOR_BODY.findall(text)
               for m in body.split(",") if m.strip()}
    text = SELECTOR_BODY.sub(" ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = re.sub(r"\boffset\s+\S+", " ", text)
    metrics = {name for name in IDENTIFIER.findall(text) if name.lower() not in PROMQL_KEYWORDS}
    return Query(metrics, matched, grouping)


def promtool() -> str:
    """The promtool binary; a clear failure (never a skip) when it is missing."""
    path = shutil.which("promtool")
    if path is None:
        import pytest

        pytest.fail("promtool is missing: apt-get install prometheus (Debian 12) provides it; .ci/run installs it")
    return path


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())
