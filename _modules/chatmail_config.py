"""Merge and validate the chatmail pillar into the data every state uses.

``salt/chatmail/map.jinja`` calls :func:`build` with ``defaults.yaml``, the
os-family overrides and the pillar ``chatmail`` subtree.  The result is the
one merged dict (``chatmail``) that templates receive.  Every problem found
in the pillar is reported at once, one line per problem, each line starting
with the pillar path of the offending key (``chatmail:domains:x:tls:mode``),
so a bad pillar fails the rendering of every SLS and thereby the whole
highstate before any state runs.

The module has no dependencies beyond the standard library and Salt, so
that it also works through salt-ssh.
"""

import base64
import binascii
import configparser
import copy
import ipaddress
import json
import os
import re
import urllib.parse

try:
    from salt.exceptions import CommandExecutionError
except ImportError:  # pragma: no cover - only without salt installed

    class CommandExecutionError(Exception):
        pass


__virtualname__ = "chatmail_config"


def __virtual__():
    return __virtualname__


def _util(name):
    """A shared helper of _utils/chatmail_util.py: ``__utils__`` under the
    Salt loader; outside it (unit tests, fuzz targets, tests/paramdocs.py)
    the file itself, from the checkout this module lives in."""
    utils = globals().get("__utils__")
    if utils is not None and f"chatmail_util.{name}" in utils:
        return utils[f"chatmail_util.{name}"]
    global _UTIL_MODULE
    if _UTIL_MODULE is None:
        import importlib.util

        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(os.path.dirname(here), "_utils", "chatmail_util.py")
        spec = importlib.util.spec_from_file_location("chatmail_util_checkout", path)
        _UTIL_MODULE = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_UTIL_MODULE)
    return getattr(_UTIL_MODULE, name)


_UTIL_MODULE = None


class ChatmailConfigError(CommandExecutionError):
    """The pillar is invalid; ``errors`` lists one message per problem."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("invalid chatmail pillar:\n" + "\n".join(self.errors))


# The chatmaild [params] keys (defaults, kinds, which a domain may override)
# are declared once, in chatmaild/src/chatmaild/params.json, which map.jinja
# passes to build() as ``schema``.  In a checkout (tests, CLI) build() reads
# it from there itself.
SCHEMA_FILE = os.path.join("chatmaild", "src", "chatmaild", "params.json")


def _load_schema(schema):
    """The schema's entries for the keys the pillar may set: {name: entry}."""
    if schema is None:
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(os.path.dirname(here), SCHEMA_FILE)
        if not os.path.isfile(path):
            raise ChatmailConfigError([f"chatmail: no parameter schema given (nor {SCHEMA_FILE})"])
        with open(path, encoding="utf-8") as f:
            schema = json.load(f)
    if isinstance(schema, dict):
        schema = schema["params"]
    return {e["name"]: e for e in schema}


# Never written into chatmail.ini (see turn_secret_files).
SECRET_PARAMS = {"turn_secret"}

# Ports the relay's public services use; chatmaild's internal ports must not
# collide with them nor with each other.
SERVICE_PORTS = {
    25: "smtp",
    80: "http",
    143: "imap",
    443: "https",
    465: "submissions",
    587: "submission",
    993: "imaps",
}

