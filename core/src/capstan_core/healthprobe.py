"""``python -m capstan_core.healthprobe <service>``: a container healthcheck of a gRPC service.

The service's port answers only mutual TLS, so the probe presents the service's own certificate
(any platform identity may ask for health) from ``CAPSTAN_SECRETS_DIR`` and asks the standard
``grpc.health.v1`` check on the port of ``CAPSTAN_GRPC_LISTEN``. Exit 0 when SERVING.
"""

from __future__ import annotations

import asyncio
import sys

from . import credentials, grpcutil
from .settings import ServiceSettings


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m capstan_core.healthprobe <service>", file=sys.stderr)
        return 2
    service = args[0]
    settings = ServiceSettings()
    port = settings.grpc_listen.rsplit(":", 1)[1]
    tls = credentials.load(settings.secrets_path, service).tls
    ok = asyncio.run(grpcutil.check_health(f"127.0.0.1:{port}", service, tls, timeout=3.0))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
