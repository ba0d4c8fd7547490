"""Print the service image's pip requirements, one per line, from pyproject.toml.

The image holds the service's own dependencies and the KMS SDKs of Google Cloud and Azure (the `gcp` and
`azure` extras; boto3 is a base dependency), so the one image encrypts with whichever cloud's KMS its node
uses. lock.py resolves this list (`--no-torch`: torch has a layer of its own) into requirements.lock, which
the Dockerfile installs and images/test-image.sh fills its offline wheelhouse from.

    python3 images/service/requirements.py pyproject.toml [--no-torch]
"""

import sys
import tomllib

IMAGE_EXTRAS = ("gcp", "azure")


def main(argv: list[str]) -> int:
    if not argv or argv[1:] not in ([], ["--no-torch"]):
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], "rb") as handle:
        project = tomllib.load(handle)["project"]
    requirements = list(project["dependencies"])
    for extra in IMAGE_EXTRAS:
        requirements += project["optional-dependencies"][extra]
    if "--no-torch" in argv:
        requirements = [line for line in requirements if not line.startswith("torch")]
    print("\n".join(requirements))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