TLS_MODES = ("auto", "acme", "self", "ca", "external")
# Short names for chatmail:acme:directory.
ACME_DIRECTORIES = {
    "letsencrypt": "https://acme-v02.api.letsencrypt.org/directory",
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
# No quotes, backslashes or spaces: the URLs go into acmetool's YAML files.
_HTTPS_URL_RE = re.compile(r"^https://[A-Za-z0-9._~%:\[\]-]+(/[A-Za-z0-9._~%!$&()*+,;=:@/?-]*)?$")
DNS_CHECK_MODES = ("off", "warn", "fail")
# chatmail:dovecot:source -- patched: Debian's dovecot rebuilt without the
# 500 ms IDLE notification delay (./cmsalt build-dovecot); debian: Debian's own.
DOVECOT_SOURCES = ("patched", "debian")
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
# imap_idle_notify_interval in dovecot.conf.jinja: the "still here" keepalive
# of an IDLE session, which also restarts its hibernation timer.
IDLE_KEEPALIVE_SECONDS = 120

_SIZE_RE = re.compile(r"^\s*\d+\s*[kKmMgGtT]?[bB]?\s*$")
_POSTFIX_TIME_RE = re.compile(r"^\d+[smhdw]?$")
_VERSION_RE = re.compile(r"^\d+(\.\d+){1,3}$")
_MEMORY_RE = re.compile(r"^(\d+[KMGT]?|\d{1,2}%|100%)$")
_SYSTEMD_TIME_RE = re.compile(r"^\d+\s*(s|sec|min|m|h|hour|day|d|week|w|month|year|y)?$")
_PEM_RE = re.compile(
    r"-----BEGIN (?P<label>[A-Z0-9 ]+)-----(?P<body>[A-Za-z0-9+/=\s]*?)-----END (?P=label)-----"
)
_NEXTHOP_RE = re.compile(r"^(\*[a-z0-9._-]+|[a-z0-9._-]+\*?)$")
PRIVATE_KEY_LABELS = ("PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY")


class _Errors(list):
    def add(self, path, problem):
        self.append(f"{':'.join(str(p) for p in path)}: {problem}")


def _is_ip(text):
    return _util("is_ip")(text)


def normalize_domain(name):
    """Return the canonical form of a chatmail domain or raise ``ValueError``.

    Lower case, no trailing dot; IP literals lose their brackets.

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_config.normalize_domain Chat.Example.ORG
    """
    return _util("normalize_domain")(name)


def _type_name(value):
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "null" if value is None else type(value).__name__


def _check_param(kind, value):
    """Return a problem text or None."""
    if kind in ("int", "port"):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, not {_type_name(value)} {value!r}"
        if value < 0:
            return f"must not be negative: {value}"
        if kind == "port" and not 0 < value < 65536:
            return f"not a TCP port: {value}"
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, not {_type_name(value)} {value!r}"
        if value < 0:
            return f"must not be negative: {value}"
    elif kind == "size":
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            return f"must be a size such as 500M, not {_type_name(value)}"
        if not _SIZE_RE.match(str(value)):
            return f"not a size {value!r} (expected e.g. 500M, 1G, 1024)"
    elif kind == "bool":
        if not isinstance(value, bool):
            return f"must be true or false, not {_type_name(value)} {value!r}"
    elif kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"must be a list of strings, not {_type_name(value)} {value!r}"
        bad = [v for v in value if not v or any(c.isspace() or c == "," for c in v)]
        if bad:
            return f"list items must not be empty or contain spaces or commas: {bad[0]!r}"
    elif kind in ("str", "path"):
        if not isinstance(value, str):
            return f"must be a string, not {_type_name(value)} {value!r}"
        if "\n" in value:
            return "must not contain a line break"
        if kind == "path" and not value.startswith("/"):
            return f"must be an absolute path: {value!r}"
    return None


def _merge_checked(base, over, path, errors, free=()):
    """Deep-merge ``over`` into a copy of ``base``.

    Every key of ``over`` must exist in ``base`` (except at the paths listed
    in ``free``) and its value must have the type of the default.
    """
    result = copy.deepcopy(base)
    if over is None:
        return result
    if not isinstance(over, dict):
        errors.add(path, f"must be a mapping, not {_type_name(over)}")
        return result
    for key, value in over.items():
        kpath = path + [key]
        if key not in base:
            known = ", ".join(sorted(str(k) for k in base)) or "none"
            errors.add(kpath, f"unknown key (known keys: {known})")
            continue
        default = base[key]
        if isinstance(default, dict):
            if tuple(kpath[1:]) in free:
                if value is None:
                    value = {}
                if not isinstance(value, dict):
                    errors.add(kpath, f"must be a mapping, not {_type_name(value)}")
                    continue
                merged = copy.deepcopy(default)
                merged.update(copy.deepcopy(value))
                result[key] = merged
            else:
                result[key] = _merge_checked(default, value, kpath, errors, free)
            continue
        problem = _check_default_type(default, value)
        if problem:
            errors.add(kpath, problem)
            continue
        result[key] = copy.deepcopy(value)
    return result


def _check_default_type(default, value):
    if isinstance(default, bool):
        kind = "bool"
    elif isinstance(default, int):
        kind = "int"
    elif isinstance(default, float):
        kind = "float"
    elif isinstance(default, list):
        if not isinstance(value, list):
            return f"must be a list, not {_type_name(value)} {value!r}"
        return None
    elif isinstance(default, str):
        kind = "str"
    else:
        return None
    return _check_param(kind, value)


def _size_bytes(value):
    m = re.match(r"^\s*(\d+)\s*([kKmMgGtT]?)", str(value))
    return int(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " ")


def _file_exists(path):
    try:
        return __salt__["file.file_exists"](path)
    except (NameError, KeyError):
        return os.path.isfile(path)


def _auto_tls_mode(domain):
    return _util("auto_tls_mode")(domain)


def build(defaults, osfamily=None, pillar=None, check_files=True, schema=None):
    """Merge ``defaults`` <- ``osfamily`` <- ``pillar`` and validate the result.

    ``defaults`` is the content of ``defaults.yaml`` (with or without the
    top-level ``chatmail`` key), ``osfamily`` the os-family overrides (same
    shape), ``pillar`` the pillar subtree ``chatmail``.  Returns the merged,
    resolved dict described in the state-tree contract; raises
    :class:`ChatmailConfigError` listing every problem, each line naming the
    pillar key.  ``check_files=False`` skips the existence check of external
    TLS files (for rendering on another machine).  ``schema`` is the parameter
    schema (chatmaild's params.json; read from the checkout when not given).

    Every SLS imports map.jinja, so a highstate asks for the same map many
    times: within one salt run the result is computed once (``__context__``).

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_config.build "$(cat defaults.yaml)" "{}" "$PILLAR_JSON"
    """
    key = None
    context = globals().get("__context__")
    if context is not None:
        key = "chatmail_config.build:" + json.dumps(
            [defaults, osfamily, pillar, check_files, schema], sort_keys=True, default=str
        )
        if key in context:
            return copy.deepcopy(context[key])
    merged = _build(defaults, osfamily, pillar, check_files, _load_schema(schema))
    if key is not None:
        context[key] = copy.deepcopy(merged)
    return merged


def _tree_yaml(name):
    """salt://chatmail/<name> (defaults.yaml, osfamilymap.yaml) as data: from
    the file server on a minion, from the checkout otherwise."""
    import yaml

    text = None
    salt_funcs = globals().get("__salt__")
    if salt_funcs is not None and "cp.get_file_str" in salt_funcs:
        text = salt_funcs["cp.get_file_str"](f"salt://chatmail/{name}") or None
    if text is None:
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(os.path.dirname(here), "salt", "chatmail", name)
        if not os.path.isfile(path):
            raise CommandExecutionError(f"chatmail_config: salt://chatmail/{name} not found")
        with open(path, encoding="utf-8") as f:
            text = f.read()
    return yaml.safe_load(text) or {}


def lookup():
    """
    ``chatmail:lookup`` of the merged map -- defaults.yaml <- the os family's
    overrides <- pillar ``chatmail:lookup``, as map.jinja merges it -- for the
    modules that need a path, user or socket outside a state run (they read
    it here instead of repeating the defaults).  Only this section is merged,
    so it also answers on a minion whose pillar names no domain yet.

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_config.lookup
    """
    defaults = _tree_yaml("defaults.yaml")
    defaults = defaults.get("chatmail", defaults)
    grains = globals().get("__grains__") or {}
    osfamily = (_tree_yaml("osfamilymap.yaml").get(grains.get("os_family")) or {}).get("lookup")
    salt_funcs = globals().get("__salt__")
    pillar = _util("pillar_get")(salt_funcs, "chatmail:lookup", {}) if salt_funcs else {}
    merge = _util("deep_merge")
    pillar = pillar if isinstance(pillar, dict) else {}
    return merge(merge(defaults.get("lookup"), osfamily), pillar)


def _build(defaults, osfamily, pillar, check_files, schema):
    kinds = {n: e["kind"] for n, e in schema.items() if e.get("pillar", True)}
    per_domain = sorted(n for n in kinds if schema[n].get("per_domain"))
    errors = _Errors()
    merged, raw_domains = _merge_globals(defaults, osfamily, pillar, schema, kinds, errors)
    _check_globals(merged, pillar or {}, kinds, errors)
    domains = _build_domains(raw_domains, merged, errors, check_files, kinds, per_domain, schema)
    domain_list, primary = _primary(merged, domains, errors)
    _check_echobot(merged["echobot"], domains, errors)
    tls_ca = merged["tls_ca"]
    if errors:
        raise ChatmailConfigError(errors)

    # The CA key is read from the pillar by the tls state only; it must not
    # travel in the map every template receives.
    tls_ca["has_key"] = bool(tls_ca.pop("key").strip())
    merged["domains"] = domains
    merged["domain_list"] = domain_list
    merged["primary"] = primary
    merged["per_domain_params"] = per_domain
    return merged


def _merge_globals(defaults, osfamily, pillar, schema, kinds, errors):
    """defaults <- os family <- pillar outside ``domains``, checked: (the
    merged map, the raw ``chatmail:domains``)."""
    defaults = copy.deepcopy(defaults or {})
    if set(defaults) == {"chatmail"}:
        defaults = defaults["chatmail"]
    base = _util("deep_merge")(defaults, osfamily)
    base["params"] = {n: copy.deepcopy(schema[n]["default"]) for n in kinds}
    base.setdefault("primary", "")
    if pillar is not None and not isinstance(pillar, dict):
        raise ChatmailConfigError([f"chatmail: must be a mapping, not {_type_name(pillar)}"])
    pillar = copy.deepcopy(pillar or {})

    raw_domains = pillar.pop("domains", None)
    raw_params = pillar.pop("params", None)
    # PEM strings span lines, which the generic string check refuses.
    raw_pems = {}
    if isinstance(pillar.get("tls_ca"), dict):
        raw_pems = {k: pillar["tls_ca"].pop(k) for k in ("cert", "key") if k in pillar["tls_ca"]}
    merged = _merge_checked(base, pillar, ["chatmail"], errors)
    for key, value in raw_pems.items():
        if value is None:
            value = ""
        if not isinstance(value, str):
            errors.add(
                ["chatmail", "tls_ca", key], f"must be a PEM string, not {_type_name(value)}"
            )
        else:
            merged["tls_ca"][key] = value

    # Global params with their own kinds.
    params = copy.deepcopy(base["params"])
    if raw_params is not None and not isinstance(raw_params, dict):
        errors.add(["chatmail", "params"], f"must be a mapping, not {_type_name(raw_params)}")
        raw_params = {}
    for key, value in (raw_params or {}).items():
        if key not in kinds:
            errors.add(["chatmail", "params", key], _not_a_param(key, schema))
            continue
        problem = _check_param(kinds[key], value)
        if problem:
            errors.add(["chatmail", "params", key], problem)
            continue
        params[key] = value
    merged["params"] = params
    _check_ports(params, kinds, errors)
    for key in ("max_message_size",):
        if not errors and params[key] <= 0:
            errors.add(["chatmail", "params", key], "must be positive")

    return merged, raw_domains


def _check_globals(merged, pillar, kinds, errors):
    """The global sections besides params (dns, limits, imap, journald,
    metrics, lookup paths, tls trust, acme, dovecot); ``pillar`` tells what
    the operator set explicitly."""
    params = merged["params"]
    if merged["dns"]["check"] not in DNS_CHECK_MODES:
        errors.add(
            ["chatmail", "dns", "check"],
            f"must be one of {', '.join(DNS_CHECK_MODES)}, not {merged['dns']['check']!r}",
        )
    for key in ("nameservers", "forwarders"):
        for i, ns in enumerate(merged["dns"][key]):
            if not isinstance(ns, str) or not _is_ip(ns):
                errors.add(["chatmail", "dns", key, i], f"not an IP address: {ns!r}")
    for key, example in (("queue_lifetime", "5d"), ("queue_retry", "300s")):
        value = merged["limits"][key]
        if not _POSTFIX_TIME_RE.match(str(value)):
            errors.add(
                ["chatmail", "limits", key], f"not a postfix time such as {example}: {value!r}"
            )
    for key, value in merged["limits"].items():
        if isinstance(value, int) and value <= 0:
            errors.add(["chatmail", "limits", key], "must be positive")
    hib = merged["imap"]["hibernate_timeout"]
    if isinstance(hib, int) and hib >= IDLE_KEEPALIVE_SECONDS:
        errors.add(
            ["chatmail", "imap", "hibernate_timeout"],
            f"must be below {IDLE_KEEPALIVE_SECONDS} (Dovecot's IDLE keepalive restarts the"
            f" wait every {IDLE_KEEPALIVE_SECONDS} s, so sessions would never hibernate): {hib}",
        )
    ret = merged["journald"]["max_retention"]
    if not _SYSTEMD_TIME_RE.match(str(ret)):
        errors.add(
            ["chatmail", "journald", "max_retention"], f"not a time span such as 2day: {ret!r}"
        )
    # chatmail/relay's mtail_address: where its mtail (port 3903) listens;
    # here the address of every metrics exporter.
    mtail = params.get("mtail_address", "")
    if mtail:
        given = (pillar.get("metrics") or {}).get("listen_address")
        if not _is_ip(mtail):
            errors.add(["chatmail", "params", "mtail_address"], f"not an IP address: {mtail!r}")
        elif given and given != mtail:
            errors.add(
                ["chatmail", "params", "mtail_address"],
                f"differs from chatmail:metrics:listen_address {given!r}; set one of them",
            )
        else:
            merged["metrics"]["listen_address"] = mtail
    _check_metrics(merged["metrics"], params, kinds, errors)
    _check_turn(merged["turn"], merged["metrics"], params, kinds, errors)
    _check_alpn(merged, params, kinds, errors)
    for key, value in merged["lookup"]["paths"].items():
        if not str(value).startswith("/"):
            errors.add(["chatmail", "lookup", "paths", key], f"must be an absolute path: {value!r}")
    _check_tls_trust(merged, errors)
    _check_acme(merged, errors)
    _check_dovecot(merged, errors)


def _build_domains(raw_domains, merged, errors, check_files, kinds, per_domain, schema):
    """{canonical domain: its resolved entry} of ``chatmail:domains``."""
    domains = {}
    seen = {}
    if raw_domains is None or raw_domains == {}:
        errors.add(["chatmail", "domains"], "must name at least one chatmail domain")
        raw_domains = {}
    elif not isinstance(raw_domains, dict):
        errors.add(["chatmail", "domains"], f"must be a mapping, not {_type_name(raw_domains)}")
        raw_domains = {}
    for name, dpillar in raw_domains.items():
        dpath = ["chatmail", "domains", name]
        try:
            dom = normalize_domain(name)
        except ValueError as exc:
            errors.add(dpath, str(exc))
            continue
        if dom in seen:
            errors.add(dpath, f"duplicate domain (same as {seen[dom]!r})")
            continue
        seen[dom] = name
        domains[dom] = _build_domain(
            dom, dpillar, merged, dpath, errors, check_files, kinds, per_domain, schema
        )

    return domains


def _primary(merged, domains, errors):
    """(the sorted domain list, the primary domain); also checks that tls
    mode ca has the CA it needs."""
    domain_list = sorted(domains)
    primary = merged.get("primary") or ""
    if primary:
        try:
            primary = normalize_domain(primary)
        except ValueError as exc:
            errors.add(["chatmail", "primary"], str(exc))
        else:
            if primary not in domains and domains:
                errors.add(["chatmail", "primary"], f"{primary!r} is not in chatmail:domains")
    elif domain_list:
        primary = domain_list[0]

    ca_domains = [d for d in domain_list if domains[d]["tls"]["mode"] == "ca"]
    tls_ca = merged["tls_ca"]
    for what in ("cert", "key"):
        bad = any(e.startswith(f"chatmail:tls_ca:{what}:") for e in errors)
        if ca_domains and not tls_ca[what].strip() and not bad:
            errors.add(
                ["chatmail", "tls_ca", what],
                f"required by tls mode ca (domains: {', '.join(ca_domains)})",
            )

    return domain_list, primary


def _check_metrics(metrics, params, kinds, errors):
    path = ["chatmail", "metrics"]
    addr = metrics["listen_address"]
    if not _is_ip(addr):
        errors.add(path + ["listen_address"], f"not an IP address: {addr!r}")
    chatmaild_ports = {params[k]: k for k, kind in kinds.items() if kind == "port" and k in params}
    seen = {}
    for name, port in sorted(metrics["ports"].items()):
        ppath = path + ["ports", name]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            errors.add(ppath, f"not a TCP port: {port!r}")
        elif port in SERVICE_PORTS:
            errors.add(ppath, f"port {port} clashes with the {SERVICE_PORTS[port]} service")
        elif port in chatmaild_ports:
            errors.add(ppath, f"port {port} clashes with params:{chatmaild_ports[port]}")
        elif port in seen:
            errors.add(ppath, f"port {port} clashes with metrics:ports:{seen[port]}")
        else:
            seen[port] = name
    for key in ("fsreport_interval", "status_interval"):
        value = str(metrics[key])
        if not _SYSTEMD_TIME_RE.match(value) or not any(c.isdigit() and c != "0" for c in value):
            errors.add(path + [key], f"not a positive time span such as 15min: {value!r}")


def _check_turn(turn, metrics, params, kinds, errors):
    path = ["chatmail", "turn"]
    taken = {
        params[k]: f"params:{k}" for k, kind in kinds.items() if kind == "port" and k in params
    }
    if metrics["enabled"]:
        taken.update({p: f"metrics:ports:{n}" for n, p in metrics["ports"].items()})
    ports = {}
    for key in ("port", "tls_port", "min_port", "max_port"):
        port = turn[key]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            errors.add(path + [key], f"not a port: {port!r}")
        else:
            ports[key] = port
    for key in ("port", "tls_port"):
        port = ports.get(key)
        if port is None:
            continue
        if port in SERVICE_PORTS:
            errors.add(path + [key], f"port {port} clashes with the {SERVICE_PORTS[port]} service")
        elif port in taken:
            errors.add(path + [key], f"port {port} clashes with {taken[port]}")
    if ports.get("port") is not None and ports.get("port") == ports.get("tls_port"):
        errors.add(path + ["tls_port"], "must differ from turn:port")
    low, high = ports.get("min_port"), ports.get("max_port")
    if low is not None and high is not None:
        if low < 1024:
            errors.add(path + ["min_port"], f"must be at least 1024: {low}")
        if low > high:
            errors.add(path + ["min_port"], f"{low} is greater than turn:max_port {high}")
        for key in ("port", "tls_port"):
            if ports.get(key) is not None and low <= ports[key] <= high:
                errors.add(path + [key], f"port {ports[key]} lies in the relay range")
        for port, owner in sorted(taken.items()):
            if isinstance(port, int) and low <= port <= high:
                errors.add(path + ["min_port"], f"the relay range holds {owner} ({port})")
    for key in ("user_quota", "total_quota", "max_bps"):
        value = turn[key]
        if isinstance(value, int) and value < 0:
            errors.add(path + [key], f"must not be negative: {value}")
    for key in ("denied_peers", "allowed_peers"):
        for i, net in enumerate(turn[key]):
            try:
                network = ipaddress.ip_network(str(net), strict=True)
            except ValueError:
                errors.add(path + [key, i], f"not an IP network such as 10.0.0.0/8: {net!r}")
                continue
            if network.version == 6 and int(network[0]) == 0:
                # coturn 4.6 reads a range starting at :: as matching every peer
                errors.add(
                    path + [key, i], f"an IPv6 range starting at :: matches every peer: {net}"
                )


def _check_alpn(merged, params, kinds, errors):
    path = ["chatmail", "alpn", "ports"]
    alpn = merged["alpn"]
    if not alpn["enabled"]:
        return
    taken = {
        params[k]: f"params:{k}" for k, kind in kinds.items() if kind == "port" and k in params
    }
    if merged["metrics"]["enabled"]:
        taken.update({p: f"metrics:ports:{n}" for n, p in merged["metrics"]["ports"].items()})
    turn = merged["turn"]
    if turn["enabled"]:
        taken.update({turn["port"]: "turn:port", turn["tls_port"]: "turn:tls_port"})
    for name, port in sorted(alpn["ports"].items()):
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            errors.add(path + [name], f"not a port: {port!r}")
        elif port in SERVICE_PORTS:
            errors.add(path + [name], f"port {port} clashes with the {SERVICE_PORTS[port]} service")
        elif port in taken:
            errors.add(path + [name], f"port {port} clashes with {taken[port]}")
        elif turn["enabled"] and turn["min_port"] <= port <= turn["max_port"]:
            errors.add(path + [name], f"port {port} lies in the TURN relay range")
        else:
            taken[port] = f"alpn:ports:{name}"


def _check_echobot(echobot, domains, errors):
    """``echobot:domains`` names served domains (stored in their canonical
    form); ``echobot:version`` is a release number such as 2.65.0."""
    path = ["chatmail", "echobot"]
    if not _VERSION_RE.match(echobot["version"]):
        errors.add(
            path + ["version"], f"not a release number such as 2.65.0: {echobot['version']!r}"
        )
    names = []
    for i, name in enumerate(echobot["domains"]):
        try:
            dom = normalize_domain(name)
        except ValueError as exc:
            errors.add(path + ["domains", i], str(exc))
            continue
        if domains and dom not in domains:
            errors.add(path + ["domains", i], f"{name!r} is not in chatmail:domains")
        elif dom not in names:
            names.append(dom)
    echobot["domains"] = names
    limit = str(echobot["memory_max"])
    if not _MEMORY_RE.match(limit):
        errors.add(path + ["memory_max"], f"not a systemd size such as 512M or 25%: {limit!r}")


def echobot_accounts(chatmail):
    """{domain: the echobot's address} of the domains that get an echo bot
    (none unless ``echobot:enabled``; ``echobot:domains`` empty: all).

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_config.echobot_accounts "$MAP_JSON"
    """
    echobot = chatmail["echobot"]
    if not echobot["enabled"]:
        return {}
    wanted = echobot["domains"] or chatmail["domain_list"]
    return {dom: "echo@" + chatmail["domains"][dom]["address_domain"] for dom in sorted(wanted)}


def coturn_ranges(networks):
    """coturn's ``first-last`` form of IP networks (``10.0.0.0/8`` ->
    ``10.0.0.0-10.255.255.255``), for denied-peer-ip / allowed-peer-ip.

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_config.coturn_ranges '["10.0.0.0/8", "::1/128"]'
    """
    ranges = []
    for text in networks:
        net = ipaddress.ip_network(str(text), strict=False)
        first, last = net[0], net[-1]
        ranges.append(str(first) if first == last else f"{first}-{last}")
    return ranges


# Settings of the fleet's Prometheus server (salt/fleet/prometheus.sls).
_PROM_DURATION_RE = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def prometheus_settings(defaults, pillar=None):
    """Merge the fleet Prometheus defaults with pillar ``fleet:prometheus``
    and validate them; raises :class:`ChatmailConfigError` naming each bad
    key (``fleet:prometheus:<key>``).

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_config.prometheus_settings "$(cat defaults.yaml)" "{port: 9090}"
    """
    errors = _Errors()
    path = ["fleet", "prometheus"]
    free = (("prometheus", "static_relays"),)
    merged = _merge_checked(defaults, pillar or {}, path, errors, free=free)
    if errors:
        raise ChatmailConfigError(errors)
    if not _is_ip(merged["listen_address"]):
        errors.add(path + ["listen_address"], f"not an IP address: {merged['listen_address']!r}")
    if not 0 < merged["port"] < 65536:
        errors.add(path + ["port"], f"not a TCP port: {merged['port']}")
    for key in ("scrape_interval", "retention"):
        if not _PROM_DURATION_RE.match(merged[key]):
            errors.add(path + [key], f"not a Prometheus duration such as 30d: {merged[key]!r}")
    if not merged["targets"]:
        errors.add(path + ["targets"], "must be a salt target such as '*'")
    for relay, targets in merged["static_relays"].items():
        if not isinstance(targets, dict):
            errors.add(path + ["static_relays", relay], "must map exporter names to host:port")
            continue
        for kind, target in targets.items():
            if kind not in METRICS_EXPORTERS or not isinstance(target, str) or ":" not in target:
                errors.add(
                    path + ["static_relays", relay, kind],
                    f"must be one of {', '.join(METRICS_EXPORTERS)} with a host:port value",
                )
    if errors:
        raise ChatmailConfigError(errors)
    return merged


METRICS_EXPORTERS = ("node", "postfix", "mtail", "dovecot")


def _not_a_param(key, schema):
    if key in schema:
        return f"not set from the pillar ({schema[key].get('doc', '')})"
    return "unknown key"


def _check_ports(params, kinds, errors):
    seen = {}
    for key in sorted(k for k, kind in kinds.items() if kind == "port"):
        port = params.get(key)
        if not isinstance(port, int):
            continue
        if port in SERVICE_PORTS:
            errors.add(
                ["chatmail", "params", key],
                f"port {port} clashes with the {SERVICE_PORTS[port]} service",
            )
        elif port in seen:
            errors.add(["chatmail", "params", key], f"port {port} clashes with {seen[port]}")
        else:
            seen[port] = key


def _build_domain(dom, dpillar, merged, dpath, errors, check_files, kinds, per_domain, schema):
    """The resolved entry of one domain: its params (per-domain overrides of
    ``chatmail:params``) and its sections (``domain_defaults`` <- its pillar)."""
    values, extra = _split_domain_pillar(dpillar, merged, dpath, errors, kinds, per_domain, schema)
    if values["username_min_length"] > values["username_max_length"]:
        errors.add(
            dpath + ["username_min_length"],
            f"{values['username_min_length']} is greater than username_max_length"
            f" {values['username_max_length']}",
        )
    if values["username_min_length"] < 1:
        errors.add(dpath + ["username_min_length"], "must be at least 1")

    paths = merged["lookup"]["paths"]
    is_ip = _is_ip(dom)
    given = dpillar if isinstance(dpillar, dict) else {}  # keys the domain sets itself
    extra["tls"] = _domain_tls(dom, extra["tls"], values, given, paths, dpath, errors, check_files)
    extra["www"] = _www(dom, values["www_folder"], paths, dpath, given, errors, check_files)
    iroh = values["iroh_relay"]
    if iroh and not re.match(r"^https?://[^/\s]+(/\S*)?$", iroh):
        where = dpath if "iroh_relay" in given else ["chatmail", "params"]
        errors.add(where + ["iroh_relay"], f"not an http(s) URL: {iroh!r}")
    _check_domain_sections(dom, extra, paths, dpath, errors)

    domain = {"name": dom}
    domain.update(values)
    domain.update(extra)
    domain["is_ip"] = is_ip
    domain["address_domain"] = f"[{dom}]" if is_ip else dom
    _set_turn(domain, dom, values, merged["turn"], paths)
    domain["mailboxes_path"] = f"{merged['params']['mailboxes_dir'].rstrip('/')}/{dom}"
    return domain


def _set_turn(domain, dom, values, turn, paths):
    """Where the tree keeps the domain's TURN secret (see turn_secret_files):
    from the pillar, or generated on the host for the relay's own TURN server
    (chatmail:turn:enabled), which is also the default turn_server."""
    if values["turn_secret"]:
        domain["turn_secret_file"] = f"{paths['secrets_dir']}/turn_secret.{dom}"
    elif turn["enabled"]:
        domain["turn_secret_file"] = f"{paths['secrets_dir']}/turn_secret.{dom}.generated"
    else:
        domain["turn_secret_file"] = ""
    if turn["enabled"] and not values["turn_server"]:
        host = f"[{dom}]" if ":" in dom else dom
        domain["turn_server"] = host if turn["port"] == 3478 else f"{host}:{turn['port']}"


def _split_domain_pillar(dpillar, merged, dpath, errors, kinds, per_domain, schema):
    """(params, sections) of a domain's pillar, each checked against its kind
    or default; params start from ``chatmail:params``."""
    if dpillar is None:
        dpillar = {}
    if not isinstance(dpillar, dict):
        errors.add(dpath, f"must be a mapping, not {_type_name(dpillar)}")
        dpillar = {}
    dpillar = copy.deepcopy(dpillar)
    values = {k: copy.deepcopy(v) for k, v in merged["params"].items() if k in per_domain}
    sub = {}
    for key, value in dpillar.items():
        if key in merged["domain_defaults"]:
            sub[key] = value
        elif key in per_domain:
            problem = _check_param(kinds[key], value)
            if problem:
                errors.add(dpath + [key], problem)
            else:
                values[key] = value
        elif key in kinds:
            errors.add(dpath + [key], "is a host-wide setting; set it in chatmail:params")
        else:
            errors.add(dpath + [key], _not_a_param(key, schema))
    extra = _merge_checked(merged["domain_defaults"], sub, dpath, errors)
    return values, extra


def _domain_tls(dom, tls, values, dpillar, paths, dpath, errors, check_files):
    """{"mode", "cert", "key"}: ``auto`` resolved and the certificate files
    the mode uses (checked to exist for ``external``).  chatmail/relay's
    ``tls_external_cert_and_key = CERT KEY`` is mode external with those two
    files (and chatmail.ini names them so, as the reference does)."""
    file_paths = {what: dpath + ["tls", what] for what in ("cert", "key")}
    ext_key = "tls_external_cert_and_key"
    ext_path = dpath + [ext_key] if ext_key in dpillar else ["chatmail", "params", ext_key]
    ext = values[ext_key].split()
    if ext and len(ext) != 2:
        errors.add(ext_path, f"expected two paths 'CERT KEY', not {values[ext_key]!r}")
    elif ext:
        given = [tls[what] for what in ("cert", "key") if tls[what]]
        if tls["mode"] not in ("auto", "external"):
            errors.add(ext_path, f"names external certificate files, but tls:mode is {tls['mode']}")
        elif given and given != ext:
            errors.add(ext_path, "differs from tls:cert and tls:key; set one of them")
        else:
            tls = dict(tls, mode="external", cert=ext[0], key=ext[1])
            file_paths = {"cert": ext_path, "key": ext_path}
    mode = tls["mode"]
    if mode not in TLS_MODES:
        errors.add(dpath + ["tls", "mode"], f"must be one of {', '.join(TLS_MODES)}, not {mode!r}")
        mode = "self"
    if mode == "auto":
        mode = _auto_tls_mode(dom)
    if mode in ("self", "ca"):
        cert = f"{paths['tls_dir']}/{dom}/fullchain.pem"
        key = f"{paths['tls_dir']}/{dom}/privkey.pem"
    elif mode == "acme":
        if _is_ip(dom):
            errors.add(dpath + ["tls", "mode"], "acme is not possible for an IP address domain")
        cert = f"{paths['acme_dir']}/{dom}/fullchain"
        key = f"{paths['acme_dir']}/{dom}/privkey"
    else:
        cert, key = tls["cert"], tls["key"]
        for what, path in (("cert", cert), ("key", key)):
            if not path:
                errors.add(file_paths[what], "external TLS mode needs a file path")
            elif not path.startswith("/"):
                errors.add(file_paths[what], f"must be an absolute path: {path!r}")
            elif check_files and not _file_exists(path):
                errors.add(file_paths[what], f"file does not exist on the host: {path}")
        values[ext_key] = f"{cert} {key}"
    return {"mode": mode, "cert": cert, "key": key}


def _check_domain_sections(dom, extra, paths, dpath, errors):
    """DKIM selector and key path, MTA-STS, DNS addresses, web title."""
    is_ip = _is_ip(dom)
    selector = extra["dkim"]["selector"]
    try:
        _util("check_selector")(selector)
    except ValueError as exc:
        errors.add(dpath + ["dkim", "selector"], str(exc))
    extra["dkim"]["key"] = f"{paths['dkim_dir']}/{dom}.{selector}.private"

    if extra["mta_sts"]["max_age"] <= 0:
        errors.add(dpath + ["mta_sts", "max_age"], "must be positive")
    for fam, key in ((4, "ipv4"), (6, "ipv6")):
        addr = extra["dns"][key]
        if addr:
            try:
                if ipaddress.ip_address(addr).version != fam:
                    raise ValueError
            except ValueError:
                errors.add(dpath + ["dns", key], f"not an IPv{fam} address: {addr!r}")
    if is_ip and not extra["dns"]["ipv4"] and ipaddress.ip_address(dom).version == 4:
        extra["dns"]["ipv4"] = dom
    if not extra["web"]["title"]:
        extra["web"]["title"] = dom


def _www(dom, folder, paths, dpath, dpillar, errors, check_files):
    """What a domain's web root holds (``www_folder``, chatmail/relay's key).

    ``generated``: the tree's home/info/privacy pages; ``disabled``: no
    pages; ``salt``: the files of a salt:// directory copied into the web
    root; ``path``: a directory on the host served for every page.  The
    generated autoconfig, MTA-STS policy, QR code and /new stay in all modes.
    """
    where = (dpath if "www_folder" in dpillar else ["chatmail", "params"]) + ["www_folder"]
    root = f"{paths['www_root']}/{dom}"
    www = {"mode": "generated", "source": "", "root": root}
    if not folder:
        return www
    if folder == "disabled":
        return dict(www, mode="disabled")
    if folder.startswith("salt://"):
        if folder.rstrip("/") == "salt:":
            errors.add(where, f"names no directory: {folder!r}")
        return dict(www, mode="salt", source=folder.rstrip("/"))
    if not folder.startswith("/"):
        errors.add(
            where,
            f"must be 'disabled', a salt:// directory or an absolute path on the host: {folder!r}",
        )
        return www
    folder = folder.rstrip("/") or "/"
    if check_files and not _dir_exists(folder):
        errors.add(where, f"directory does not exist on the host: {folder}")
    return dict(www, mode="path", source=folder, root=folder)


def _dir_exists(path):
    try:
        return __salt__["file.directory_exists"](path)
    except (NameError, KeyError):
        return os.path.isdir(path)


def _pem_blocks(text):
    """[(label, der bytes)] of the PEM blocks in ``text``; raises ValueError."""
    if not isinstance(text, str):
        raise ValueError(f"must be a PEM string, not {_type_name(text)}")
    blocks = []
    for match in _PEM_RE.finditer(text):
        body = "".join(match.group("body").split())
        try:
            der = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"broken base64 in the PEM block {match.group('label')!r}") from None
        if not der:
            raise ValueError(f"empty PEM block {match.group('label')!r}")
        blocks.append((match.group("label"), der))
    if not blocks:
        raise ValueError("not PEM (no -----BEGIN ...----- block)")
    return blocks


