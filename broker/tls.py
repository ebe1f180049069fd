"""Client-side TLS for the federation's broker, and errors an operator can act on.

OpenSSL reports a wrong CA, a revoked certificate or a typo in a host name as terse
codes (``TLSV1_ALERT_UNKNOWN_CA``, ``certificate verify failed``), often wrapped by the
MQTT library. ``explain_tls_error`` turns them into what to change, so the agent and the
coordinator can log one useful line instead of a stack trace.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
from collections.abc import Iterator
from pathlib import Path

# OpenSSL X509_V_ERR_* codes seen while checking the broker's certificate.
_VERIFY_HINTS = {
    2: "the CA file does not hold the certificate that signed the broker's certificate",
    9: "the broker's certificate is not valid yet: check this machine's clock (NTP)",
    10: "the broker's certificate has expired: re-provision the broker certificate and "
    "restart mosquitto",
    18: "the broker presents a self-signed certificate, not one signed by the federation CA",
    19: "the broker's certificate chain ends in a CA that is not the one in ca_file",
    20: "the broker's certificate was not signed by the CA in ca_file: use the ca.pem of "
    "this federation's bundle, and check that broker points at this federation's broker",
    21: "the broker's certificate was not signed by the CA in ca_file: use the ca.pem of "
    "this federation's bundle",
    23: "the broker's certificate has been revoked",
    62: "the broker's certificate does not name the host in the broker URL",
}

# Substrings of OpenSSL reasons and messages (lower case), most specific first.
_TEXT_HINTS = (
    (
        "alert unknown ca",
        "the broker does not trust this client's certificate: it was issued by another CA. "
        "Use the cert_file/key_file of this federation's bundle",
    ),
    (
        "certificate revoked",
        "the broker rejected this client's certificate as revoked. Ask the federation admin "
        "for a new identity (re-provision) and install the new bundle",
    ),
    (
        "alert certificate expired",
        "this client's certificate has expired. Re-provision the identity and install the "
        "new bundle",
    ),
    (
        "certificate required",
        "the broker requires a client certificate: set cert_file and key_file to this "
        "identity's bundle",
    ),
    (
        "peer did not return a certificate",
        "the broker requires a client certificate: set cert_file and key_file to this "
        "identity's bundle",
    ),
    (
        "alert bad certificate",
        "the broker rejected this client's certificate: check that cert_file is the "
        "identity's certificate from this federation's bundle and that the broker's CRL "
        "and CA are current",
    ),
    (
        "key values mismatch",
        "key_file does not belong to cert_file: take both from the same identity bundle",
    ),
    (
        "key_values_mismatch",
        "key_file does not belong to cert_file: take both from the same identity bundle",
    ),
    (
        "no start line",
        "a certificate or key file is not PEM: point ca_file, cert_file and key_file at the "
        "bundle's .pem and .key files",
    ),
    (
        "pem lib",
        "a certificate or key file could not be read as PEM: point cert_file and key_file "
        "at the bundle's .pem and .key files",
    ),
    (
        "wrong version number",
        "the broker port does not speak TLS: use the broker's TLS port with mqtts://, or "
        "mqtt:// for a plain listener",
    ),
    ("hostname mismatch", _VERIFY_HINTS[62]),
    ("ip address mismatch", _VERIFY_HINTS[62]),
    ("certificate has expired", _VERIFY_HINTS[10]),
    ("self-signed certificate", _VERIFY_HINTS[19]),
    ("self signed certificate", _VERIFY_HINTS[19]),
    ("unable to get local issuer certificate", _VERIFY_HINTS[20]),
    (
        "not authorized",
        "the broker refused the login: check username and password (password mode), or "
        "that this identity is provisioned and not revoked",
    ),
    (
        "not authorised",
        "the broker refused the login: check username and password (password mode), or "
        "that this identity is provisioned and not revoked",
    ),
    (
        "bad user name or password",
        "the broker refused the username or password: copy them from the identity bundle",
    ),
)


def _check_file(path: Path | str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"{what} {p} does not exist: point {what} at the file in this identity's bundle"
        )
    return p


def client_tls_context(
    ca_file: Path | str, cert_file: Path | str | None = None, key_file: Path | str | None = None
) -> ssl.SSLContext:
    """A context that trusts only the federation CA and presents the identity's certificate.

    The system trust store is left out on purpose: any public CA could otherwise issue a
    certificate for the broker's name. Hostname checking stays on. Missing files raise
    FileNotFoundError naming the setting to fix; ``cert_file`` without ``key_file`` reads
    the key from the certificate file.
    """
    ca = _check_file(ca_file, "ca_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(ca))
    if cert_file is not None:
        cert = _check_file(cert_file, "cert_file")
        key = _check_file(key_file, "key_file") if key_file is not None else None
        ctx.load_cert_chain(str(cert), str(key) if key is not None else None)
    elif key_file is not None:
        raise ValueError("key_file is set but cert_file is not: set both or neither")
    return ctx


CONNACK_CODES = {
    0: "accepted",
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


def _mqtt_string(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!H", len(data)) + data


def tls_probe(
    host: str,
    port: int,
    context: ssl.SSLContext,
    *,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 10.0,
) -> int:
    """TLS handshake plus one MQTT 3.1.1 CONNECT; returns the CONNACK code (0 = accepted).

    With TLS 1.3 the broker judges the client certificate after the client considers the
    handshake done, so MQTT libraries only see "connection lost" and drop the alert. This
    probe reads the broker's answer itself, so a revoked or foreign certificate surfaces
    as the ``ssl.SSLError`` that ``explain_tls_error`` understands.
    """
    flags = 0x02  # clean session; an empty client id is then allowed
    payload = _mqtt_string("")
    if username is not None:
        flags |= 0x80
        payload += _mqtt_string(username)
        if password is not None:
            flags |= 0x40
            payload += _mqtt_string(password)
    body = _mqtt_string("MQTT") + bytes([4, flags]) + struct.pack("!H", 30) + payload
    if len(body) > 127:
        raise ValueError("username and password too long for the probe")
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        if tls.version() == "TLSv1.3":
            _await_verdict(tls, timeout)
        tls.sendall(bytes([0x10, len(body)]) + body)
        answer = b""
        while len(answer) < 4:
            chunk = tls.recv(4 - len(answer))
            if not chunk:
                raise ssl.SSLEOFError("the broker closed the connection before CONNACK")
            answer += chunk
        if answer[0] != 0x20:
            raise ConnectionError(f"unexpected answer to CONNECT: {answer!r}")
        if answer[3] == 0:
            tls.sendall(b"\xe0\x00")  # DISCONNECT, so no will or warning on the broker
        return answer[3]


def _await_verdict(tls: ssl.SSLSocket, timeout: float) -> None:
    """Wait for the broker's first record after a TLS 1.3 handshake, before sending anything.

    A broker that accepts the certificate sends session tickets; one that rejects it sends
    an alert and closes. Data sent into a closed connection makes the kernel answer with a
    reset, which discards the alert, so the client would only see an EOF (this is what
    MQTT libraries, which send CONNECT at once, run into).
    """
    readable, _, _ = select.select([tls], [], [], timeout)
    if not readable:
        return  # a broker that sends no tickets: fall through to CONNECT
    tls.setblocking(False)
    try:
        data = tls.recv(1)
    except ssl.SSLWantReadError:
        return  # only tickets so far: accepted
    finally:
        tls.settimeout(timeout)
    if not data:
        raise ssl.SSLEOFError("the broker closed the connection after the TLS handshake")
    raise ConnectionError(f"unexpected data from the broker before CONNECT: {data!r}")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        todo.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
        todo.extend(getattr(e, "exceptions", ()))  # ExceptionGroup


def explain_tls_error(exc: BaseException) -> str:
    """One sentence on what to fix for a failed TLS/MQTT connection, then the raw error."""
    raw = f"{type(exc).__name__}: {exc}"
    for e in _chain(exc):
        if isinstance(e, ssl.SSLCertVerificationError):
            hint = _VERIFY_HINTS.get(e.verify_code or -1)
            if hint:
                return f"{hint} ({e.verify_message or e})"
        if isinstance(e, FileNotFoundError):
            return (
                str(e)
                if e.filename is None
                else (f"file {e.filename} does not exist: check ca_file, cert_file and key_file")
            )
        if isinstance(e, PermissionError):
            return (
                f"cannot read {e.filename or 'a TLS file'}: the service user needs read "
                "access to the identity's key and certificates"
            )
        if isinstance(e, ConnectionRefusedError):
            return (
                "nothing accepts connections at the broker address: check the host and "
                f"port in the broker URL and that mosquitto runs ({raw})"
            )
    for e in _chain(exc):
        text = " ".join(str(x) for x in (getattr(e, "reason", None) or "", e)).lower()
        text = text.replace("_", " ")
        for needle, hint in _TEXT_HINTS:
            if needle.replace("_", " ") in text:
                return f"{hint} ({raw})"
    if any(isinstance(e, ssl.SSLEOFError | ConnectionResetError) for e in _chain(exc)):
        return (
            "the broker closed the connection during the TLS handshake: it probably "
            "rejected this client's certificate (another CA, revoked, or expired); see "
            f"the broker's log ({raw})"
        )
    return f"TLS connection to the broker failed: {raw}"
