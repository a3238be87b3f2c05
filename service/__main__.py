"""``python -m service``: the launcher.

prometheus_client decides at import time whether it runs in multiprocess mode, so the metrics
folder is put in the environment here, before anything imports it; every process LitServe
starts inherits it. Unless the operator names one, the folder is this run's own
(:func:`service.core.scratch.owned_folder`): it is removed when the run ends.
"""

import os
import sys

if __name__ == "__main__":
    if "prometheus_client" in sys.modules:  # pragma: no cover - a guard against future imports above
        raise SystemExit("service: prometheus_client was imported before its multiprocess folder was set")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # the operator's folder: theirs to keep
        from service.cli import main

        sys.exit(main())
    # our own folder, removed however the run ends (and at the next start if it was killed)
    from service.core.scratch import owned_folder

    with owned_folder("metrics") as folder:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
        from service.cli import main

        status = main()
    sys.exit(status)