def _load_cert(text):
    """The one certificate in ``text`` (a cryptography object, or None when
    the cryptography package is missing); raises ValueError."""
    blocks = _pem_blocks(text)
    labels = [label for label, _der in blocks]
    if labels != ["CERTIFICATE"]:
        raise ValueError(f"must hold exactly one PEM CERTIFICATE, found {', '.join(labels)}")
    try:
        from cryptography import x509
    except ImportError:  # pragma: no cover - salt's x509 states need it anyway
        return None
    try:
        return x509.load_der_x509_certificate(blocks[0][1])
    except ValueError as exc:
        raise ValueError(f"not a valid X.509 certificate ({exc})") from None


def _load_key(text):
    blocks = _pem_blocks(text)
    labels = [label for label, _der in blocks]
    if labels == ["ENCRYPTED PRIVATE KEY"] or "Proc-Type: 4,ENCRYPTED" in text:
        raise ValueError("encrypted private keys are not supported")
    if len(labels) != 1 or labels[0] not in PRIVATE_KEY_LABELS:
        raise ValueError(f"must hold exactly one PEM private key, found {', '.join(labels)}")
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:  # pragma: no cover
        return None
    try:
        return serialization.load_pem_private_key(text.strip().encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a valid private key ({exc})") from None


def _public_der(public_key):
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_tls_trust(merged, errors):
    """tls_ca (CA for tls mode ca), trusted_cas and smtp_tls."""
    tls_ca = merged["tls_ca"]
    path = ["chatmail", "tls_ca"]
    cert = key = None
    if tls_ca["cert"].strip():
        try:
            cert = _load_cert(tls_ca["cert"])
        except ValueError as exc:
            errors.add(path + ["cert"], str(exc))
        else:
            if cert is not None:
                from cryptography import x509

                try:
                    ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
                except x509.ExtensionNotFound:
                    ca = False
                if not ca:
                    errors.add(path + ["cert"], "not a CA certificate (basicConstraints CA:TRUE)")
    if tls_ca["key"].strip():
        try:
            key = _load_key(tls_ca["key"])
        except ValueError as exc:
            errors.add(path + ["key"], str(exc))
    if cert is not None and key is not None:
        if _public_der(cert.public_key()) != _public_der(key.public_key()):
            errors.add(path + ["key"], "does not belong to the certificate chatmail:tls_ca:cert")
    if not tls_ca["cert"].strip() and tls_ca["key"].strip():
        errors.add(path + ["cert"], "missing (chatmail:tls_ca:key is set)")
    for what in ("days_valid", "days_remaining"):
        if tls_ca[what] <= 0:
            errors.add(path + [what], "must be positive")
    if tls_ca["days_remaining"] >= tls_ca["days_valid"]:
        errors.add(
            path + ["days_remaining"],
            f"must be less than days_valid ({tls_ca['days_valid']}), or every run reissues",
        )

    for i, pem in enumerate(merged["trusted_cas"]):
        try:
            _load_cert(pem)
        except ValueError as exc:
            errors.add(["chatmail", "trusted_cas", i], str(exc))

    regexps = []
    for i, pattern in enumerate(merged["smtp_tls"]["unverified_nexthops"]):
        ppath = ["chatmail", "smtp_tls", "unverified_nexthops", i]
        if not isinstance(pattern, str):
            errors.add(ppath, f"must be a string, not {_type_name(pattern)} {pattern!r}")
            continue
        regexp = nexthop_regexp(pattern)
        if regexp is None:
            errors.add(
                ppath,
                f"not a next-hop pattern {pattern!r} (expected [ip], a domain,"
                " *.suffix or prefix*)",
            )
        elif regexp not in regexps:
            regexps.append(regexp)
    merged["smtp_tls"]["unverified_regexps"] = regexps


def _check_acme(merged, errors):
    """chatmail:acme: the directory (a short name is replaced by its URL)
    and the terms-of-service URLs agreed to, all https URLs."""
    acme = merged["acme"]
    path = ["chatmail", "acme"]
    directory = ACME_DIRECTORIES.get(acme["directory"], acme["directory"])
    if not _HTTPS_URL_RE.match(directory):
        names = ", ".join(sorted(ACME_DIRECTORIES))
        errors.add(
            path + ["directory"], f"must be an https:// URL or one of {names}, not {directory!r}"
        )
    acme["directory"] = directory
    acme["directory_id"] = acme_directory_id(directory)
    for i, url in enumerate(acme["terms_agreed"]):
        if not isinstance(url, str) or not _HTTPS_URL_RE.match(url):
            errors.add(path + ["terms_agreed", i], f"must be an https:// URL, not {url!r}")


def dovecot_archive_kind(archive):
    """How the dovecot state fetches a patched build's archive: ``salt`` (a
    salt:// file server), ``path`` (an absolute path on the host), ``url``
    (http or https); None for anything else.

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_config.dovecot_archive_kind salt://chatmail-dovecot/chatmail-dovecot.tar
    """
    archive = str(archive)
    if archive.startswith("salt://") and len(archive) > len("salt://"):
        return "salt"
    if archive.startswith("/") and len(archive) > 1 and not archive.endswith("/"):
        return "path"
    if re.match(r"^https?://[^/\s]+/\S+$", archive):
        return "url"
    return None


def _check_dovecot(merged, errors):
    """chatmail:dovecot: source patched needs an archive the state can fetch
    and verify (a URL only with its sha256); the derived ``archive_kind``
    tells the state how."""
    dovecot = merged["dovecot"]
    path = ["chatmail", "dovecot"]
    source = dovecot["source"]
    if source not in DOVECOT_SOURCES:
        errors.add(
            path + ["source"],
            f"must be one of {', '.join(DOVECOT_SOURCES)}, not {source!r}",
        )
    sha = dovecot["sha256"].strip().lower()
    if sha and not _SHA256_RE.match(sha):
        errors.add(path + ["sha256"], f"not a sha256 (64 hex digits): {dovecot['sha256']!r}")
    dovecot["sha256"] = sha
    kind = dovecot_archive_kind(dovecot["archive"])
    dovecot["archive_kind"] = kind or ""
    if source != "patched":
        return
    if kind is None:
        errors.add(
            path + ["archive"],
            "must be salt://<path>, an absolute file path on the host or an http(s):// URL,"
            f" not {dovecot['archive']!r}",
        )
    elif kind == "url" and not sha:
        errors.add(
            path + ["sha256"],
            f"required for an archive fetched from a URL ({dovecot['archive']}): the"
            " sha256 that ./cmsalt build-dovecot printed",
        )


def acme_directory_id(url):
    """The name acmetool gives an ACME directory under its ``accounts/``
    (the URL without ``https://``, query-escaped with lower-case escapes),
    so certificates can be told apart by the directory that issued them.

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_config.acme_directory_id https://acme-v02.api.letsencrypt.org/directory
    """
    rest = str(url).split("://", 1)[-1]
    if rest.endswith("/") and rest.count("/") == 1:
        rest = rest[:-1]
    escaped = urllib.parse.quote_plus(rest, safe="-_.~")
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), escaped)


