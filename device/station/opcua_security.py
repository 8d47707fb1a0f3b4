"""Who may do what on the station's OPC UA server: users, certificates, and the services each may use.

Anonymous sessions read and subscribe (or are refused); writes and method calls (``Inspect``,
``SwitchProduct``) need a user from the config — a password checked against its ``kenpin
hash-token`` hash — or a client certificate from ``opcua.trusted_certs``. Nobody gets asyncua's
admin role: the address space cannot be changed from the network.
"""
from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import secrets
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.crypto.permission_rules import PermissionRuleset, User, UserRole
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from device.dashboard.auth import FailureLimiter, verify_token
from device.errors import KenpinError
from device.station.opcua_settings import OpcUaSettings

log = logging.getLogger("kenpin.opcua")

_O = ua.ObjectIds
# Services that only look: sessions, browsing, reading, subscriptions. Anything not listed (writes,
# calls, history updates, node management, server registration) is refused to anonymous sessions.
READ_SERVICES = frozenset(ua.NodeId(i) for i in (
    _O.CreateSessionRequest_Encoding_DefaultBinary, _O.ActivateSessionRequest_Encoding_DefaultBinary,
    _O.CloseSessionRequest_Encoding_DefaultBinary, _O.CloseSecureChannelRequest_Encoding_DefaultBinary,
    _O.GetEndpointsRequest_Encoding_DefaultBinary, _O.FindServersRequest_Encoding_DefaultBinary,
    _O.ReadRequest_Encoding_DefaultBinary, _O.BrowseRequest_Encoding_DefaultBinary,
    _O.BrowseNextRequest_Encoding_DefaultBinary, _O.TranslateBrowsePathsToNodeIdsRequest_Encoding_DefaultBinary,
    _O.RegisterNodesRequest_Encoding_DefaultBinary, _O.UnregisterNodesRequest_Encoding_DefaultBinary,
    _O.CreateSubscriptionRequest_Encoding_DefaultBinary, _O.ModifySubscriptionRequest_Encoding_DefaultBinary,
    _O.DeleteSubscriptionsRequest_Encoding_DefaultBinary, _O.TransferSubscriptionsRequest_Encoding_DefaultBinary,
    _O.SetPublishingModeRequest_Encoding_DefaultBinary, _O.CreateMonitoredItemsRequest_Encoding_DefaultBinary,
    _O.ModifyMonitoredItemsRequest_Encoding_DefaultBinary, _O.DeleteMonitoredItemsRequest_Encoding_DefaultBinary,
    _O.SetMonitoringModeRequest_Encoding_DefaultBinary, _O.PublishRequest_Encoding_DefaultBinary,
    _O.RepublishRequest_Encoding_DefaultBinary,
))
OPERATE_SERVICES = READ_SERVICES | {ua.NodeId(_O.WriteRequest_Encoding_DefaultBinary),
                                    ua.NodeId(_O.CallRequest_Encoding_DefaultBinary)}


class StationRules(PermissionRuleset):
    """Per role, the request types a session may send; remembers the caller for the method callbacks.

    asyncua checks every request here, in the connection's own task, just before serving it, and
    awaits a method callback in that same task: ``caller`` (a context variable, so one value per
    connection task) is how ``SwitchProduct`` knows who to write in the audit trail.
    """

    def __init__(self) -> None:
        self._allowed = {UserRole.Anonymous: READ_SERVICES, UserRole.User: OPERATE_SERVICES,
                         UserRole.Admin: OPERATE_SERVICES}
        self.caller: contextvars.ContextVar[str] = contextvars.ContextVar("opcua_caller", default="opcua")

    def check_validity(self, user: User | None, action_type_id: ua.NodeId, body: Any) -> bool:
        if user is None:
            return False
        self.caller.set(f"opcua:{user.name}" if user.name else "opcua:anonymous")
        return action_type_id in self._allowed.get(user.role, frozenset())


class StationUsers(UserManager):
    """Turns a session's identity (password, certificate or none) into a role, or refuses it.

    PBKDF2 costs ~0.1 s and runs on the server's event loop, so a password is hashed once per
    user and process (later logins compare a keyed digest of it), and after ``login_failures``
    wrong passwords within a minute, logins that would need hashing are refused for a while:
    guessing cannot stall the server.
    """

    def __init__(self, settings: OpcUaSettings, trusted: dict[bytes, str]) -> None:
        self._settings = settings
        self._trusted = trusted
        self._key = secrets.token_bytes(32)  # keys the remembered digests; never leaves the process
        self._known: dict[str, bytes] = {}
        self._failures = FailureLimiter(settings.login_failures, 60.0)

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is not None:
            return self._password_user(username, password)
        # asyncua passes the identity token's certificate, or else the secure channel's (proven by
        # its signature): either one, when trusted, operates.
        name = self._trusted.get(bytes(certificate)) if certificate else None
        if name is not None:
            return User(role=UserRole.User, name=name)
        return User(role=UserRole.Anonymous) if self._settings.anonymous == "read" else None

    def _password_user(self, name: str, password: str | None) -> User | None:
        stored = self._settings.users.get(name)
        if stored is None or not password:
            self._refuse(name, "unknown user" if stored is None else "no password")
            return None
        digest = hmac.new(self._key, password.encode(), hashlib.sha256).digest()
        known = self._known.get(name)
        if known is not None and hmac.compare_digest(known, digest):
            return User(role=UserRole.User, name=name)
        if self._failures.blocked():
            log.warning("opcua: login of %r refused: too many wrong passwords in the last minute", name)
            return None
        if verify_token(password, stored):
            self._known[name] = digest
            return User(role=UserRole.User, name=name)
        self._refuse(name, "wrong password")
        return None

    def _refuse(self, name: str, why: str) -> None:
        self._failures.fail()
        log.warning("opcua: login of %r refused (%s)", name, why)


def read_certificate(path: Path, key: str) -> x509.Certificate:
    """A PEM or DER certificate; a file that is neither is one sentence naming ``key``."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KenpinError(f"opcua.{key} = {str(path)!r}: cannot read it ({e.strerror})") from None
    for load in (x509.load_pem_x509_certificate, x509.load_der_x509_certificate):
        try:
            return load(data)
        except ValueError:
            continue
    raise KenpinError(f"opcua.{key} = {str(path)!r}: not a certificate (PEM or DER expected)")


def certificate_name(cert: x509.Certificate, fallback: str) -> str:
    """The certificate's common name (who the audit trail names), else ``fallback``."""
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else fallback


def application_uri(cert: x509.Certificate | None, station: str) -> str:
    """The certificate's URI (clients check that it matches the server's), else ``urn:kenpin:<station>``."""
    if cert is not None:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = san.get_values_for_type(x509.UniformResourceIdentifier)
            if uris:
                return uris[0]
        except x509.ExtensionNotFound:
            pass
    return f"urn:kenpin:{station}"


def trusted_certificates(folder: str) -> dict[bytes, str]:
    """DER bytes → name of every certificate in ``opcua.trusted_certs`` (hidden files skipped)."""
    if not folder:
        return {}
    out: dict[bytes, str] = {}
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and not path.name.startswith("."):
            cert = read_certificate(path, "trusted_certs")
            out[cert.public_bytes(Encoding.DER)] = certificate_name(cert, path.stem)
    if not out:
        log.warning("opcua.trusted_certs = %r holds no certificate: no client can operate by certificate", folder)
    return out
