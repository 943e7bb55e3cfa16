"""A stand-in for kubeconform 0.7.0 (not on PyPI or Debian), for machines without Nix only:
test_k8s_nix_check.py puts it first on PATH as `kubeconform` and runs nix/k8s-manifests.sh,
the script of the flake check, with it. It is not kubeconform and proves nothing about
kubeconform's own validator; what it does is real, not a canned answer:

- parses the flags the check passes the way kubeconform's pkg/config does (Go's flag package,
  one dash), and refuses every other flag (so also -ignore-missing-schemas);
- finds each object's schema file with kubeconform's schemaPath (pkg/registry/registry.go):
  the template fields NormalizedKubernetesVersion ("v" + -kubernetes-version), StrictSuffix,
  ResourceKind (lower case), ResourceAPIVersion, Group, KindSuffix; an unknown field is an
  error like Go's text/template; a missing file is kubeconform's "could not find schema";
- validates the object with that file (Draft 2020-12, the schemas' $schema) with a registry
  that has nothing in it: a $ref outside the file fails, as kubeconform would in the build
  sandbox, where it cannot fetch one;
- prints kubeconform's summary line and exits 1 on any invalid object or error.

Not reproduced: -strict's duplicate-key check (sigs.k8s.io/yaml UnmarshalStrict; kustomize
never writes a duplicate key).
"""

import json
import re
import sys
from pathlib import Path

import jsonschema
import referencing
import yaml

BOOL_FLAGS = {"strict", "summary"}
VALUE_FLAGS = {"kubernetes-version", "schema-location"}


def parse(argv):
    opts = {"strict": False, "summary": False, "kubernetes-version": "master", "schema-location": []}
    files = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            files += argv[i + 1 :]
            break
        if not arg.startswith("-") or arg == "-":
            files += argv[i:]  # Go's flag stops at the first non-flag
            break
        name = arg.lstrip("-")
        value = None
        if "=" in name:
            name, value = name.split("=", 1)
        if name in BOOL_FLAGS:
            opts[name] = value in (None, "true", "1")
        elif name in VALUE_FLAGS:
            if value is None:
                i += 1
                if i == len(argv):
                    sys.exit(f"flag needs an argument: -{name}")
                value = argv[i]
            if name == "schema-location":
                opts[name].append(value)
            else:
                opts[name] = value
        else:
            print(f"flag provided but not defined: -{name}", file=sys.stderr)
            sys.exit(1)
        i += 1
    return opts, files


def schema_path(template, kind, api_version, k8s_version, strict):
    normalised = k8s_version if k8s_version == "master" else "v" + k8s_version
    group_parts = api_version.split("/")
    version_parts = group_parts[0].split(".")
    kind_suffix = "-" + version_parts[0].lower()
    if len(group_parts) > 1:
        kind_suffix += "-" + group_parts[1].lower()
    fields = {
        "NormalizedKubernetesVersion": normalised,
        "StrictSuffix": "-strict" if strict else "",
        "ResourceKind": kind.lower(),
        "ResourceAPIVersion": group_parts[-1],
        "Group": group_parts[0],
        "KindSuffix": kind_suffix,
    }

    def field(m):
        if m.group(1) not in fields:
            sys.exit(f"template: tpl: can't evaluate field {m.group(1)}")
        return fields[m.group(1)]

    return re.sub(r"\{\{\s*\.(\w+)\s*\}\}", field, template)


def main(argv):
    opts, files = parse(argv)
    locations = opts["schema-location"]
    if not locations:
        sys.exit("kubeconform stand-in: no -schema-location (the real default is a download)")
    empty = referencing.Registry()
    valid = invalid = errors = resources = 0
    for file in files:
        for doc in yaml.safe_load_all(Path(file).read_text()):
            if not doc:
                continue
            resources += 1
            kind, api_version = doc.get("kind", ""), doc.get("apiVersion", "")
            name = f"{kind} {doc.get('metadata', {}).get('name', '')}"
            paths = [
                Path(schema_path(t, kind, api_version, opts["kubernetes-version"], opts["strict"]))
                for t in locations
            ]
            found = next((p for p in paths if p.is_file()), None)
            if found is None:
                errors += 1
                print(f"{file} - {name} failed validation: could not find schema for {kind}")
                continue
            schema = json.loads(found.read_text())
            try:
                jsonschema.Draft202012Validator(schema, registry=empty).validate(doc)
                valid += 1
            except jsonschema.ValidationError as e:
                invalid += 1
                path = "/" + "/".join(str(p) for p in e.absolute_path)
                print(f"{file} - {name} is invalid: {path}: {e.message}")
            except referencing.exceptions.Unresolvable as e:
                errors += 1
                print(f"{file} - {name} failed validation: {found}: unresolvable $ref {e}")
    if opts["summary"]:
        s = lambda n: "" if n == 1 else "s"  # noqa: E731
        print(
            f"Summary: {resources} resource{s(resources)} found in {len(files)} file{s(len(files))}"
            f" - Valid: {valid}, Invalid: {invalid}, Errors: {errors}, Skipped: 0"
        )
    return 1 if invalid or errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