def nexthop_regexp(pattern):
    """The postfix regexp table key for an unverified next-hop pattern, or None.

    ``[ip]`` matches every IP-literal next hop; ``*.test`` every domain ending
    in ``.test``; ``_*`` every domain starting with ``_``; anything else the
    domain itself.

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_config.nexthop_regexp '*.test'
    """
    if pattern == "[ip]":
        return r"/^\[[^]]+\]$/"
    pattern = str(pattern).strip().lower()
    if not _NEXTHOP_RE.match(pattern) or pattern in ("*", "."):
        return None
    if pattern.count("*") > 1:
        return None
    quoted = pattern.replace(".", "\\.")
    if quoted.startswith("*"):
        return "/" + quoted[1:] + "$/"
    if quoted.endswith("*"):
        return "/^" + quoted[:-1] + "/"
    return "/^" + quoted + "$/"


def _ini_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(value)
    return str(value)


def ini_text(chatmail):
    """Render ``/etc/chatmail/chatmail.ini`` from the merged map.

    ``[params]`` carries ``mail_domain`` (primary first) and every global
    value; each domain gets a ``[domain:<name>]`` section with its TLS mode
    and the per-domain values that differ from ``[params]``.

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_config.ini_text "$(salt-call --out=json ...)"
    """
    params = chatmail["params"]
    primary = chatmail["primary"]
    order = [primary] + [d for d in chatmail["domain_list"] if d != primary]
    lines = [
        "# Managed by Salt (chatmail-salt); edit the pillar, not this file.",
        "[params]",
        f"mail_domain = {' '.join(order)}",
    ]
    for key in sorted(params):
        value = params[key]
        if key in SECRET_PARAMS:
            continue  # in a file of its own, see turn_secret_files()
        lines.append(f"{key} = {_ini_value(value)}".rstrip())
    secrets = turn_secret_files(chatmail)
    for dom in order:
        dconf = chatmail["domains"][dom]
        # chatmaild only knows auto/acme/self/external; a private CA's
        # certificate is, for clients outside the fleet, like a self-signed
        # one (/new then offers the dclogin URL accepting it).
        mode = "self" if dconf["tls"]["mode"] == "ca" else dconf["tls"]["mode"]
        lines += ["", f"[domain:{dom}]", f"tls_mode = {mode}"]
        for key in chatmail["per_domain_params"]:
            if key in SECRET_PARAMS:
                continue
            if dconf[key] != params[key]:
                lines.append(f"{key} = {_ini_value(dconf[key])}".rstrip())
        if dom in secrets:
            lines.append(f"turn_secret_file = {secrets[dom]}")
    return "\n".join(lines) + "\n"


