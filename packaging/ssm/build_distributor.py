"""Build the SSM Distributor package: one zip per package format (the .deb or .rpm with
its install, update and uninstall scripts) and the manifest naming them with checksums.

    python3 build_distributor.py VERSION DEB RPM OUTDIR

Both architectures get the same zip: the package carries wheels for x86_64 and aarch64.
The zips are written byte-for-byte reproducibly (fixed times and order), so the
manifest's checksums only change when the packages do.
"""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = ("install.sh", "update.sh", "uninstall.sh")
EPOCH = (1980, 1, 1, 0, 0, 0)
ARCHES = ("x86_64", "arm64")
# Distributor platform names; "_any" matches every version of that platform. Amazon
# Linux 2 is left out: its newest Python is 3.8.
PLATFORMS = {
    "amazon": ("2023", "rpm"),
    "redhat": ("_any", "rpm"),
    "rocky": ("_any", "rpm"),
    "ubuntu": ("_any", "deb"),
    "debian": ("_any", "deb"),
}


def add(archive: zipfile.ZipFile, name: str, data: bytes, mode: int) -> None:
    info = zipfile.ZipInfo(name, EPOCH)
    info.external_attr = mode << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


def build_zip(kind: str, package: Path, out: Path) -> None:
    with zipfile.ZipFile(out, "w") as archive:
        for script in SCRIPTS:
            add(archive, script, (HERE / "distributor" / kind / script).read_bytes(), 0o755)
        add(archive, package.name, package.read_bytes(), 0o644)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(version: str, deb: Path, rpm: Path, outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    zips = {}
    for kind, package in (("deb", deb), ("rpm", rpm)):
        zips[kind] = outdir / f"s3pull-{kind}.zip"
        build_zip(kind, package, zips[kind])
    manifest = {
        "schemaVersion": "2.0",
        "version": version,
        "publisher": "s3pull",
        "description": "s3pull agent: mirrors S3 prefixes to local directories, driven by SQS",
        "packages": {
            platform: {release: {arch: {"file": zips[kind].name} for arch in ARCHES}}
            for platform, (release, kind) in PLATFORMS.items()
        },
        "files": {path.name: {"checksums": {"sha256": sha256(path)}} for path in zips.values()},
    }
    (outdir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
