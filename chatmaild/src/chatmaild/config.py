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
import logging
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
    default: str
    kind: str  # int, float, size, bool, str, list, port, choice
    per_domain: bool = False
    choices: tuple = ()


# Every key the daemons understand, with the reference defaults.
PARAMS = {
    p.name: p
    for p in [
        Param("max_user_send_per_minute", "60", "int", per_domain=True),
        Param("max_user_send_burst_size", "10", "int", per_domain=True),
        Param("max_mailbox_size", "500M", "size", per_domain=True),
        Param("max_message_size", "31457280", "int"),
        Param("delete_mails_after", "20", "int", per_domain=True),
        Param("delete_large_after", "7", "int", per_domain=True),
        Param("delete_inactive_users_after", "90", "int", per_domain=True),
        Param("username_min_length", "9", "int", per_domain=True),
        Param("username_max_length", "9", "int", per_domain=True),
        Param("password_min_length", "9", "int", per_domain=True),
        Param("passthrough_senders", "", "list", per_domain=True),
        Param("passthrough_recipients", "", "list", per_domain=True),
        Param("filtermail_smtp_port", "10080", "port"),
        Param("filtermail_smtp_port_incoming", "10081", "port"),
        Param("postfix_reinject_port", "10025", "port"),
        Param("postfix_reinject_port_incoming", "10026", "port"),
        Param("filtermail_dkim_check", "true", "bool"),
        # seconds all DKIM key lookups of one incoming mail may take together
        Param("filtermail_dkim_dns_budget", "10", "float"),
        Param("mailboxes_dir", "/home/vmail/mail", "str"),
        Param("state_dir", "/var/lib/chatmaild", "str"),
        Param("nocreate_file", "/etc/chatmail-nocreate", "str"),
        Param("max_load_1m", "5", "float"),
        Param("min_available_memory", "200M", "size"),
        Param("min_free_disk_space", "1G", "size"),
        Param("max_imap_connections", "10000", "int"),
        Param("max_smtp_connections", "1000", "int"),
        Param("max_smtp_recipients", "1000", "int"),
        Param(
            "push_notification_url",
            "https://notifications.delta.chat/notify",
            "str",
        ),
        Param("push_token_expiry_days", "90", "int"),
        Param("push_retry_max_seconds", "3600", "int"),
        Param("turn_server", "", "str", per_domain=True),
        Param("turn_secret", "", "str", per_domain=True),
        Param(
            "tls_mode",
            "auto",
            "choice",
            per_domain=True,
            choices=("auto", "acme", "self", "external"),
        ),
        Param("www_folder", "", "str", per_domain=True),
        Param("disable_ipv6", "false", "bool"),
        Param("acme_email", "", "str", per_domain=True),
        Param("mtail_address", "", "str"),
        # the daemons write their counters to <metrics_dir>/<daemon>.prom
        # (Prometheus textfile format); empty or a missing directory: no export
        Param("metrics_dir", "/var/lib/chatmail-metrics", "str"),
        Param("iroh_relay", "", "str", per_domain=True),
        Param("imap_rawlog", "false", "bool"),
        Param("imap_compress", "false", "bool"),
        Param("privacy_postal", "", "str", per_domain=True),
        Param("privacy_mail", "", "str", per_domain=True),
        Param("privacy_pdo", "", "str", per_domain=True),
        Param("privacy_supervisor", "", "str", per_domain=True),
    ]
}

# Keys of chatmail/relay that this package accepts but does not use.
IGNORED_KEYS = {
    "passdb_path",
    "tls_external_cert_and_key",
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
        if self.tls_mode == "auto":
            self.tls_mode = "self" if is_self_signed_domain(domain) else "acme"

    @property
    def address_domain(self) -> str:
        """The domain part as it appears in addresses (``[1.2.3.4]`` for IPs)."""
        return f"[{self.mail_domain}]" if self.is_ip else self.mail_domain

    @property
    def mailboxes_path(self) -> Path:
        return Path(self.mailboxes_dir) / self.mail_domain

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
            if not values["passthrough_recipients"] and "passthrough_recipients" not in params:
                values["passthrough_recipients"] = [f"echo@{dom}"]
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