def turn_secret_files(chatmail):
    """{domain: file} of the domains with a TURN secret.

    The secret never goes into chatmail.ini (which several daemons and the
    /new CGI read): the tree writes it to ``<secrets_dir>/turn_secret.<domain>``
    (root, group ``lookup:users:metadata_group``, 0640, in a 0750 directory),
    a group only the chatmail-metadata unit gets, and chatmail.ini names the
    file with ``turn_secret_file``.

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_config.turn_secret_files "$MAP_JSON"
    """
    return {
        dom: chatmail["domains"][dom]["turn_secret_file"]
        for dom in chatmail["domain_list"]
        if chatmail["domains"][dom]["turn_secret_file"]
    }


def size_bytes(value):
    """Convert a size such as ``500M`` to bytes.

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_config.size_bytes 500M
    """
    return _size_bytes(value)


# chatmail/relay keys that name its own implementation; they have no
# meaning in this tree (its daemons and sockets are laid out differently).
REFERENCE_INTERNAL_KEYS = (
    "passdb_path",
    "turn_socket_path",
    "filtermail_http_port_incoming",
    "filtermail_lmtp_port_transport",
)


def _ini_to_pillar_value(kind, raw):
    """The pillar value of a chatmail.ini text; raises ValueError."""
    raw = raw.strip()
    if kind in ("int", "port"):
        return int(raw)
    if kind == "float":
        number = float(raw)
        return int(number) if number.is_integer() and "." not in raw else number
    if kind == "bool":
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if kind == "list":
        return [item for item in re.split(r"[\s,]+", raw) if item]
    if kind == "size":
        return int(raw) if raw.isdigit() else raw
    return raw


