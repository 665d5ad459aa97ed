"""The documentation stays true to the repository: README.md, CONTRIBUTING.md, CHANGELOG.md and
docs/*.md link only to files (and headings) that exist inside the repository,
docs/operations.md's settings table has a row for every setting cthm has, and docs/api.md's
endpoint table names every API route (method and path). A new setting or route fails here until
it is documented.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest
from fastapi.routing import APIRoute, APIRouter

import cthm.api.routes
from cthm.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted(
    [
        ROOT / "README.md",
        ROOT / "CONTRIBUTING.md",
        ROOT / "CHANGELOG.md",
        *(ROOT / "docs").glob("*.md"),
    ]
)
OPERATIONS = ROOT / "docs" / "operations.md"
API = ROOT / "docs" / "api.md"

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)


def prose(text: str) -> str:
    """The text without code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {anchor(heading) for heading in HEADING.findall(FENCE.sub("", path.read_text()))}


def relative_links(path: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(prose(path.read_text()))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


def test_the_documents_exist() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in DOCS}
    assert {
        "docs/operations.md",
        "docs/api.md",
        "docs/security.md",
        "docs/development.md",
        "docs/neutron.md",
    } <= names


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_a_file_and_heading_in_the_repository(doc: Path) -> None:
    broken = []
    for target in relative_links(doc):
        file_part, _, fragment = target.partition("#")
        resolved = (doc.parent / file_part).resolve() if file_part else doc
        if not resolved.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif not resolved.exists():
            broken.append(f"{target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target}: no heading #{fragment} in {resolved.name}")
    assert broken == [], f"{doc.relative_to(ROOT)}: broken links: {broken}"


def test_no_document_points_outside_the_repository_in_prose_or_code() -> None:
    # A path such as `../shared/DESIGN.md` in a code span is no link but misleads as much.
    outside = {
        doc.relative_to(ROOT).as_posix(): re.findall(r"\.\./[\w./-]+", doc.read_text())
        for doc in DOCS
    }
    escaping = {
        name: [
            p for p in paths if not (ROOT / name).parent.joinpath(p).resolve().is_relative_to(ROOT)
        ]
        for name, paths in outside.items()
    }
    assert {name: paths for name, paths in escaping.items() if paths} == {}


def settings_rows() -> list[tuple[str, str]]:
    """(first cell, whole row) of every row of the settings table in docs/operations.md."""
    text = OPERATIONS.read_text()
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [(row.split("|")[1], row) for row in rows]


def test_every_setting_has_a_row_in_the_operations_settings_table() -> None:
    rows = settings_rows()
    missing = []
    for name in Settings.model_fields:
        matching = [row for first, row in rows if f"`{name}`" in first]
        if not matching:
            missing.append(f"{name}: no row")
        elif f"CTHM_{name.upper()}" not in matching[0]:
            missing.append(f"{name}: its row does not name CTHM_{name.upper()}")
    assert missing == [], "docs/operations.md, Settings: " + "; ".join(missing)


def test_the_settings_table_names_no_setting_cthm_does_not_have() -> None:
    known = set(Settings.model_fields)
    named = {name for first, _ in settings_rows() for name in re.findall(r"`([a-z_]+)`", first)}
    assert named - known == set()


def api_routes() -> set[tuple[str, str]]:
    """(method, path with parameters as {}) of every route the API's route modules declare."""
    found = set()
    for module_info in pkgutil.iter_modules(cthm.api.routes.__path__):
        module = importlib.import_module(f"cthm.api.routes.{module_info.name}")
        # Every router a module declares (kernel_state has a second one, included first).
        routers = [value for value in vars(module).values() if isinstance(value, APIRouter)]
        for route in (route for router in routers for route in router.routes):
            if isinstance(route, APIRoute) and route.include_in_schema:
                for method in (route.methods or set()) - {"HEAD"}:
                    found.add((method, re.sub(r"\{[^}]*\}", "{}", route.path)))
    return found


def documented_endpoints() -> set[tuple[str, str]]:
    """(method, path) of every `METHOD[/METHOD...] /path` code span in docs/api.md's tables."""
    found = set()
    for line in API.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        for span in re.findall(r"`([A-Z/]+) (/[^`?\s]*)[^`]*`", line):
            methods, path = span
            for method in methods.split("/"):
                found.add((method, re.sub(r"\{[^}]*\}", "{}", path)))
    return found


def test_the_endpoint_table_names_every_api_route() -> None:
    routes = api_routes()
    assert ("GET", "/v2.0/audit_events") in routes  # the one a new user missed
    missing = sorted(routes - documented_endpoints())
    assert missing == [], f"docs/api.md's endpoint table lacks {missing}"


def test_the_endpoint_table_names_no_route_the_api_lacks() -> None:
    # /ui is a page mounted beside the API, /openapi.json FastAPI's own.
    extra = documented_endpoints() - api_routes() - {("GET", "/ui"), ("GET", "/openapi.json")}
    assert sorted(extra) == []


def test_every_audit_outcome_is_described() -> None:
    from cthm.store.audit import Outcome

    security = (ROOT / "docs" / "security.md").read_text()
    assert all(f"`{outcome.value}`" in security for outcome in Outcome)


def test_every_neutron_option_has_a_row_in_the_neutron_guide_and_no_other() -> None:
    # The `[cthm]` options of the L3 agent extension (issue 15): only with the neutron extra.
    pytest.importorskip("oslo_config")
    from cthm.neutron.config import OPTS

    text = (ROOT / "docs" / "neutron.md").read_text()
    section = text.split("\n## The `[cthm]` options\n", 1)[1].split("\n## ", 1)[0]
    rows = {
        line.split("|")[1].strip().strip("`")
        for line in section.splitlines()
        if line.startswith("| `")
    }
    assert rows == {opt.name for opt in OPTS}
    defaults = {
        opt.name: ",".join(opt.default) if isinstance(opt.default, list) else str(opt.default)
        for opt in OPTS
    }
    for line in section.splitlines():
        if line.startswith("| `"):
            name, default = (cell.strip().strip("`") for cell in line.split("|")[1:3])
            assert default.lower() == defaults[name].lower(), f"{name}: documented {default}"
