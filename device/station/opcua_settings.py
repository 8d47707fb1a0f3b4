"""The ``opcua:`` section of the station config: where the OPC UA server listens and who may do what.

Read by ``device.schema`` like every section (file, line and key in each mistake). Passwords are
stored only as ``kenpin hash-token`` hashes, the same format as the dashboard's tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from device.dashboard.auth import ALGO, check_hash_format
from device.errors import KenpinError
from device.schema import Invalid, file_path, need

# The security policies offered, by their config name: Basic256Sha256 is the policy PLCs and SCADA
# clients support most widely; "none" is the plain endpoint (anonymous reading on a closed LAN).
SECURITY_MODES = ("none", "sign", "sign-and-encrypt")
ANONYMOUS_MODES = ("read", "none")  # read: anonymous sessions may read and subscribe; none: refused


@dataclass(frozen=True)
class OpcUaSettings:
    """The ``opcua:`` block (documented in configs/station.yaml).

    ``users`` maps a user name to its password hash; ``trusted_certs`` is a folder of client
    certificates (DER or PEM) whose holders may operate like a user. Anonymous sessions may only
    read (or are refused). ``certificate``/``private_key`` are the server's own, needed for the
    signed policies and for certificate users.
    """

    enabled: bool = True
    host: str = "0.0.0.0"  # every interface: the PLC is on the plant LAN
    port: int = 4840  # the IANA port of OPC UA TCP
    security: tuple[str, ...] = ("none",)
    # The files and the folder are relative to the config file's folder (device.schema.file_path).
    certificate: str = file_path()  # server certificate (DER or PEM)
    private_key: str = file_path()  # its private key (PEM or DER, unencrypted)
    anonymous: str = "read"
    users: dict[str, str] = field(default_factory=dict)
    trusted_certs: str = file_path()  # folder of client certificates allowed to operate
    max_connections: int = 10
    inspect_timeout_s: float = 3.0
    login_failures: int = 10  # wrong passwords per minute before logins pause for a minute

    def __post_init__(self) -> None:
        need(bool(self.host.strip()), "host", self.host, "must name an interface address, e.g. 0.0.0.0")
        need(0 < self.port < 65536, "port", self.port, "must be 1 to 65535")
        need(bool(self.security) and set(self.security) <= set(SECURITY_MODES), "security", list(self.security),
             f"must be a non-empty list of {list(SECURITY_MODES)}")
        need(self.anonymous in ANONYMOUS_MODES, "anonymous", self.anonymous, f"must be one of {list(ANONYMOUS_MODES)}")
        need(1 <= self.max_connections <= 1000, "max_connections", self.max_connections, "must be between 1 and 1000")
        need(0 < self.inspect_timeout_s <= 60, "inspect_timeout_s", self.inspect_timeout_s,
             "must be more than 0 and at most 60 seconds (keep it below the PLC's request timeout)")
        need(self.login_failures >= 1, "login_failures", self.login_failures, "must be 1 or more")
        self._check_users()
        self._check_files()
        need(self.anonymous == "read" or bool(self.users or self.trusted_certs), "anonymous", self.anonymous,
             "refuses every client unless users or trusted_certs are set")

    def _check_users(self) -> None:
        for name, stored in self.users.items():
            need(bool(name.strip()), "users", name, "user names must not be empty")
            try:
                check_hash_format(stored, f"opcua.users.{name}")
            except KenpinError:
                # The value is not shown: it may be a password pasted in by mistake.
                raise Invalid(f"users.{name}", "(not shown)", "is not a password hash; put the output of "
                              f"`kenpin hash-token` there ({ALGO}$…), never the password itself") from None

    def _check_files(self) -> None:
        for key in ("certificate", "private_key"):
            value = getattr(self, key)
            need(not value or Path(value).is_file(), key, value, "must be an existing file")
        need(bool(self.certificate) == bool(self.private_key), "private_key", self.private_key,
             "and certificate go together: set both or neither")
        need(not self.trusted_certs or Path(self.trusted_certs).is_dir(), "trusted_certs", self.trusted_certs,
             "must be an existing folder of client certificates")
        need(not self.signed or bool(self.certificate), "certificate", self.certificate,
             "is needed by the sign and sign-and-encrypt policies (the server signs with it)")
        need(not self.trusted_certs or self.signed, "trusted_certs", self.trusted_certs,
             "needs sign or sign-and-encrypt in security: a client proves its certificate by signing")

    @property
    def signed(self) -> bool:
        """True when a signing policy is offered (a server certificate is then needed)."""
        return any(mode != "none" for mode in self.security)

    @property
    def endpoint(self) -> str:
        """The URL the server listens on and advertises (clients may reach it by any address)."""
        return f"opc.tcp://{self.host}:{self.port}/"
