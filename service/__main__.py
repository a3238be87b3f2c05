"""``python -m service``: the launcher.

prometheus_client decides at import time whether it runs in multiprocess mode, so the metrics
folder is put in the environment here, before anything imports it; every process LitServe
starts inherits it.
"""

import os
import sys
import tempfile

if __name__ == "__main__":
    if "prometheus_client" in sys.modules:  # pragma: no cover - a guard against future imports above
        raise SystemExit("service: prometheus_client was imported before its multiprocess folder was set")
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="inference-metrics-")

    from service.cli import main

    sys.exit(main())