def from_ini(text, schema=None):
    """Convert a chatmail/relay ``chatmail.ini`` into this tree's pillar.

    Returns the text of a pillar file (``chatmail:`` with ``domains`` from
    ``mail_domain`` and ``params`` holding every key that differs from its
    default); keys that cannot be carried over are listed as comments at
    the top with the reason.  ``[domain:<name>]`` sections (this tree's own
    multi-domain chatmail.ini) become per-domain values.

    CLI Example:

    .. code-block:: bash

        ./cmsalt import-ini chatmail.ini > pillar/hosts/relay.sls
    """
    import yaml  # pylint: disable=import-outside-toplevel

    entries = _load_schema(schema)
    kinds = {n: e["kind"] for n, e in entries.items() if e.get("pillar", True)}
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser.read_string(text)
    if not parser.has_section("params"):
        raise ValueError("no [params] section: not a chatmail.ini")
    notes = []

    def convert(items, where, domain=None):
        out = {}
        for key, raw in items:
            value = raw.strip()
            if key == "mail_domain":
                continue
            if key in REFERENCE_INTERNAL_KEYS:
                notes.append(f"{where} {key} = {value}: chatmail/relay internal, not used here")
                continue
            if key == "tls_mode" and domain:
                if value not in ("auto", ""):
                    out["tls"] = {"mode": value}
                continue
            if key not in kinds:
                notes.append(f"{where} {key} = {value}: unknown key, left out")
                continue
            if key == "www_folder" and value and value != "disabled" and not value.startswith("/"):
                notes.append(
                    f"{where} www_folder = {value}: a folder on the deploying machine; copy it"
                    " into the salt file tree and set www_folder: salt://<that folder>"
                )
                continue
            try:
                converted = _ini_to_pillar_value(kinds[key], value)
            except ValueError as exc:
                notes.append(f"{where} {key} = {value}: {exc}, left out")
                continue
            if kinds[key] == "str" and not value:
                converted = ""
            default = entries[key]["default"]
            if converted == default or (kinds[key] == "size" and str(converted) == str(default)):
                continue
            out[key] = converted
        return out

    params = parser["params"]
    domains = [d for d in re.split(r"[\s,]+", params.get("mail_domain", "")) if d]
    if not domains or any("{" in d for d in domains):
        raise ValueError("[params] mail_domain names no domain")
    pillar_params = convert(params.items(), "[params]")
    pillar_domains = {d: {} for d in domains}
    for section in parser.sections():
        if section.startswith("domain:"):
            dom = section.split(":", 1)[1].strip()
            pillar_domains[dom] = convert(parser[section].items(), f"[{section}]", domain=dom)
    # one domain: its values read best next to it, as chatmail/relay has them
    chatmail = {}
    if pillar_params:
        chatmail["params"] = pillar_params
    chatmail["domains"] = pillar_domains
    head = [
        "# chatmail pillar converted from a chatmail.ini (./cmsalt import-ini);",
        "# keys at their default are left out (see pillar.example for all of them).",
    ]
    if "iroh_relay" not in params:
        head.append(
            "# iroh_relay: chatmail/relay runs its own iroh relay by default; this tree"
            " runs none: set iroh_relay to a relay you run or trust, or clients use"
            " their default."
        )
    head += [f"# not converted: {note}" for note in notes]
    body = yaml.safe_dump({"chatmail": chatmail}, default_flow_style=False, sort_keys=False)
    return "\n".join(head) + "\n" + body
