"""Validate the SSM documents against the JSON schemas kept in packaging/schema/, plus
what a schema cannot say: every {{ reference }} names a parameter, every default fits its
own pattern, the manifest's files exist with the checksums it claims, and each zip holds
the Distributor scripts. Shell steps are written out for shellcheck.

    python3 validate_ssm.py COMMAND_DOC MANIFEST SCRIPT_OUTDIR
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path

from jsonschema import Draft202012Validator

SCHEMAS = Path(__file__).parent.parent / "schema"
REFERENCE = re.compile(r"\{\{\s*([A-Za-z0-9:/_.-]+)\s*\}\}")


def validate(document: object, schema_name: str, label: str) -> list[str]:
    schema = json.loads((SCHEMAS / schema_name).read_text())
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [
        f"{label}: {'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    ]


def check_command(path: Path, script_dir: Path) -> list[str]:
    doc = json.loads(path.read_text())
    problems = validate(doc, "ssm-command-document.schema.json", path.name)
    if problems:
        return problems
    parameters = doc.get("parameters", {})
    for name, spec in parameters.items():
        default = spec.get("default")
        pattern = spec.get("allowedPattern")
        if isinstance(default, str) and pattern and not re.search(pattern, default):
            problems.append(f"{path.name}: {name}: default {default!r} fails its pattern")
        if "allowedValues" in spec and default is not None and default not in spec["allowedValues"]:
            problems.append(f"{path.name}: {name}: default {default!r} is not allowed")
    for used in REFERENCE.findall(json.dumps(doc["mainSteps"])):
        if used not in parameters and not used.startswith("ssm:"):
            problems.append(f"{path.name}: {{{{ {used} }}}} is not a parameter")
    names = [step["name"] for step in doc["mainSteps"]]
    if len(set(names)) != len(names):
        problems.append(f"{path.name}: step names repeat: {names}")
    script_dir.mkdir(parents=True, exist_ok=True)
    for step in doc["mainSteps"]:
        if step["action"] == "aws:runShellScript":
            # What the agent runs, with each {{ reference }} replaced by a plain word.
            body = "\n".join(step["inputs"]["runCommand"]) + "\n"
            body = REFERENCE.sub("PARAMETER", body)
            (script_dir / f"{path.stem}.{step['name']}.sh").write_text(body)
    return problems


def check_manifest(path: Path) -> list[str]:
    manifest = json.loads(path.read_text())
    problems = validate(manifest, "ssm-distributor-manifest.schema.json", path.name)
    if problems:
        return problems
    listed = manifest["files"]
    for platform, releases in manifest["packages"].items():
        for release, arches in releases.items():
            for arch, entry in arches.items():
                if entry["file"] not in listed:
                    where = f"{platform}/{release}/{arch}"
                    problems.append(f"{path.name}: {where}: {entry['file']} is not in files")
    for name, spec in listed.items():
        zip_path = path.parent / name
        if not zip_path.is_file():
            problems.append(f"{path.name}: {name}: no such file beside the manifest")
            continue
        if hashlib.sha256(zip_path.read_bytes()).hexdigest() != spec["checksums"]["sha256"]:
            problems.append(f"{path.name}: {name}: sha256 does not match")
        with zipfile.ZipFile(zip_path) as archive:
            members = {info.filename: info for info in archive.infolist()}
        for script in ("install.sh", "update.sh", "uninstall.sh"):
            info = members.get(script)
            if info is None or not (info.external_attr >> 16) & 0o100:
                problems.append(f"{name}: {script} missing or not executable")
        packages = [m for m in members if m.endswith((".deb", ".rpm"))]
        if len(packages) != 1:
            problems.append(f"{name}: holds {len(packages)} packages, not 1")
    return problems


def main() -> int:
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    command, manifest, script_dir = map(Path, sys.argv[1:])
    problems = check_command(command, script_dir) + check_manifest(manifest)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        files = len(json.loads(manifest.read_text())["files"])
        print(f"valid: {command} and {manifest} ({files} files)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
