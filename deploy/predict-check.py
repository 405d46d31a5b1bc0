"""POST an image to a running agent's /v1/predict, with and without its token.

    python3 deploy/predict-check.py URL TOKEN IMAGE  (exit 0: 401 without the token, 200 and
                                                      the detect JSON with it)

Used by deploy/container-check.sh against the container (standard library only); waits
for the port to answer (the agent inside needs a few seconds to start), up to 120 s.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def post(url: str, body: bytes, token: str | None) -> tuple[int, bytes]:
    headers = {"Content-Type": "image/jpeg"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{url}/v1/predict", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_until_answering(url: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # 503 while the camera is missing: the server answers
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"predict-check: {url} did not answer in {seconds:.0f} s")
            time.sleep(0.2)


def main() -> int:
    url, token, image = sys.argv[1:4]
    wait_until_answering(url)
    body = Path(image).read_bytes()
    status, _ = post(url, body, None)
    if status != 401:
        sys.exit(f"predict-check: without the token: {status}, expected 401")
    status, answer = post(url, body, token)
    if status != 200:
        sys.exit(f"predict-check: with the token: {status} {answer[:200]!r}")
    result = json.loads(answer)
    print(f"predict: 200, {len(result.get('faces', []))} face(s): "
          f"{[f.get('label') for f in result.get('faces', [])]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
