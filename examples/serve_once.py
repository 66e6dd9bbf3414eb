"""Start `texttune serve MODEL` on a free loopback port, send one request, print the answer, stop the server.

python examples/serve_once.py models:/demo@latest "A warm, funny and moving film."
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def main(model: str, text: str) -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    texttune = str(Path(sys.executable).with_name("texttune"))
    server = subprocess.Popen([texttune, "serve", model, "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                if server.poll() is not None or time.monotonic() > deadline:
                    print("the server did not start", file=sys.stderr)
                    return 1
                time.sleep(0.3)
        request = urllib.request.Request(
            f"{url}/predict", json.dumps({"texts": [text]}).encode(), {"Content-Type": "application/json"}
        )
        answer = json.load(urllib.request.urlopen(request, timeout=30))
        info = json.load(urllib.request.urlopen(f"{url}/info", timeout=30))
        print(f"POST {url}/predict ({info['engine']}): {json.dumps(answer['predictions'][0])}")
        print(f"playground page: {url}/ (while the server runs)")
        return 0
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
