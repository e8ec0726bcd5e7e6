"""Files derived from the one declaration of the chatmail.ini [params] keys
(chatmaild/src/chatmaild/params.json): the params block of pillar.example (and
its copy pillar/hosts/example.sls), the params table of docs/configuration.md
and the reference map tests/unit/mapdata/example.yaml.

    ./cmsalt docs        # rewrite them after editing params.json

tests/unit/test_paramdocs.py fails while any of them is out of date.
"""

import json
import pathlib
import sys

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
SCHEMA = REPO / "chatmaild" / "src" / "chatmaild" / "params.json"
PILLAR_FILES = [REPO / "pillar.example", REPO / "pillar" / "hosts" / "example.sls"]
DOC = REPO / "docs" / "configuration.md"
MAPDATA = REPO / "tests" / "unit" / "mapdata" / "example.yaml"

PILLAR_BEGIN = "  # --- params: generated from chatmaild/src/chatmaild/params.json (./cmsalt docs)"
PILLAR_END = "  # --- end of params"
DOC_BEGIN = "<!-- params: generated from chatmaild/src/chatmaild/params.json (./cmsalt docs) -->"
DOC_END = "<!-- end of params -->"


def schema(path=SCHEMA):
    return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))["params"]


def _yaml_value(value):
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("\n...").strip()


def pillar_block(entries):
    """The params block of pillar.example: every key the pillar may set, at its
    default, with its documentation."""
    lines = [PILLAR_BEGIN, "  params:"]
    for e in entries:
        if not e.get("pillar", True):
            continue
        doc = ("per domain; " if e.get("per_domain") else "") + e["doc"]
        lines.append(f"    # {doc}")
        lines.append(f"    {e['name']}: {_yaml_value(e['default'])}")
    lines.append(PILLAR_END)
    return "\n".join(lines)


def doc_table(entries):
    """The params table of docs/configuration.md."""

    def cell(text):
        return str(text).replace("|", "\\|")

    lines = [
        DOC_BEGIN,
        "| key | default | per domain | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for e in entries:
        default = _yaml_value(e["default"])
        meaning = e["doc"] + ("" if e.get("pillar", True) else " (not a pillar key)")
        per = "yes" if e.get("per_domain") else ""
        lines.append(f"| `{e['name']}` | `{cell(default)}` | {per} | {cell(meaning)} |")
    lines.append(DOC_END)
    return "\n".join(lines)


def replace_between(text, begin, end, block):
    """`text` with the lines from `begin` to `end` (inclusive) replaced by `block`."""
    start = text.index(begin)
    stop = text.index(end, start) + len(end)
    return text[:start] + block + text[stop:]


class _Dumper(yaml.SafeDumper):
    """Indent lists inside mappings (the repository's yamllint style)."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def mapdata_text(build, defaults, example_pillar):
    """The reference map: the merged map of pillar.example."""
    mapdata = build(defaults, {}, example_pillar)
    return "---\n# Rendered map for pillar.example (tests/unit/test_mapdata.py)\n" + yaml.dump(
        mapdata, Dumper=_Dumper, default_flow_style=False, sort_keys=True
    )


def expected_files(entries=None):
    """{path: wanted text} of every derived file."""
    import importlib.util

    entries = entries if entries is not None else schema()
    out = {}
    for path in PILLAR_FILES:
        out[path] = replace_between(
            path.read_text(), PILLAR_BEGIN, PILLAR_END, pillar_block(entries)
        )
    out[DOC] = replace_between(DOC.read_text(), DOC_BEGIN, DOC_END, doc_table(entries))
    spec = importlib.util.spec_from_file_location(
        "chatmail_config", REPO / "_modules/chatmail_config.py"
    )
    cc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cc)
    defaults = yaml.safe_load((REPO / "salt/chatmail/defaults.yaml").read_text())
    example = yaml.safe_load(out[PILLAR_FILES[0]])["chatmail"]
    out[MAPDATA] = mapdata_text(
        lambda d, o, p: cc.build(d, o, p, schema=entries), defaults, example
    )
    return out


def main():
    for path, text in expected_files().items():
        if path.read_text() != text:
            path.write_text(text)
            print(f"rewrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
