"""The AWS side of packages-test, run with the project's .venv (moto is a dev extra,
never in the packages): a moto server on the host's loopback, which containers booted
without --private-network reach as 127.0.0.1.

    moto_fixture.py serve STATE_FILE            run until SIGTERM; STATE_FILE gets the URL
    moto_fixture.py pipeline ENDPOINT NAME      bucket -> topic -> queue; prints JSON
    moto_fixture.py put ENDPOINT BUCKET KEY TEXT
    moto_fixture.py put-parameter ENDPOINT NAME FILE
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from s3pull.emulator import client, create_pipeline, moto_server


def serve(state_file: str) -> None:
    with moto_server() as endpoint:
        Path(state_file).write_text(endpoint)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})


def main(verb: str, *args: str) -> None:
    if verb == "serve":
        # Block the signals first, so sigwait gets them rather than the default action.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        serve(*args)
    elif verb == "pipeline":
        endpoint, name = args
        pipeline = create_pipeline(endpoint, name)
        print(json.dumps({"bucket": pipeline.bucket, "queue_url": pipeline.queue_url}))
    elif verb == "put":
        endpoint, bucket, key, text = args
        client(endpoint, "s3").put_object(Bucket=bucket, Key=key, Body=text.encode())
    elif verb == "put-parameter":
        endpoint, name, path = args
        client(endpoint, "ssm").put_parameter(
            Name=name, Value=Path(path).read_text(), Type="String", Overwrite=True
        )
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(*sys.argv[1:])
