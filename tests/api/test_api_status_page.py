"""The status page (/ui) over HTTP: login with a token into an HttpOnly, SameSite=Strict cookie,
what each token sees (the API's policy), escaping of every value, its own CSP, logout.

The same page in a real browser, against a real `cthm serve` and kernel: tests/browser.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from urllib.parse import urlencode

import httpx
import pytest

from cthm.api.app import security_headers
from cthm.api.routes import ui
from cthm.domain import ListQuery

from .support import JSON, Api

EVIL = '<script>alert("x")</script>&"'


def login(api: Api, token: str) -> httpx.Response:
    """Posts the login form as a browser does; the client keeps the cookie it sets."""
    return api.as_token(None).post(
        "/ui/login",
        content=urlencode({"token": token}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )


def page(api: Api, url: str = "/ui/") -> httpx.Response:
    return api.as_token(None).get(url, follow_redirects=False)


def set_cookie(response: httpx.Response) -> SimpleCookie:
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(response.headers["set-cookie"])
    return cookie


def router_ids_on(text: str) -> set[str]:
    return set(re.findall(r'id="router-([0-9a-f-]{36})"', text))


def report_status(api: Api, router: JSON, status: str, reason: str, binding: JSON) -> None:
    body = {
        "status": {
            "revision_number": router["revision_number"],
            "status": status,
            "status_reason": reason,
            "conntrack_helpers": [
                {
                    "id": binding["id"],
                    "revision_number": binding["revision_number"],
                    "status": status,
                    "status_reason": reason,
                }
            ],
        }
    }
    response = api.put(f"/v2.0/routers/{router['id']}/status", json=body)
    assert response.status_code == 200, response.text


def test_without_a_session_the_page_is_a_login_form(api: Api) -> None:
    response = page(api)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<form class="login" method="post" action="login">' in response.text
    assert 'id="routers"' not in response.text
    # Not the API's JSON 401: the page authenticates its cookie itself.
    assert "NeutronError" not in response.text
    # /ui redirects to /ui/ (relative links resolve under it).
    assert page(api, "/ui").status_code in (307, 308)


def test_login_sets_a_strict_http_only_cookie_and_shows_every_router(api: Api) -> None:
    first = api.create_router(name="alpha", project_id="p1")
    second = api.create_router(name="beta", project_id="p2")
    assert api.admin_token is not None
    response = login(api, api.admin_token)
    assert response.status_code == 303
    assert response.headers["location"] == "./"
    morsel = set_cookie(response)[ui.COOKIE]
    assert morsel.value == api.admin_token
    assert morsel["httponly"] is True
    assert morsel["samesite"].lower() == "strict"
    assert morsel["path"] == "/ui"
    assert not morsel["secure"]  # plain HTTP here; Secure when the request came over TLS

    shown = page(api)
    assert shown.status_code == 200
    assert router_ids_on(shown.text) == {first["id"], second["id"]}
    assert '<meta http-equiv="refresh" content="5">' in shown.text
    assert 'id="agents"' in shown.text or "No agent has reported" in shown.text


def test_a_refresh_asked_for_before_login_is_kept_after_it(api: Api) -> None:
    form = page(api, "/ui/?refresh=2")
    assert '<form class="login" method="post" action="login?refresh=2">' in form.text
    assert api.admin_token is not None
    response = api.as_token(None).post(
        "/ui/login?refresh=2",
        content=urlencode({"token": api.admin_token}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert response.headers["location"] == "./?refresh=2"
    assert '<meta http-equiv="refresh" content="2">' in page(api, "/ui/?refresh=2").text
    # Bounded: a page cannot be made to reload more than once a second.
    assert '<meta http-equiv="refresh" content="1">' in page(api, "/ui/?refresh=0").text


def test_the_cookie_is_secure_when_the_request_came_over_tls(api: Api) -> None:
    assert api.admin_token is not None
    response = api.as_token(None).post(
        "https://testserver/ui/login",
        content=urlencode({"token": api.admin_token}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert set_cookie(response)[ui.COOKIE]["secure"] is True


def test_a_bad_token_is_refused_with_one_answer(api: Api) -> None:
    for token in ("cthm_" + "A" * 43, "nonsense"):
        response = login(api, token)
        assert response.status_code == 401
        assert "That token was not accepted." in response.text
        assert "set-cookie" not in response.headers
    # Counted in the audit trail as the API's 401s are (the first at once).
    with api.store.unit_of_work(write=False) as repo:
        events = [e for e in repo.audit.list(ListQuery()) if e["action"] == "authenticate"]
    assert [e["detail"].split(" (")[0] for e in events] == ["POST /ui/login"]
    assert login(api, "").status_code == 400
    crowded = api.as_token(None).post(
        "/ui/login",
        content="&".join(f"f{i}=x" for i in range(50)),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert crowded.status_code == 400
    assert "Paste an API token." in crowded.text
    wrong_type = api.as_token(None).post("/ui/login", json={"token": api.admin_token})
    assert wrong_type.status_code == 400


def test_a_project_token_sees_its_project_only_and_no_agents(api: Api) -> None:
    mine = api.create_router(name="mine", project_id="p1")
    api.create_router(name="theirs", project_id="p2")
    reader = api.issue_token("p1", ["reader"])
    assert login(api, reader).status_code == 303
    shown = page(api)
    assert router_ids_on(shown.text) == {mine["id"]}
    assert "Agents are shown to admin tokens only." in shown.text


def test_every_value_is_escaped(api: Api) -> None:
    router = api.create_router(name=EVIL, project_id="p1")
    binding = api.create_helper(router["id"])
    router = api.get(f"/v2.0/routers/{router['id']}").json()["router"]
    report_status(api, router, "ERROR", f"failed: {EVIL}", binding)
    assert api.admin_token is not None
    login(api, api.admin_token)
    text = page(api).text
    assert "<script>" not in text
    assert html_escaped(EVIL) in text
    assert f"failed: {html_escaped(EVIL)}" in text
    assert 'class="status status-ERROR">ERROR<' in text


def html_escaped(text: str) -> str:
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#x27;")
    )


def test_the_page_has_its_own_strict_csp_and_the_other_security_headers(api: Api) -> None:
    assert api.admin_token is not None
    login(api, api.admin_token)
    for response in (page(api), login(api, "nonsense")):
        csp = response.headers["content-security-policy"]
        assert csp == ui.CONTENT_SECURITY_POLICY
        assert "unsafe-inline" not in csp
        assert "script-src" not in csp  # default-src 'none': no script at all
        assert "frame-ancestors 'none'" in csp
        for name, value in security_headers(tls=False):
            if name != "Content-Security-Policy":
                assert response.headers[name] == value, name
    # The API's responses keep the API's policy.
    assert (
        api.get("/v2.0/routers").headers["content-security-policy"]
        == dict(security_headers(tls=False))["Content-Security-Policy"]
    )


def test_logout_and_revocation_end_the_session(api: Api) -> None:
    member = api.issue_token("p1", ["member"])
    assert login(api, member).status_code == 303
    assert 'id="router-summary"' in page(api).text
    out = api.as_token(None).post("/ui/logout", follow_redirects=False)
    assert out.status_code == 303
    assert set_cookie(out)[ui.COOKIE]["max-age"] == "0"
    assert 'class="login"' in page(api).text

    assert login(api, member).status_code == 303
    with api.store.unit_of_work() as repo:
        (token,) = [t for t in repo.tokens.list(ListQuery()) if t.project_id == "p1"]
        repo.tokens.revoke(token.id, datetime.now(UTC))
    ended = page(api)
    assert ended.status_code == 401
    assert "Your session has ended" in ended.text
    assert set_cookie(ended)[ui.COOKIE]["max-age"] == "0"


@pytest.mark.parametrize("path", ["/ui/nothing", "/uix"])
def test_other_paths_are_not_the_page(api: Api, path: str) -> None:
    response = api.as_token(None).get(path)
    # /ui/... is the page's own (404 there); /uix is the API's: authentication first.
    assert response.status_code == (404 if path.startswith("/ui/") else 401)
