"""A SIP call with sipp (Debian's sip-tester): a UAC in the client namespace calls a UAS in the
server namespace through the router, IPv4 (through its NAT) or IPv6 (routed).

The UAC's INVITE carries an SDP offering audio at MEDIA_PORT on its own address. The kernel's
sip helper reads that SDP as the INVITE crosses the router and expects the media coming back
(an RTP flow from the server side to that address and port); on IPv4 its NAT part also rewrites
the SDP to the router's public address and a port it maps back to the client. The UAS logs the
INVITE as it arrived (`-trace_msg`), so the test sees what the far end was told. The UAC holds
the call for HOLD_MS, during which `sip_call` runs the caller's media check, then hangs up.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import pytest

T = TypeVar("T")
Transport = Literal["udp", "tcp"]

SIP_PORT = 5060
UAC_PORT = 5061
MEDIA_PORT = 49170
HOLD_MS = 3000
_INVITE_TIMEOUT = 5.0
_POLL = 0.02
_TRANSPORT_FLAG = {"udp": "u1", "tcp": "t1"}


def _sdp(version: int, port: int) -> str:
    """An SDP offer or answer: PCMU audio at `port` on the sender's own media address."""
    return f"""\
      v=0
      o=cthm {version} {version} IN IP[media_ip_type] [media_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio {port} RTP/AVP 0
      a=rtpmap:0 PCMU/8000"""


def _uac_in_dialog(method: str, cseq: int) -> str:
    """A request of the UAC inside the call (ACK, BYE): to the UAS's tag from its 200."""
    return f"""\
    <![CDATA[

      {method} sip:service@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]cthm[call_number]
      To: <sip:service@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} {method}
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>"""


UAC_SCENARIO = f"""\
<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="cthm uac">
  <send retrans="500">
    <![CDATA[

      INVITE sip:service@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]cthm[call_number]
      To: <sip:service@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

{_sdp(1, MEDIA_PORT)}

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200"/>
  <send>
{_uac_in_dialog("ACK", 1)}
  </send>
  <pause milliseconds="{HOLD_MS}"/>
  <send retrans="500">
{_uac_in_dialog("BYE", 2)}
  </send>
  <recv response="200"/>
</scenario>
"""

UAS_SCENARIO = f"""\
<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="cthm uas">
  <recv request="INVITE"/>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]cthm[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

{_sdp(2, 49180)}

    ]]>
  </send>
  <recv request="ACK"/>
  <recv request="BYE"/>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""


def require_sipp() -> None:
    """Skips (fails in CI, as a missing kernel module does) when sipp is not installed."""
    if shutil.which("sipp") is None:
        reason = "sipp is not installed (Debian package sip-tester; `make system-packages`)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@dataclass(frozen=True)
class Offer:
    """The SDP media offer of the INVITE as the UAS received it."""

    address: str
    port: int
    invite: str


@dataclass(frozen=True)
class CallOutcome:
    offer: Offer
    uac_code: int
    uas_code: int
    logs: str

    @property
    def completed(self) -> bool:
        """Both ends ran the whole scenario: INVITE, 200, ACK, BYE, 200."""
        return self.uac_code == 0 and self.uas_code == 0


def sip_call(
    client: tuple[str, str],
    server: tuple[str, str],
    workdir: Path,
    during: Callable[[Offer], T],
    *,
    transport: Transport = "udp",
) -> tuple[CallOutcome, T]:
    """One call from `client` (namespace, address) to `server`; `during(offer)` runs while the
    call is up. Both sipp processes are stopped by pid whatever happens."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "uac.xml").write_text(UAC_SCENARIO)
    (workdir / "uas.xml").write_text(UAS_SCENARIO)
    messages = workdir / "uas-messages.log"
    (client_ns, client_addr), (server_ns, server_addr) = client, server
    common = ["-m", "1", "-t", _TRANSPORT_FLAG[transport], "-nostdin", "-timeout", "15s"]
    uas = _sipp(
        server_ns,
        ["-sf", "uas.xml", "-i", server_addr, "-mi", server_addr, "-p", str(SIP_PORT), *common],
        ["-trace_msg", "-message_file", str(messages)],
        workdir / "uas.out",
        workdir,
    )
    uac = None
    try:
        _wait_listening(server_ns, transport, uas, workdir)
        remote = f"[{server_addr}]" if ":" in server_addr else server_addr
        uac = _sipp(
            client_ns,
            [f"{remote}:{SIP_PORT}", "-sf", "uac.xml", "-i", client_addr, "-p", str(UAC_PORT)],
            ["-mi", client_addr, *common, "-timeout_error"],
            workdir / "uac.out",
            workdir,
        )
        offer = _wait_offer(messages, uac, workdir)
        value = during(offer)
        uac_code = uac.wait(HOLD_MS / 1000 + 10)
        uas_code = uas.wait(5)
    finally:
        for process in (uac, uas):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(5)
    return CallOutcome(offer, uac_code, uas_code, _logs(workdir)), value


def _sipp(
    namespace: str, args: list[str], extra: list[str], out: Path, cwd: Path
) -> subprocess.Popen[bytes]:
    with out.open("wb") as log:
        # `ip netns exec` execs sipp: the pid is sipp's own.
        return subprocess.Popen(
            ["ip", "netns", "exec", namespace, "sipp", *args, *extra],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )


def _wait_listening(
    namespace: str, transport: Transport, uas: subprocess.Popen[bytes], workdir: Path
) -> None:
    flag = "-lun" if transport == "udp" else "-ltn"
    deadline = time.monotonic() + 5.0
    for _ in range(int(5.0 / _POLL)):
        listing = subprocess.run(
            ["ip", "netns", "exec", namespace, "ss", "-H", flag, f"sport = :{SIP_PORT}"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
        if listing.strip() or uas.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(_POLL)
    if uas.poll() is not None or not listing.strip():
        raise AssertionError(
            f"sipp UAS did not listen on {transport}/{SIP_PORT}:\n{_logs(workdir)}"
        )


_OFFER = re.compile(r"^c=IN IP[46] (\S+)\s*$.*?^m=audio (\d+) ", re.M | re.S)


def _wait_offer(messages: Path, uac: subprocess.Popen[bytes], workdir: Path) -> Offer:
    """Polls (bounded) the UAS's message log for the INVITE it received."""
    deadline = time.monotonic() + _INVITE_TIMEOUT
    for _ in range(int(_INVITE_TIMEOUT / _POLL)):
        text = messages.read_text(errors="replace") if messages.exists() else ""
        start = text.find("INVITE sip:")
        if start >= 0 and (found := _OFFER.search(text, start)):
            return Offer(found.group(1), int(found.group(2)), text[start : found.end()])
        if uac.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(_POLL)
    raise AssertionError(f"the UAS received no INVITE with an SDP offer:\n{_logs(workdir)}")


def _logs(workdir: Path) -> str:
    parts = []
    for name in ("uac.out", "uas.out", "uas-messages.log"):
        path = workdir / name
        if path.exists():
            parts.append(f"--- {name}\n{path.read_text(errors='replace')[-3000:]}")
    return "\n".join(parts)
