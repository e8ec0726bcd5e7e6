"""Read and validate the chatmaild configuration file (``chatmail.ini``).

The file has one ``[params]`` section whose key names follow chatmail/relay's
``chatmail.ini``, so an existing relay's file can be read unchanged.  A host
that serves several chatmail domains lists them all in ``mail_domain``
(separated by spaces or commas; the first one is the primary domain) and may
override per-domain keys in ``[domain:<name>]`` sections::

    [params]
    mail_domain = chat.example.org other.example.net
    max_mailbox_size = 500M

    [domain:other.example.net]
    max_mailbox_size = 100M

Unknown keys produce a warning; invalid values raise :class:`ConfigError`
naming the section and key, so a daemon fails at start with a clear message.
"""

from __future__ import annotations

import configparser
import ipaddress
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .address import is_account_localpart

log = logging.getLogger("chatmaild.config")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""


_SIZE_RE = re.compile(r"\s*(\d+)\s*([kKmMgGtT]?)[bB]?\s*")
_SIZE_FACTORS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DOMAIN_LABEL_RE = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def parse_size(text: str) -> int:
    """Parse a size such as ``500M`` or ``1G`` (binary units) into bytes."""
    m = _SIZE_RE.fullmatch(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (expected e.g. 500M, 1G, 1024)")
    return int(m.group(1)) * _SIZE_FACTORS[m.group(2).lower()]


def parse_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_list(text: str) -> list[str]:
    return [item for item in re.split(r"[\s,]+", str(text).strip()) if item]


def is_ip_domain(domain: str) -> bool:
    """True for an IP-literal chatmail domain such as ``1.2.3.4`` or ``[1.2.3.4]``."""
    try:
        ipaddress.ip_address(domain.strip("[]"))
    except ValueError:
        return False
    return True


def validate_domain(domain: str) -> str:
    """Return the normalised domain or raise ``ValueError``."""
    domain = domain.strip().lower().rstrip(".")
    if is_ip_domain(domain):
        return domain.strip("[]")
    if len(domain) > 253 or "." not in domain:
        raise ValueError(f"not a fully qualified domain name: {domain!r}")
    for label in domain.split("."):
        if not _DOMAIN_LABEL_RE.fullmatch(label):
            raise ValueError(f"invalid label {label!r} in domain {domain!r}")
    return domain


@dataclass(frozen=True)
class Param:
    name: str
    default: str  # as it would be written in the ini file
    kind: str  # int, float, size, bool, str, path, list, port, choice
    per_domain: bool = False
    choices: tuple = ()
    doc: str = ""
    pillar: bool = True  # set from the Salt pillar (False: derived or not used by the tree)


def ini_value(value) -> str:
    """A schema or pillar value as the ini file writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(value)
    return str(value)


#: Where every ``[params]`` key is declared, once: default, kind, whether a
#: domain may override it, and its documentation.  The Salt state tree reads
#: the same file (map.jinja), so a new key is one edit there.
SCHEMA_PATH = Path(__file__).with_name("params.json")


def load_schema(path=SCHEMA_PATH) -> dict[str, Param]:
    entries = json.loads(Path(path).read_text(encoding="utf-8"))["params"]
    return {
        e["name"]: Param(
            e["name"],
            ini_value(e["default"]),
            e["kind"],
            per_domain=e.get("per_domain", False),
            choices=tuple(e.get("choices", ())),
            doc=e.get("doc", ""),
            pillar=e.get("pillar", True),
        )
        for e in entries
    }


# Every key the daemons understand, with the reference defaults.
PARAMS = load_schema()

# Keys of chatmail/relay that this package accepts but does not use.
IGNORED_KEYS = {
    "passdb_path",
    "turn_socket_path",
    "filtermail_http_port_incoming",
    "filtermail_lmtp_port_transport",
}


def _convert(param: Param, raw: str, where: str):
    try:
        if param.kind == "int":
            value = int(raw)
            if value < 0:
                raise ValueError("must not be negative")
            return value
        if param.kind == "port":
            value = int(raw)
            if not 0 < value < 65536:
                raise ValueError("must be a TCP port 1..65535")
            return value
        if param.kind == "float":
            return float(raw)
        if param.kind == "size":
            return parse_size(raw)
        if param.kind == "bool":
            return parse_bool(raw)
        if param.kind == "list":
            return parse_list(raw)
        if param.kind == "choice":
            value = raw.strip().lower()
            if value not in param.choices:
                raise ValueError(f"must be one of {', '.join(param.choices)}")
            return value
        if param.kind == "path" and not raw.strip().startswith("/"):
            raise ValueError("must be an absolute path")
        return raw.strip()
    except ValueError as exc:
        raise ConfigError(f"{where} {param.name} = {raw!r}: {exc}") from None


class DomainConfig:
    """The effective parameters for one chatmail domain.

    Attributes carry converted values (sizes in bytes, lists as lists);
    ``max_mailbox_size_raw`` keeps the text form (``500M``) for Dovecot.
    """

    def __init__(self, config: Config, domain: str, values: dict, raw: dict):
        self.config = config
        self.mail_domain = domain
        self.is_ip = is_ip_domain(domain)
        self.__dict__.update(values)
        self.max_mailbox_size_raw = raw["max_mailbox_size"].strip()
        self._turn_secret_cache = None
        # chatmail/relay's way to name certificates managed elsewhere
        external = self.tls_external_cert_and_key.split()
        if external and len(external) != 2:
            raise ConfigError(
                f"{domain} tls_external_cert_and_key: expected two paths 'CERT KEY',"
                f" not {raw['tls_external_cert_and_key']!r}"
            )
        self.tls_cert_path, self.tls_key_path = external or (None, None)
        if self.tls_mode == "auto":
            if external:
                self.tls_mode = "external"
            else:
                self.tls_mode = "self" if is_self_signed_domain(domain) else "acme"

    @property
    def address_domain(self) -> str:
        """The domain part as it appears in addresses (``[1.2.3.4]`` for IPs)."""
        return f"[{self.mail_domain}]" if self.is_ip else self.mail_domain

    @property
    def mailboxes_path(self) -> Path:
        return Path(self.mailboxes_dir) / self.mail_domain

    def turn_secret_value(self) -> str:
        """The TURN secret: ``turn_secret_file``'s content (first line, read on
        first use, so daemons that never need it never open it), else
        ``turn_secret``; empty when neither is set or the file cannot be read
        (logged)."""
        if not self.turn_secret_file:
            return self.turn_secret
        if self._turn_secret_cache is None:
            path = Path(self.turn_secret_file)
            if not path.is_absolute():
                creds = os.environ.get("CREDENTIALS_DIRECTORY", "")
                if not creds:
                    log.error(
                        "%s: turn_secret_file %r is relative but $CREDENTIALS_DIRECTORY"
                        " is not set (LoadCredential= in the unit)",
                        self.mail_domain,
                        self.turn_secret_file,
                    )
                    return ""
                path = Path(creds) / path
            try:
                text = path.read_text("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                log.error("%s: cannot read the TURN secret: %s", self.mail_domain, exc)
                return ""
            lines = text.splitlines()
            self._turn_secret_cache = lines[0].strip() if lines else ""
        return self._turn_secret_cache

    def __repr__(self):
        return f"<DomainConfig {self.mail_domain}>"


def is_self_signed_domain(domain: str) -> bool:
    return domain.startswith("_") or domain.endswith(".test") or is_ip_domain(domain)


class Config:
    """The whole configuration: global values plus one DomainConfig per domain."""

    def __init__(self, inipath, parser: configparser.ConfigParser):
        self.inipath = Path(inipath)
        if not parser.has_section("params"):
            raise ConfigError(f"{inipath}: missing [params] section")
        params = dict(parser.items("params"))
        where = f"{inipath}: [params]"

        raw_domains = params.pop("mail_domain", "").strip()
        if not raw_domains:
            raise ConfigError(f"{where} mail_domain: must name at least one domain")
        domains = []
        for item in parse_list(raw_domains):
            try:
                dom = validate_domain(item)
            except ValueError as exc:
                raise ConfigError(f"{where} mail_domain: {exc}") from None
            if dom in domains:
                raise ConfigError(f"{where} mail_domain: duplicate domain {dom!r}")
            domains.append(dom)
        self.mail_domains = domains

        # Reference compatibility: mailboxes_dir=/home/vmail/mail/<domain>.
        mbdir = params.get("mailboxes_dir", "").strip().rstrip("/")
        if mbdir and len(domains) == 1 and Path(mbdir).name == domains[0]:
            params["mailboxes_dir"] = str(Path(mbdir).parent)

        for key in list(params):
            if key in IGNORED_KEYS:
                params.pop(key)
            elif key not in PARAMS:
                log.warning("%s: unknown key %r ignored", where, key)
                params.pop(key)

        self.raw = {name: params.get(name, p.default) for name, p in PARAMS.items()}
        self.values = {name: _convert(p, self.raw[name], where) for name, p in PARAMS.items()}
        self.__dict__.update(self.values)

        self.domains: dict[str, DomainConfig] = {}
        for dom in domains:
            raw = dict(self.raw)
            values = dict(self.values)
            section = f"domain:{dom}"
            if parser.has_section(section):
                swhere = f"{inipath}: [{section}]"
                for key, text in parser.items(section):
                    if key in parser.defaults():
                        continue
                    param = PARAMS.get(key)
                    if param is None:
                        log.warning("%s: unknown key %r ignored", swhere, key)
                        continue
                    if not param.per_domain:
                        raise ConfigError(
                            f"{swhere} {key}: is a host-wide setting; set it in [params]"
                        )
                    raw[key] = text
                    values[key] = _convert(param, text, swhere)
            if values["username_min_length"] > values["username_max_length"]:
                raise ConfigError(
                    f"{inipath}: domain {dom} username_min_length ="
                    f" {values['username_min_length']}: exceeds username_max_length ="
                    f" {values['username_max_length']}"
                )
            self.domains[dom] = DomainConfig(self, dom, values, raw)

        for section in parser.sections():
            if section.startswith("domain:") and section[7:] not in self.domains:
                raise ConfigError(f"{inipath}: [{section}] names a domain missing from mail_domain")

        self._check_ports(where)

    def _check_ports(self, where):
        names = [n for n, p in PARAMS.items() if p.kind == "port"]
        seen = {}
        for name in names:
            port = self.values[name]
            if port in seen:
                raise ConfigError(f"{where} {name} = {port}: clashes with {seen[port]}")
            seen[port] = name

    @property
    def mail_domain(self) -> str:
        """The primary (first) domain."""
        return self.mail_domains[0]

    @property
    def primary(self) -> DomainConfig:
        return self.domains[self.mail_domain]

    def for_domain(self, domain: str) -> DomainConfig | None:
        """The DomainConfig serving ``domain`` (``[1.2.3.4]`` accepted), or None."""
        domain = domain.strip().lower().strip("[]")
        return self.domains.get(domain)

    def for_address(self, addr: str) -> DomainConfig | None:
        """The DomainConfig for an address's domain part, or None if not served."""
        if addr.count("@") != 1:
            return None
        return self.for_domain(addr.rsplit("@", 1)[1])

    def user_dir(self, addr: str) -> Path:
        """``<mailboxes_dir>/<domain>/<addr>``; raises ValueError unless
        ``addr`` is an account name exactly as account creation writes it
        (localpart ``[a-z0-9._-]+`` not starting with a dot, the served
        spelling of the domain), so callers can never escape the mailbox tree
        nor reach one account under two names.  Map envelope recipients with
        :func:`chatmaild.address.normalize_recipient` first."""
        dom = self.for_address(addr)
        if dom is None:
            raise ValueError(f"address not served here: {addr!r}")
        localpart, _, domain = addr.rpartition("@")
        if not is_account_localpart(localpart) or domain != dom.address_domain:
            raise ValueError(f"not an account name: {addr!r}")
        return dom.mailboxes_path / addr


def read_config(inipath) -> Config:
    """Read ``inipath`` and return a validated :class:`Config`."""
    path = Path(inipath)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return Config(path, parser)


def main_config_error(exc: ConfigError) -> int:
    """Shared error exit for console scripts: print the message, return 2."""
    import sys

    print(f"configuration error: {exc}", file=sys.stderr)
    return 2
