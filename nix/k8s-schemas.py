"""Standalone strict JSON schemas for kubeconform, offline, from kubernetes-validate's.

    python3 nix/k8s-schemas.py SCHEMA_DIR OUT_DIR OLDEST NEWEST

SCHEMA_DIR is kubernetes-validate's ``kubernetes_validate/kubernetes-json-schema``
(``v<version>-local-strict/<kind>-<group>-<version>.json`` plus one
``_definitions.json`` per version). OLDEST and NEWEST are Kubernetes minor
versions (``1.25``, ``1.37``): the versions the manifests claim. It converts
the strict schemas of two versions: OLDEST (which must be there) and the newest
one the package ships that is not newer than NEWEST, and prints those two
versions (``1.25.0 1.37.0``) for the caller.

Why a conversion: every kubernetes-validate schema has ``$id``
``https://kubernetes.io/api/<kind>/<group>/<version>`` and refers to
``/api/_definitions.json#/$defs/...``, i.e. to
``https://kubernetes.io/api/_definitions.json``, which kubeconform would fetch
over HTTP (the Nix build sandbox has no network). The output,
``OUT_DIR/v<version>-standalone-strict/<same file name>``, is each schema with
the definitions it reaches (transitively) copied in as its own ``$defs``, every
reference rewritten from ``/api/_definitions.json#/$defs/X`` to ``#/$defs/X``
and ``$id`` dropped: the same schema, with no reference outside its own file.
That is the layout of kubeconform's default location
(``{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/
{{ .ResourceKind }}{{ .KindSuffix }}.json``). A reference of any other form is
an error, not skipped. Standard library only.
"""

import json
import os
import re
import sys

PREFIX = "/api/_definitions.json#/$defs/"
LOCAL = "#/$defs/"
DIR = re.compile(r"^v(\d+)\.(\d+)\.(\d+)-local-strict$")


def minor(text):
    major, _, rest = text.partition(".")
    return int(major), int(rest.split(".")[0])


def rewrite(node, found, where):
    """A copy of node with external refs made local; collects the names reached."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                if value.startswith(PREFIX):
                    found.add(value[len(PREFIX) :])
                    value = LOCAL + value[len(PREFIX) :]
                elif value.startswith(LOCAL):
                    found.add(value[len(LOCAL) :])
                else:
                    sys.exit(f"k8s-schemas: {where}: a $ref this conversion does not know: {value}")
                out[key] = value
            else:
                out[key] = rewrite(value, found, where)
        return out
    if isinstance(node, list):
        return [rewrite(value, found, where) for value in node]
    return node


def convert(src, out):
    with open(os.path.join(src, "_definitions.json")) as f:
        defs = json.load(f)["$defs"]
    # Each definition, rewritten once, with the names it refers to.
    direct = {}
    for name, schema in defs.items():
        found = set()
        defs[name] = rewrite(schema, found, f"_definitions.json#{name}")
        direct[name] = found
    os.makedirs(out, exist_ok=True)
    count = 0
    for file in sorted(os.listdir(src)):
        if file == "_definitions.json" or not file.endswith(".json"):
            continue
        with open(os.path.join(src, file)) as f:
            schema = json.load(f)
        todo = set()
        schema = rewrite(schema, todo, file)
        schema.pop("$id", None)
        reached = set()
        while todo:
            name = todo.pop()
            if name in reached:
                continue
            if name not in defs:
                sys.exit(f"k8s-schemas: {file}: refers to {name}, which _definitions.json lacks")
            reached.add(name)
            todo |= direct[name]
        if reached:
            schema["$defs"] = {name: defs[name] for name in sorted(reached)}
        with open(os.path.join(out, file), "w") as f:
            json.dump(schema, f)
        count += 1
    return count


def main(argv):
    if len(argv) != 4:
        sys.exit(__doc__)
    src, out, oldest, newest = argv
    found = {}
    for entry in os.listdir(src):
        m = DIR.match(entry)
        if m:
            found[tuple(int(g) for g in m.groups())] = entry
    wanted = sorted(v for v in found if minor(oldest) <= v[:2] <= minor(newest))
    if not wanted or wanted[0][:2] != minor(oldest):
        have = " ".join(sorted(d for d in found.values()))
        sys.exit(f"k8s-schemas: no strict schemas for Kubernetes {oldest} in {src} (it has: {have})")
    chosen = [wanted[0], wanted[-1]] if len(wanted) > 1 else [wanted[0]]
    versions = []
    for v in chosen:
        version = ".".join(map(str, v))
        n = convert(os.path.join(src, found[v]), os.path.join(out, f"v{version}-standalone-strict"))
        print(f"k8s-schemas: Kubernetes {version}: {n} standalone strict schemas", file=sys.stderr)
        versions.append(version)
    print(" ".join(versions))


if __name__ == "__main__":
    main(sys.argv[1:])
