"""Checks what the local stack needs beyond pip: gcloud with both emulators, and Java."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def problems() -> list[str]:
    found = []
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        found.append("gcloud (the Google Cloud CLI) is not on PATH")
    else:
        root = Path(subprocess.run([gcloud, "info", "--format=value(installation.sdk_root)"],
                                   capture_output=True, text=True, check=False).stdout.strip())
        for part, folder in (("Firestore emulator", "cloud-firestore-emulator"),
                             ("Pub/Sub emulator", "pubsub-emulator")):
            if root and not (root / "platform" / folder).exists():
                found.append(f"the {part} is missing ({root / 'platform' / folder})")
    if shutil.which("java") is None:
        found.append("java is not on PATH (the emulators run on Java 11+)")
    return found


def main() -> int:
    found = problems()
    if not found:
        return 0
    print("The local stack cannot start:", *(f"  - {p}" for p in found), sep="\n", file=sys.stderr)
    print("Install the Google Cloud CLI with the components 'cloud-firestore-emulator' and\n"
          "'pubsub-emulator' (apt: google-cloud-cli-firestore-emulator,\n"
          "google-cloud-cli-pubsub-emulator) and a Java runtime, then run this again.",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
